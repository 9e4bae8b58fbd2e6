"""What every generation path shares (`generation`'s batches, `engine`'s running batch): the settings, the
output of one request, and how generated ids become text."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from f2lightning.processor import Florence2Processor


@dataclass(frozen=True)
class Generation:
    """The generated text and, when asked for, the log-probability of each generated token."""

    text: str
    token_ids: list[int]
    token_logprobs: list[float] | None = None


@dataclass(frozen=True)
class GenerationSettings:
    batch_size: int = 16
    num_beams: int = 3
    max_new_tokens: int | None = None  # cap on the task's own budget (None: the task's)
    num_workers: int = 2
    device: str = "cpu"
    bf16: bool = False  # autocast to bfloat16 (CUDA)
    compile_image_encoder: bool = (
        False  # torch.compile DaViT + projector; the first batch of each shape compiles
    )
    progress: bool = True
    # "continuous": a running batch that requests join and leave (`f2lightning.inference.engine`); "batched":
    # `Florence2.generate` per batch, until its longest answer ends. Both answer each request as it alone would.
    engine: str = "continuous"


ENGINES = ("continuous", "batched")


def decode_generated(processor: Florence2Processor, ids: torch.Tensor) -> str:
    # Special tokens stay: the task parsers strip BOS / EOS / padding and need `<loc_*>` / `<poly>` intact.
    return processor.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
