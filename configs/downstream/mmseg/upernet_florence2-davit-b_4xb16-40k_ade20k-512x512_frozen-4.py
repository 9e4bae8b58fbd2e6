# Table 8: stages 1..4 of the backbone frozen (stage 1 includes the stem); otherwise the main config.
_base_ = ["./upernet_florence2-davit-b_4xb16-40k_ade20k-512x512.py"]
model = dict(backbone=dict(frozen_stages=4))
