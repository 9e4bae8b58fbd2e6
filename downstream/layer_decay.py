"""Layer-wise learning-rate decay for detectors / segmentors with a `Florence2DaViT` backbone.

Used like MMDet's / MMSeg's ConvNeXt and BEiT constructors::

    optim_wrapper = dict(
        constructor='DaViTLayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'))

Layer ids come from the backbone's own block structure. `layer_wise`: the stem is layer 0, block j of stage i is
layer `sum(depths[:i]) + j + 1` (a stage's downsampling conv shares its first block's id), so `num_layers =
sum(depths)` (12 for DaViT-B). `stage_wise`: stage i (1-based, the stem in stage 1) is layer i, `num_layers = 4`.
Everything outside the backbone (neck, heads) is layer `num_layers + 1`, and a parameter of layer `l` trains
at `lr * decay_rate ** (num_layers + 1 - l)`. Biases and normalisation weights (1-D tensors) get no weight
decay; frozen parameters are left out of the optimizer.
"""

from __future__ import annotations

import re
from typing import Any

from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from downstream.backbone import Florence2DaViT


def layer_id(name: str, depths: tuple[int, ...], decay_type: str) -> int:
    """Layer id of parameter `name` (relative to the backbone; other names belong to the heads)."""
    num_layers = sum(depths) if decay_type == "layer_wise" else len(depths)
    if name.startswith("stem."):
        return 0 if decay_type == "layer_wise" else 1
    match = re.match(r"stages\.(\d+)\.(?:blocks\.(\d+)|downsample)\.", name)
    if match is None:
        return num_layers + 1
    stage, block = int(match.group(1)), int(match.group(2) or 0)
    if decay_type == "stage_wise":
        return stage + 1
    return sum(depths[:stage]) + block + 1


class DaViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """paramwise_cfg: `decay_rate` (default 1.0 = no decay), `decay_type` ('layer_wise' | 'stage_wise'),
    optional `num_layers` (checked against the backbone's structure, for configs that state it)."""

    def add_params(self, params: list[dict[str, Any]], module: nn.Module, **kwargs: Any) -> None:
        backbone = getattr(module, "backbone", None)
        if not isinstance(backbone, Florence2DaViT):
            raise TypeError(f"{type(self).__name__} needs a model whose `backbone` is a Florence2DaViT")
        decay_rate = float(self.paramwise_cfg.get("decay_rate", 1.0))
        decay_type = self.paramwise_cfg.get("decay_type", "layer_wise")
        if decay_type not in ("layer_wise", "stage_wise"):
            raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")
        num_layers = sum(backbone.depths) if decay_type == "layer_wise" else len(backbone.depths)
        stated = self.paramwise_cfg.get("num_layers")
        if stated is not None and stated != num_layers:
            raise ValueError(
                f"paramwise_cfg.num_layers={stated}, but the backbone has {num_layers} ({decay_type})"
            )

        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("backbone."):
                layer = layer_id(name.removeprefix("backbone."), backbone.depths, decay_type)
            else:
                layer = num_layers + 1
            no_decay = param.ndim == 1 or name.endswith(".bias")
            if (layer, no_decay) not in groups:
                scale = decay_rate ** (num_layers + 1 - layer)
                groups[layer, no_decay] = {
                    "params": [],
                    "lr": self.base_lr * scale,
                    "weight_decay": 0.0 if no_decay else (self.base_wd or 0.0),
                    "lr_scale": scale,
                }
            groups[layer, no_decay]["params"].append(param)
        params.extend(groups[key] for key in sorted(groups))
