# UperNet with a Florence-2 DaViT-B backbone on ADE20K: paper §6.4.2, Tables 8 and 9 (54.9 mIoU).
# 512x512 crops, 40k iterations, total batch 64 (4 GPUs x 16 images), AdamW; Swin's training and evaluation
# protocol otherwise. The paper searched the LR over {8e-4, 4e-4, 2e-4, 1e-4} without stating the winner:
# 1e-4 with layer-wise LR decay 0.9 (as MMSeg's ConvNeXt / BEiT UperNet recipes) is our default.
# Make the backbone file with:
#   f2lightning export-backbone <florence2 checkpoint or dir> -o checkpoints/florence2-davit-b.pth
_base_ = [
    "mmseg::_base_/models/upernet_swin.py",
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_40k.py",
]
custom_imports = dict(imports=["downstream"], allow_failed_imports=False)

crop_size = (512, 512)
pretrained = "checkpoints/florence2-davit-b.pth"
model = dict(
    data_preprocessor=dict(size=crop_size),
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
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150),
)

train_dataloader = dict(batch_size=16)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    constructor="DaViTLayerDecayOptimizerConstructor",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type="layer_wise"),
)

max_iters = 40000
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
auto_scale_lr = dict(enable=False, base_batch_size=64)
