"""A benchmark's sample: one question put to the model and what its metric compares the answer with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvalSample:
    """An image, the task's text input (if any) and what the metric compares against (`target`, in the shape the
    benchmark's metric expects). `key` names the sample in outputs. Generation reads it as a request
    (`f2lightning.inference.generation.Prompted`)."""

    image: str
    image_size: tuple[int, int]
    text_input: str | None
    target: Any
    key: str
    region: Sequence[float] | None = None
