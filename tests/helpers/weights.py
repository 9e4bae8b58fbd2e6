"""Random weights under which a tiny model's outputs depend on its inputs.

Fresh inits leave norms at 1 and biases at 0 (so checkpoint mappings that swap them go unnoticed), but filling
*every* tensor from N(0, std) scales each LayerNorm by ~0 and the model stops listening: the image then moves the
logits by ~1e-4 and beam search emits the same tokens for any image or prompt, so a generation test passes
whatever the image path does. Norm gains around 1 keep the signal: logits move by units with the image, beams
reorder, and the generated tokens differ per input.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, std: float = 0.2, seed: int = 0) -> nn.Module:
    """Every tensor distinct and random: norm gains from N(1, std), everything else from N(0, std)."""
    generator = torch.Generator().manual_seed(seed)
    norms = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.LayerNorm | nn.GroupNorm) and m.weight is not None
    }
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator) * std
        param.copy_(noise + 1.0 if id(param) in norms else noise)
    return model
