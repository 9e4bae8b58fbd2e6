"""Synthetic multitask data: coloured shapes and text lines with annotations for every task.

The embedded default dataset of the demo and the tests. Scenes are deliberately easy (a few
large, high-contrast, non-overlapping shapes on a dark background) so that a tiny model learns
them in minutes; :class:`SyntheticConfig` has the knobs to make them harder.

Every shape is drawn *from* its polygon, so the segmentation target is exactly what is on
screen. Each image depends only on ``(seed, index)``, so the output is byte-identical for a
seed whatever the number of worker processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from f2lightning.data.schema import Grounding, OcrLine, Phrase, Record, Region, VqaPair
from f2lightning.geometry import bounding_box, box_quad

PALETTE = {
    "red": (230, 40, 40),
    "green": (40, 190, 70),
    "blue": (60, 110, 245),
    "yellow": (245, 215, 40),
    "purple": (170, 80, 220),
    "orange": (250, 140, 30),
}
SHAPES = ("square", "circle", "triangle", "rectangle", "ellipse")
VOCABULARY = [
    "cat",
    "dog",
    "sun",
    "moon",
    "star",
    "tree",
    "fish",
    "bird",
    "car",
    "road",
    "book",
    "lamp",
    "door",
    "key",
    "map",
    "box",
    "cup",
    "hat",
    "sea",
    "sky",
]
BACKGROUND = (25, 25, 25)
TEXT_COLOR = (255, 255, 255)
CIRCLE_VERTICES = 24
MARGIN = 0.03  # of the image side, kept free along the border
# Below this the smallest shapes of the presets (0.12 of the side, half as tall for ellipses) round to
# boxes of no area, which the record schema rejects.
MIN_IMAGE_SIZE = 32
MIN_FONT_SIZE = 6  # smaller glyphs are no longer legible letters, so no text line could be read


@dataclass(frozen=True)
class SyntheticConfig:
    """Scene knobs. Sizes are fractions of the image side, except ``font_size`` (pixels): on images too
    small for its widest possible line the font is made smaller, down to ``MIN_FONT_SIZE``."""

    image_size: int = 256
    min_shapes: int = 1
    max_shapes: int = 3
    shapes: tuple[str, ...] = ("square", "circle", "triangle")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    min_shape_size: float = 0.25
    max_shape_size: float = 0.45
    max_text_lines: int = 1
    max_words_per_line: int = 2
    font_size: int = 22
    image_format: Literal["png", "jpeg"] = "png"

    @classmethod
    def preset(cls, difficulty: Literal["easy", "medium", "hard"]) -> SyntheticConfig:
        """``easy`` (the default scene), ``medium`` (more, smaller shapes, more text) or ``hard``."""
        easy = cls()
        presets = {
            "easy": easy,
            "medium": replace(
                easy,
                max_shapes=4,
                min_shape_size=0.18,
                max_text_lines=2,
                colors=("red", "green", "blue", "yellow", "purple"),
            ),
            "hard": replace(
                easy,
                max_shapes=6,
                min_shape_size=0.12,
                max_shape_size=0.35,
                max_text_lines=3,
                max_words_per_line=3,
                font_size=16,
                shapes=SHAPES,
                colors=tuple(PALETTE),
            ),
        }
        return presets[difficulty]

    def __post_init__(self) -> None:
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"image_size (--image-size) must be at least {MIN_IMAGE_SIZE} pixels, got {self.image_size}: "
                "smaller shapes round to boxes without area"
            )
        unknown = (set(self.shapes) - set(SHAPES)) | (set(self.colors) - set(PALETTE))
        if unknown:
            raise ValueError(f"unknown shapes / colours {sorted(unknown)}")
        if not 1 <= self.min_shapes <= self.max_shapes <= len(self.shapes) * len(self.colors):
            raise ValueError("need 1 <= min_shapes <= max_shapes <= number of (colour, shape) pairs")


@dataclass
class _Shape:
    shape: str
    color: str
    polygon: list[float]
    box: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.box = bounding_box(self.polygon)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


def shape_polygon(shape: str, box: list[float]) -> list[float]:
    """The shape inscribed in ``box``, clockwise on screen, as a flat point list."""
    x0, y0, x1, y1 = box
    if shape in ("square", "rectangle"):
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif shape == "triangle":
        points = [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    else:  # circle / ellipse: increasing angle runs right -> bottom -> left, clockwise with y down
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        angles = 2 * math.pi * np.arange(CIRCLE_VERTICES) / CIRCLE_VERTICES
        points = list(zip(cx + rx * np.cos(angles), cy + ry * np.sin(angles)))
    return [round(float(v), 2) for p in points for v in p]


def position_word(x: float, y: float, size: int) -> str:
    """Where a point is, on a 3x3 grid: "top left", "center", "bottom", ..."""
    row = ("top", "", "bottom")[min(int(3 * y / size), 2)]
    col = ("left", "", "right")[min(int(3 * x / size), 2)]
    return f"{row} {col}".strip() or "center"


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=8)
def _text_font(cfg: SyntheticConfig) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """``cfg.font_size``, or the largest smaller font in which the widest possible line fits the image.

    One font for the whole dataset (a function of the config only), so images stay alike; where the config
    fits, as at the default 256 pixels, this is ``cfg.font_size`` and the output is unchanged.
    """
    room = cfg.image_size * (1 - 2 * MARGIN)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for size in range(cfg.font_size, MIN_FONT_SIZE - 1, -1):
        font = _font(size)
        widest = sorted(VOCABULARY, key=lambda w: draw.textlength(w, font=font))[-cfg.max_words_per_line :]
        left, _, right, _ = draw.textbbox((0, 0), " ".join(widest), font=font)
        if right - left <= room:
            return font
    return _font(min(cfg.font_size, MIN_FONT_SIZE))  # lines longer than the image are then left out


def _overlaps(a: list[float], b: list[float], gap: float) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _place(
    rng: np.random.Generator, w: float, h: float, size: int, taken: list[list[float]]
) -> list[float] | None:
    """A box of ``w x h`` inside the image, clear of ``taken`` boxes; None if it cannot fit or after 50 tries."""
    margin, gap = MARGIN * size, 0.04 * size
    if max(w, h) > size - 2 * margin:
        return None
    for _ in range(50):
        x0 = rng.uniform(margin, size - margin - w)
        y0 = rng.uniform(margin, size - margin - h)
        box = [round(x0), round(y0), round(x0 + w), round(y0 + h)]
        if not any(_overlaps(box, t, gap) for t in taken):
            return [float(v) for v in box]
    return None


class _TextBuilder:
    """Builds a description while recording which character spans name which shape."""

    def __init__(self) -> None:
        self.text, self.spans = "", []

    def add(self, text: str) -> None:
        self.text += text

    def phrase(self, text: str, shape_index: int) -> None:
        self.spans.append((len(self.text), len(self.text) + len(text), shape_index))
        self.text += text

    def grounding(self, shapes: list[_Shape], granularity: str) -> Grounding:
        phrases = [
            Phrase(span=(a, b), boxes=[shapes[i].box], polygons=[shapes[i].polygon]) for a, b, i in self.spans
        ]
        return Grounding(text=self.text, phrases=phrases, granularity=granularity)


def _join(builder: _TextBuilder, shapes: list[_Shape], sentence_start: bool) -> None:
    """``"a red circle, a blue square and a green triangle"`` with each phrase grounded."""
    for i, s in enumerate(shapes):
        if i:
            builder.add(" and " if i == len(shapes) - 1 else ", ")
        builder.phrase(f"{'A' if sentence_start and not i else 'a'} {s.name}", i)


def render_scene(
    index: int, seed: int = 0, config: SyntheticConfig | None = None
) -> tuple[Image.Image, Record]:
    """Image ``index`` of the dataset for ``seed`` and its full annotation record."""
    cfg = config or SyntheticConfig()
    size = cfg.image_size
    rng = np.random.default_rng([seed, index])

    pairs = list(product(cfg.colors, cfg.shapes))
    count = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    shapes: list[_Shape] = []
    for k in rng.choice(len(pairs), size=count, replace=False):
        color, shape = pairs[k]
        side = rng.uniform(cfg.min_shape_size, cfg.max_shape_size) * size
        aspect = rng.uniform(0.5, 0.75) if shape in ("rectangle", "ellipse") else 1.0
        box = _place(rng, side, side * aspect, size, [s.box for s in shapes])
        if box is not None:  # no room left: fewer shapes rather than overlapping ones
            shapes.append(_Shape(shape, color, shape_polygon(shape, box)))

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        draw.polygon(list(zip(s.polygon[0::2], s.polygon[1::2])), fill=PALETTE[s.color])

    font = _text_font(cfg)
    lines: list[OcrLine] = []
    for _ in range(int(rng.integers(0, cfg.max_text_lines + 1))):
        words = rng.choice(VOCABULARY, size=int(rng.integers(1, cfg.max_words_per_line + 1)), replace=False)
        text = " ".join(str(w) for w in words)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        slot = _place(
            rng,
            right - left,
            bottom - top,
            size,
            [s.box for s in shapes] + [bounding_box(o.quad) for o in lines],
        )
        if slot is None:
            continue
        draw.text((slot[0] - left, slot[1] - top), text, font=font, fill=TEXT_COLOR)
        ink = draw.textbbox((slot[0] - left, slot[1] - top), text, font=font)
        lines.append(OcrLine(quad=box_quad([float(v) for v in ink]), text=text))

    shapes.sort(key=lambda s: s.center[0])  # reading order, left to right
    record = Record(
        image=f"images/{index:06d}.{'png' if cfg.image_format == 'png' else 'jpg'}",
        width=size,
        height=size,
        id=f"{index:06d}",
        source="synthetic",
        regions=[_region(s, shapes, size) for s in shapes],
        ocr=lines,
        vqa=_questions(shapes, lines, cfg),
    )
    _describe(record, shapes, lines, size)
    return image, record


def _size_word(s: _Shape, size: int) -> str:
    area = (s.box[2] - s.box[0]) * (s.box[3] - s.box[1])
    return "large" if area > (0.35 * size) ** 2 else "small"


def _region(s: _Shape, shapes: list[_Shape], size: int) -> Region:
    referring = [f"the {s.name}"]
    same_shape = [t for t in shapes if t.shape == s.shape]
    if len(same_shape) == 1:
        referring.append(f"the {s.shape}")
    elif len(same_shape) == 2:  # shapes are sorted left to right
        referring.append(f"the {s.shape} on the {'left' if s is same_shape[0] else 'right'}")
    if len(shapes) > 1 and s is shapes[0]:
        referring.append("the leftmost shape")
    if len(shapes) > 1 and s is shapes[-1]:
        referring.append("the rightmost shape")
    return Region(
        box=s.box,
        category=s.shape,
        phrase=s.name,
        brief=f"a {_size_word(s, size)} {s.name}",
        polygons=[s.polygon],
        referring=referring,
    )


def _describe(record: Record, shapes: list[_Shape], lines: list[OcrLine], size: int) -> None:
    """Captions at the three granularities, each grounded phrase by phrase."""
    brief = _TextBuilder()
    _join(brief, shapes, sentence_start=True)
    brief.add(".")

    detailed = _TextBuilder()
    detailed.add("The image shows ")
    _join(detailed, shapes, sentence_start=False)
    detailed.add(" on a dark background.")
    for i, s in enumerate(shapes):
        detailed.add(" ")
        detailed.phrase(f"The {s.name}", i)
        detailed.add(f" is at the {position_word(*s.center, size)}.")
    if lines:
        detailed.add(" The text " + " and ".join(f'"{o.text}"' for o in lines) + " is written on it.")

    more = _TextBuilder()
    more.add(
        f"This is a simple picture with {len(shapes)} shape{'s' if len(shapes) > 1 else ''} on a dark background."
    )
    for i, s in enumerate(shapes):
        more.add(" ")
        more.phrase(f"A {_size_word(s, size)} {s.name}", i)
        more.add(f" sits at the {position_word(*s.center, size)} of the image.")
    for i in range(len(shapes) - 1):
        more.add(" ")
        more.phrase(f"The {shapes[i].name}", i)
        more.add(" is to the left of ")
        more.phrase(f"the {shapes[i + 1].name}", i + 1)
        more.add(".")
    for o in lines:
        where = position_word(*((o.quad[0] + o.quad[4]) / 2, (o.quad[1] + o.quad[5]) / 2), size)
        more.add(f' A line of white text at the {where} reads "{o.text}".')

    record.texts = {"brief": [brief.text], "detailed": [detailed.text], "more_detailed": [more.text]}
    record.groundings = [
        brief.grounding(shapes, "brief"),
        detailed.grounding(shapes, "detailed"),
        more.grounding(shapes, "more_detailed"),
    ]


def _questions(shapes: list[_Shape], lines: list[OcrLine], cfg: SyntheticConfig) -> list[VqaPair]:
    size = cfg.image_size
    qa = [("how many shapes are there?", str(len(shapes)))]
    qa += [(f"how many {kind}s are there?", str(sum(s.shape == kind for s in shapes))) for kind in cfg.shapes]
    for s in shapes:
        if sum(t.shape == s.shape for t in shapes) == 1:
            qa.append((f"what color is the {s.shape}?", s.color))
        qa.append((f"where is the {s.name}?", position_word(*s.center, size)))
    if lines:
        qa.append(("what does the text say?", " ".join(o.text for o in lines)))
    return [VqaPair(question=q, answers=[a]) for q, a in qa]


def _write_one(job: tuple[int, int, SyntheticConfig, str]) -> str:
    index, seed, cfg, out_dir = job
    image, record = render_scene(index, seed, cfg)
    if cfg.image_format == "png":
        image.save(os.path.join(out_dir, record.image), format="PNG")
    else:
        image.save(os.path.join(out_dir, record.image), format="JPEG", quality=92)
    return record.to_json_line()


def make_synthetic(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    val_fraction: float = 0.1,
    workers: int = 1,
) -> dict[str, Path]:
    """Write ``out_dir/images/*``, ``out_dir/train.jsonl`` and ``out_dir/val.jsonl``.

    The last ``round(num_images * val_fraction)`` images form the validation split. Returns the
    two JSONL paths as ``{'train': ..., 'val': ...}``.
    """
    cfg = config or SyntheticConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, cfg, str(out)) for i in range(num_images)]
    if workers > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            lines = pool.map(_write_one, jobs, chunksize=max(1, num_images // (8 * workers)))
    else:
        lines = [_write_one(job) for job in jobs]
    num_val = round(num_images * val_fraction)
    paths = {"train": out / "train.jsonl", "val": out / "val.jsonl"}
    for split, chunk in (("train", lines[: num_images - num_val]), ("val", lines[num_images - num_val :])):
        paths[split].write_text("".join(line + "\n" for line in chunk), encoding="utf-8")
    return paths
