"""Random weights under which a tiny model's outputs depend on its inputs.

Fresh inits leave norms at 1 and biases at 0 (so checkpoint mappings that swap them go unnoticed), but filling
*every* tensor from N(0, std) scales each LayerNorm by ~0 and the model stops listening: the image then moves the
logits by ~1e-4 and beam search emits the same tokens for any image or prompt, so a generation test passes
whatever the image path does. Norm gains around 1 keep the signal: logits move by units with the image, beams
reorder, and the generated tokens differ per input.
"""

from __future__ import annotations

from pathlib import Path

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


def tiny_checkpoint(path: Path) -> Path:
    """A random tiny Florence-2 (64-pixel input) saved like a released one: transformers layout, tokenizer and
    processor files."""
    from f2lightning.model import Florence2, Florence2Config
    from f2lightning.processor import Florence2Processor
    from f2lightning.tokenizer import train_tokenizer

    texts = [
        "What does the image describe? a dog and a man in a red car.",
        "Locate the phrases in the caption:",
    ]
    tokenizer = train_tokenizer(texts * 10, vocab_size=320)
    config = Florence2Config.preset(
        "tiny",
        image_size=64,
        text={"vocab_size": -(-len(tokenizer) // 64) * 64},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = randomize_(Florence2(config), std=0.1)  # outputs that depend on the image and the prompt
    saved = model.save_pretrained(path)
    Florence2Processor.for_model(config, tokenizer).save_pretrained(saved)
    return saved
