# Mask R-CNN with a Florence-2 DaViT-B backbone on COCO: paper §6.4.1, Tables 7 and 8 (53.6 APb / 46.4 APm).
# Swin's setup: 1x (12 epochs), multi-scale training without crops, AdamW, no EMA / TTA. Total batch 16
# (8 GPUs x 2 images). Make the backbone file with:
#   f2lightning export-backbone <florence2 checkpoint or dir> -o checkpoints/florence2-davit-b.pth
_base_ = [
    "mmdet::_base_/models/mask-rcnn_r50_fpn.py",
    "mmdet::_base_/datasets/coco_instance.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["downstream"], allow_failed_imports=False)

pretrained = "checkpoints/florence2-davit-b.pth"
model = dict(
    backbone=dict(
        _delete_=True,
        type="Florence2DaViT",
        arch="base",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        frozen_stages=0,
        with_cp=False,
        init_cfg=dict(type="Pretrained", checkpoint=pretrained),
    ),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)

# Multi-scale training: shorter side 480..800 (step 32), longer side <= 1333; no random crop (paper §6.4.1).
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args={{_base_.backend_args}}),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomChoiceResize", scales=[(1333, short) for short in range(480, 801, 32)], keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

# The LR drops x0.1 at 67% and 89% of training (paper §6.4.1; Detectron2's 1x: 60k and 80k of 90k
# iterations). 89% of 12 epochs is not a whole epoch, so the milestones are in iterations, computed for
# COCO train2017 (117,266 images with annotations) at the total batch size; change them together.
max_epochs = 12
total_batch_size = 16
iters_per_epoch = (117266 + total_batch_size - 1) // total_batch_size
max_iters = max_epochs * iters_per_epoch
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(
        type="MultiStepLR",
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[round(max_iters * 2 / 3), round(max_iters * 8 / 9)],
        gamma=0.1,
    ),
]

# AdamW as in Swin's COCO configs; no weight decay on normalisation layers.
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(_delete_=True, type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult=0.0)}),
)
auto_scale_lr = dict(enable=False, base_batch_size=total_batch_size)
