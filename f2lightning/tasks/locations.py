"""Quantized locations: Florence-2 writes every coordinate as one of 1000 `<loc_k>` tokens (paper §3.1).

Sizes are `(width, height)` pixels and coordinate lists alternate x, y (`[x0, y0, x1, y1, ...]`), so even
positions are measured against the width and odd ones against the height.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

NUM_BINS = 1000
LOCATION_TOKENS: tuple[str, ...] = tuple(f"<loc_{k}>" for k in range(NUM_BINS))
LOCATION_PATTERN = re.compile(r"<loc_(\d+)>")
# Polygons: an object's parts joined by `<sep>`, each object wrapped in `<poly>…</poly>` (tasks/formats.py).
STRUCTURE_TOKENS: tuple[str, ...] = ("<poly>", "<sep>")
# Every token the tokenizer gets whole (tokenizer.prepare_tokenizer), for text that must leave them out.
ADDED_TOKEN_PATTERN = re.compile("|".join([r"<loc_\d+>", *map(re.escape, STRUCTURE_TOKENS)]))

# Model output can hold absurd numbers (`<loc_99999…>`); beyond this a bin only needs to stay a finite float
# (Python refuses to turn ints of thousands of digits into floats, or even to read them).
_MAX_PARSED_BIN = 10**18


def quantize(value: float, size: float) -> int:
    """The bin of `value` on an axis of `size` pixels: floor(value / size * 1000), clamped to 0..999.

    Clamping keeps `value == size` (the right / bottom image border) in the last bin: there is no `<loc_1000>`.
    """
    return min(max(math.floor(value / size * NUM_BINS), 0), NUM_BINS - 1)


def dequantize(k: int, size: float) -> float:
    """The centre of bin `k` in pixels, (k + 0.5) / 1000 * size.

    Written as `(k + 0.5) * (size / 1000)`, the operation order of transformers' Florence-2 post-processor, so
    decoded coordinates agree with it bit for bit rather than to the last ulp.
    """
    return (k + 0.5) * (size / NUM_BINS)


def quantize_coords(coords: Sequence[float], image_size: Sequence[float]) -> list[int]:
    """Bins of an alternating x, y coordinate list."""
    return [quantize(v, image_size[i % 2]) for i, v in enumerate(coords)]


def dequantize_bins(bins: Sequence[int], image_size: Sequence[float]) -> list[float]:
    """Pixel coordinates (bin centres) of an alternating x, y bin list."""
    return [dequantize(k, image_size[i % 2]) for i, k in enumerate(bins)]


def format_locations(coords: Sequence[float], image_size: Sequence[float]) -> str:
    """`[x, y, x, y, ...]` in pixels as `<loc_a><loc_b>...`."""
    return "".join(LOCATION_TOKENS[k] for k in quantize_coords(coords, image_size))


def parse_bin(digits: str) -> int:
    """The bin number written in a `<loc_digits>` token, capped so that any model output decodes to a float."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 18 else _MAX_PARSED_BIN


def parse_locations(text: str, image_size: Sequence[float]) -> list[float]:
    """Pixel coordinates of every `<loc_k>` token in `text`, in order (alternating x, y); other text is ignored."""
    return dequantize_bins([parse_bin(m) for m in LOCATION_PATTERN.findall(text)], image_size)
