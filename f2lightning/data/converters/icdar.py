"""ICDAR 2015 incidental text: ``gt_img_N.txt`` lines ``x1,y1,...,x4,y4,transcription``."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from f2lightning.data.converters.base import (
    ConversionError,
    Converter,
    SkipReport,
    checked_records,
    read_image_size,
    read_text,
    register_converter,
    require_folder,
)
from f2lightning.data.schema import OcrLine, Record
from f2lightning.geometry import clip_points, clockwise_polygon

DONT_CARE = "###"
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def parse_gt_line(line: str) -> tuple[list[float], str]:
    """Quad and transcription of one ground-truth line (transcriptions may contain commas).
    Raises ValueError unless the line has 8 finite coordinates and a transcription."""
    fields = line.split(",", 8)
    if len(fields) != 9:
        raise ValueError(f"expected 8 coordinates and a transcription, got {line!r}")
    quad = [float(v) for v in fields[:8]]
    if not all(math.isfinite(v) for v in quad):
        raise ValueError(f"coordinates must be finite, got {line!r}")
    return quad, fields[8]


@checked_records
def convert_icdar2015(
    gt_dir: str | os.PathLike, image_dir: str | os.PathLike, *, report: SkipReport
) -> list[Record]:
    """One record per image with its readable text lines.

    ``###`` lines (unreadable text) are dropped and counted: as OCR targets they would teach
    the model to emit a placeholder. Quads are clipped to the image and made clockwise, keeping
    their first vertex (the text's top-left in ICDAR's convention). A ``gt_dir`` without
    ``gt_*.txt`` files, a file that is not UTF-8 text or a line that is not 8 coordinates and a
    transcription is a :class:`ConversionError` naming the file (and line); an image that is
    not there is dropped and counted as ``missing_image``.
    """
    require_folder(gt_dir, "a folder of gt_img_N.txt files")
    files = sorted(Path(gt_dir).glob("gt_*.txt"))
    if not files:
        raise ConversionError(gt_dir, "holds no gt_*.txt files")
    records = []
    for gt in files:
        stem = gt.stem[len("gt_") :]
        path = next(
            (
                os.path.join(image_dir, stem + s)
                for s in IMAGE_SUFFIXES
                if os.path.isfile(os.path.join(image_dir, stem + s))
            ),
            None,
        )
        size = read_image_size(path) if path else None
        if size is None:
            report.drop("missing_image", example=os.path.join(image_dir, stem + ".*"))
            continue
        lines = []
        # ICDAR files start with a byte-order mark; utf-8-sig strips it.
        for number, raw in enumerate(read_text(gt, encoding="utf-8-sig").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                quad, text = parse_gt_line(raw.strip())
            except ValueError as e:
                raise ConversionError(f"{gt}:{number}", str(e)) from None
            if text == DONT_CARE or not text.strip():
                report.drop("dont_care_text")
                continue
            lines.append(OcrLine(quad=clockwise_polygon(clip_points(quad, *size)), text=text))
        if not lines:
            report.drop("image_without_text")
            continue
        records.append(
            Record(image=path, width=size[0], height=size[1], id=stem, source="icdar2015", ocr=lines)
        )
    return records


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt_dir", help="folder of gt_img_N.txt files")
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="folder of img_N.jpg files")


register_converter(
    Converter(
        "icdar2015", "ICDAR 2015 quads + transcriptions (### = don't care)", convert_icdar2015, _arguments
    )
)
