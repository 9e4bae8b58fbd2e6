"""`Florence2DaViT`: the Florence-2 image encoder as an MMDetection / MMSegmentation backbone.

The module is f2lightning's own vision tower (timm's DaViT, built by `create_vision_tower`), so a backbone
trained here and the tower pre-trained by f2lightning are the same code. Its `stem` and `stages` are kept under
timm's names, which makes an exported backbone (plain timm keys) load with no renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from f2lightning.model.checkpoints import load_backbone_weights
from f2lightning.model.config import PRESETS, VisionConfig
from f2lightning.model.vision import create_vision_tower, stage_modules


def vision_config(arch: str | dict[str, Any]) -> VisionConfig:
    """A model preset's image encoder (`'base'`, `'large'`: Table 15 of the paper, timm's `davit_base_fl` /
    `davit_huge_fl`; `'tiny'` for tests), or a dict of `VisionConfig` fields (embed_dims, depths, num_heads, ...)."""
    if isinstance(arch, str):
        if arch not in PRESETS:
            raise KeyError(
                f"unknown Florence2DaViT arch {arch!r}; choose one of {sorted(PRESETS)} or pass a dict"
            )
        return PRESETS[arch]().vision
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(arch).items()}
    return VisionConfig(**fields)


class Florence2DaViT(BaseModule):
    """DaViT backbone returning the feature maps of `out_indices` (strides 4, 8, 16, 32).

    Args:
        arch: `'base'` (Florence-2-B), `'large'` (Florence-2-L) or a dict of embed_dims / depths / num_heads.
        out_indices: stages (0-based) whose outputs are returned.
        drop_path_rate: stochastic depth, increasing linearly over the blocks.
        with_cp: activation checkpointing of the trainable stages' blocks (saves memory, costs compute).
        norm_eval: keep normalisation layers in eval mode while training.
        frozen_stages: paper numbering (Table 8): 0 trains everything, k freezes stages 1..k (stage 1 includes
            the stem). Frozen parameters get `requires_grad=False` and their modules stay in eval mode.
        init_cfg: `dict(type='Pretrained', checkpoint=PATH)` where PATH is an exported backbone, an f2lightning
            (Lightning) checkpoint, or a released Florence-2 checkpoint (file or directory, transformers or
            remote-code layout); the format is detected and converted. `prefix='backbone.'` selects a
            sub-module of a full detector checkpoint.
    """

    def __init__(
        self,
        arch: str | dict[str, Any] = "base",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        drop_path_rate: float = 0.1,
        with_cp: bool = False,
        norm_eval: bool = False,
        frozen_stages: int = 0,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        config = vision_config(arch)
        tower = create_vision_tower(config, drop_path_rate=drop_path_rate)
        num_stages = len(tower.stages)
        if not 0 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in 0..{num_stages}, got {frozen_stages}")
        if not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(f"out_indices must lie in 0..{num_stages - 1}, got {tuple(out_indices)}")
        # Only the stem and stages are needed; the (empty) classifier head stays behind with `tower`.
        self.stem = tower.stem
        self.stages = tower.stages
        self.embed_dims = tuple(config.embed_dims)
        self.depths = tuple(config.depths)
        self.out_indices = tuple(out_indices)
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        for stage in self.stages[frozen_stages:]:
            # Frozen stages get no gradient, so there is nothing for checkpointing to save there.
            stage.set_grad_checkpointing(with_cp)
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for stage in range(1, self.frozen_stages + 1) for m in stage_modules(self, stage)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> Florence2DaViT:
        super().train(mode)
        if mode:
            # Frozen stages must not drift: no stochastic depth / dropout there.
            for module in self.frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, _BatchNorm)):
                        module.eval()
        return self

    def init_weights(self) -> None:
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            # mmengine's PretrainedInit only knows plain key layouts; ours also converts Florence-2 checkpoints
            # and fails loudly on a mismatch instead of loading with strict=False.
            load_backbone_weights(self, cfg["checkpoint"], prefix=cfg.get("prefix"))
            self._is_init = True
        else:
            # timm already initialised the weights in __init__; other init_cfg types still apply.
            super().init_weights()
