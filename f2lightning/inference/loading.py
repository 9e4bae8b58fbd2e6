"""A checkpoint ready to generate: weights, processor, device and precision."""

from __future__ import annotations

from pathlib import Path

import torch

from f2lightning.model import Florence2
from f2lightning.model.checkpoints import read_tokenizer
from f2lightning.processor import Florence2Processor
from f2lightning.tokenizer import load_tokenizer


def load_model(
    checkpoint: str | Path,
    tokenizer: str | Path | None = None,
    device: str = "cpu",
    image_size: int | None = None,
) -> tuple[Florence2, Florence2Processor]:
    """Any checkpoint `Florence2.from_pretrained` reads, with its processor (its own tokenizer, or `tokenizer`),
    ready to generate.

    `image_size` overrides the checkpoint's input resolution (a transformers config.json does not record it, so
    such checkpoints load at Florence-2's 768).
    """
    model = Florence2.from_pretrained(checkpoint, **({"image_size": image_size} if image_size else {}))
    tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else read_tokenizer(Path(checkpoint))
    if tokenizer is None:
        raise ValueError(f"{checkpoint}: no tokenizer files beside the weights; pass --tokenizer DIR")
    return model.to(device).eval(), Florence2Processor.for_model(model.config, tokenizer)


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def use_bf16(device: str, precision: str = "auto") -> bool:
    """bf16 autocast on CUDA GPUs that support it (`precision='auto'`), or as asked."""
    if precision == "auto":
        return device.startswith("cuda") and torch.cuda.is_bf16_supported()
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision == "bf16"
