# UperNet with the Florence-2-L image encoder (DaViT, widths 256..2048); the same recipe as DaViT-B.
_base_ = ["./upernet_florence2-davit-b_4xb16-40k_ade20k-512x512.py"]

pretrained = "checkpoints/florence2-davit-l.pth"
model = dict(
    backbone=dict(arch="large", init_cfg=dict(type="Pretrained", checkpoint=pretrained)),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024),
)
