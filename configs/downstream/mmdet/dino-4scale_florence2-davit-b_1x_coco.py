# DINO-4scale with a Florence-2 DaViT-B backbone on COCO: paper §6.4.1, Tables 7 and 8 (59.2 AP).
# 12 epochs with DETR's augmentation, i.e. MMDet's own DINO-4scale 1x recipe (AdamW 1e-4, backbone LR x0.1,
# LR x0.1 after epoch 11); only the backbone changes. Total batch 16 (8 GPUs x 2 images).
# Make the backbone file with:
#   f2lightning export-backbone <florence2 checkpoint or dir> -o checkpoints/florence2-davit-b.pth
_base_ = ["mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py"]
custom_imports = dict(imports=["downstream"], allow_failed_imports=False)

pretrained = "checkpoints/florence2-davit-b.pth"
model = dict(
    backbone=dict(
        _delete_=True,
        type="Florence2DaViT",
        arch="base",
        out_indices=(1, 2, 3),  # strides 8, 16, 32; ChannelMapper adds the fourth scale
        drop_path_rate=0.2,
        frozen_stages=0,
        with_cp=False,
        init_cfg=dict(type="Pretrained", checkpoint=pretrained),
    ),
    neck=dict(in_channels=[256, 512, 1024]),
)
