"""YOLO (Ultralytics) detection / segmentation folders: `data.yaml` names the classes and each split's image
folder; every image `.../images/<name>.jpg` has its labels in `.../labels/<name>.txt`, one object per line as
`class cx cy w h` (detection) or `class x1 y1 x2 y2 ...` (a segmentation polygon), normalised to [0, 1]."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import yaml

from f2lightning.data.converters.base import (
    ConversionError,
    Converter,
    checked_records,
    read_image_size,
    read_text,
    register_converter,
    require_folder,
)
from f2lightning.data.schema import Record, Region
from f2lightning.data.skips import SkipReport
from f2lightning.geometry import bounding_box, clip_points

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@checked_records
def convert_yolo(
    data_yaml: str | os.PathLike, *, splits: list[str] | None = None, report: SkipReport
) -> list[Record]:
    """One record per image of the splits `data.yaml` names (all of train / val / test it has, or `splits`).

    Boxes and polygons are turned into pixels of the image (read from its header) and clipped to it (each clipped
    object counted as `location_clamped`); a polygon also gives its bounding box. An image without a label file, or with an empty one, has no objects and is
    dropped as `image_without_objects`. A label line that is not a known class with 4 or an even number of at
    least 6 finite coordinates is dropped as `bad_label_line`. A `data.yaml` without `names`, or whose split
    folder is missing, is a `ConversionError` naming it.
    """
    config = _read_yaml(data_yaml)
    names = config.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ConversionError(data_yaml, "has no `names` (a list or a mapping of class ids to names)")
    root = Path(data_yaml).parent / str(config.get("path") or ".")
    records = []
    for split in splits or [s for s in SPLITS if config.get(s)]:
        if not config.get(split):
            raise ConversionError(data_yaml, f"names no {split!r} image folder")
        folder = root / str(config[split])
        require_folder(folder, f"the {split} images named in {data_yaml}")
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            record = _record(image, names, split, report)
            if record is not None:
                records.append(record)
    return records


def _read_yaml(path: str | os.PathLike) -> dict:
    try:
        config = yaml.safe_load(read_text(path))
    except yaml.YAMLError as error:
        raise ConversionError(path, f"cannot be read as YAML ({error})") from None
    if not isinstance(config, dict):
        raise ConversionError(path, "must be a YAML mapping")
    return config


def _record(image: Path, names: dict, split: str, report: SkipReport) -> Record | None:
    size = read_image_size(str(image))
    if size is None:
        report.drop("unreadable_image", example=str(image))
        return None
    parts = list(image.parts)
    at = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    labels = Path(*parts[:at], "labels", *parts[at + 1 :]).with_suffix(".txt") if at is not None else None
    regions = []
    if labels is not None and labels.is_file():
        for number, line in enumerate(read_text(labels).splitlines(), start=1):
            if line.strip():
                region = _region(line, names, size, report, f"{labels}:{number}")
                if region is None:
                    report.drop("bad_label_line", example=f"{labels}:{number}")
                else:
                    regions.append(region)
    if not regions:
        report.drop("image_without_objects", example=str(image))
        return None
    return Record(image=str(image), width=size[0], height=size[1], id=image.stem, source=f"yolo-{split}",
                  regions=regions)  # fmt: skip


def _region(line: str, names: dict, size: tuple[int, int], report: SkipReport, where: str) -> Region | None:
    fields = line.split()
    try:
        label, values = int(fields[0]), [float(v) for v in fields[1:]]
    except (ValueError, IndexError):
        return None
    if label not in names or not all(math.isfinite(v) for v in values):
        return None
    width, height = size
    if len(values) == 4:
        cx, cy, w, h = values
        points = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    elif len(values) >= 6 and len(values) % 2 == 0:
        points = [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]
    else:
        return None
    clipped = clip_points(points, width, height)
    if clipped != points:
        report.drop(
            "location_clamped", example=where
        )  # kept, clamped onto the border: counted so that it is seen
    if len(values) == 4:
        return Region(box=clipped, category=str(names[label]))
    return Region(box=bounding_box(clipped), category=str(names[label]), polygons=[clipped])


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_yaml", help="the dataset's data.yaml")
    parser.add_argument(
        "--splits", nargs="+", default=None, help="e.g. train val (default: every split it names)"
    )


register_converter(
    Converter("yolo", "YOLO (Ultralytics) data.yaml + label txt files", convert_yolo, _arguments, splits=True)
)
