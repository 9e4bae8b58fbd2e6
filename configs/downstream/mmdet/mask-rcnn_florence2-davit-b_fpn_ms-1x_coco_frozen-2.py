# Table 8: stages 1..2 of the backbone frozen (stage 1 includes the stem); otherwise the main config.
_base_ = ["./mask-rcnn_florence2-davit-b_fpn_ms-1x_coco.py"]
model = dict(backbone=dict(frozen_stages=2))
