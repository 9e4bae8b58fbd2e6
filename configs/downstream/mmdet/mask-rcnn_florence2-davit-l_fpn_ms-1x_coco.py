# Mask R-CNN with the Florence-2-L image encoder (DaViT, widths 256..2048); the same recipe as DaViT-B.
_base_ = ["./mask-rcnn_florence2-davit-b_fpn_ms-1x_coco.py"]

pretrained = "checkpoints/florence2-davit-l.pth"
model = dict(
    backbone=dict(arch="large", init_cfg=dict(type="Pretrained", checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
