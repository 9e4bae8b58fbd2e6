"""Backbone weights from any checkpoint f2lightning knows, with timm's DaViT key names.

The format detection and key mapping live in `f2lightning.model.checkpoints` (shared with the pre-training
code); this module adds what a detection / segmentation backbone needs: an optional key prefix (to take the
backbone out of a full MMDet / MMSeg checkpoint) and a strict load with a readable error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from f2lightning.model.checkpoints import (
    CheckpointError,
    detect_format,
    load_state_dict,
    vision_tower_state_dict,
)

StateDict = dict[str, torch.Tensor]


def read_backbone_state_dict(path: str | Path, prefix: str | None = None) -> tuple[StateDict, str]:
    """`(timm DaViT state dict, source format)` of a checkpoint file or directory."""
    state = load_state_dict(path)
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path}: no keys start with prefix {prefix!r}")
    source_format = detect_format(state)
    # A classifier head (ImageNet DaViT, or the remote-code tower's head) has no place in a backbone.
    backbone = {k: v for k, v in vision_tower_state_dict(state).items() if not k.startswith("head.")}
    return backbone, source_format


def load_backbone_weights(module: nn.Module, path: str | Path, prefix: str | None = None) -> str:
    """Load a checkpoint into `module` (timm key names), raising on any missing or unexpected key."""
    state, source_format = read_backbone_state_dict(path, prefix)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches: torch lists them, we add which file and what to check
        raise CheckpointError(
            f"{path} ({source_format} format): tensor shapes differ, is the arch right?\n{error}"
        ) from error
    if missing or unexpected:
        raise CheckpointError(
            f"{path} ({source_format} format) does not fit {type(module).__name__}; is the arch right?\n"
            f"  missing keys ({len(missing)}): {_preview(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}"
        )
    return source_format


def _preview(keys: list[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "") if keys else "none"
