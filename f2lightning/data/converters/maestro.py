"""maestro / Roboflow Florence-2 JSONL: a folder per split (`train/`, `valid/`, `test/`), each holding its images and
an `annotations.jsonl` of `{"image": file name, "prefix": task prompt, "suffix": answer}` lines."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from f2lightning.data.converters.base import (
    ConversionError,
    Converter,
    checked_records,
    image_path,
    read_image_size,
    read_text,
    register_converter,
    require_folder,
)
from f2lightning.data.schema import Record, Region
from f2lightning.data.skips import SkipReport
from f2lightning.geometry import clip_points
from f2lightning.tasks import get_task

SPLITS = ("train", "valid", "test")
# Prefix task token -> the record's text granularity.
CAPTIONS = {
    "<CAPTION>": "brief",
    "<DETAILED_CAPTION>": "detailed",
    "<MORE_DETAILED_CAPTION>": "more_detailed",
}


@checked_records
def convert_maestro(
    dataset_dir: str | os.PathLike, *, splits: list[str] | None = None, report: SkipReport
) -> list[Record]:
    """One record per image and split, holding every line of that image.

    `<OD>` answers become regions and caption answers texts of their granularity. Their `<loc_k>` tokens are
    read back into pixels with the task's own parser; a corner beyond the image is clamped onto its border and
    counted as `location_clamped` (exporters write `<loc_1000>` for the right / bottom edge). A prefix of any
    other task is dropped as `unsupported_prefix_<TASK>`. A split folder without `annotations.jsonl` is skipped;
    a line that is not a JSON object with string `image`, `prefix` and `suffix` is a `ConversionError` naming
    the file and line; an image that is not there is dropped as `missing_image`.
    """
    require_folder(dataset_dir, "a maestro / Roboflow Florence-2 export (train/, valid/, test/)")
    records: list[Record] = []
    for split in splits or SPLITS:
        annotations = Path(dataset_dir) / split / "annotations.jsonl"
        if annotations.is_file():
            records += _split_records(annotations, split, report)
    if not records and not report.total:
        raise ConversionError(dataset_dir, f"no {'/'.join(splits or SPLITS)}/annotations.jsonl with any line")
    return records


def _split_records(annotations: Path, split: str, report: SkipReport) -> list[Record]:
    by_image: dict[str, Record] = {}
    for number, line in enumerate(read_text(annotations).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            raise ConversionError(annotations, f"{where} is not JSON ({error})") from None
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("image", "prefix", "suffix")
        ):
            raise ConversionError(
                annotations, f"{where} must be an object with string image, prefix and suffix"
            )
        name, prefix, suffix = entry["image"], entry["prefix"].strip(), entry["suffix"]
        task = prefix.split(">", 1)[0] + ">" if prefix.startswith("<") else prefix
        if task != "<OD>" and task not in CAPTIONS:
            report.drop(f"unsupported_prefix_{task.strip('<>') or 'none'}", example=f"{annotations}:{number}")
            continue
        if name not in by_image:
            path = image_path(annotations.parent, name)
            size = read_image_size(path)
            if size is None:
                report.drop("missing_image", example=path)
                continue
            by_image[name] = Record(
                image=path, width=size[0], height=size[1], id=name, source=f"maestro-{split}"
            )
        record = by_image[name]
        if task in CAPTIONS:
            record.texts.setdefault(CAPTIONS[task], []).append(suffix.strip())
        else:
            record.regions += _regions(suffix, record, report, f"{annotations}:{number}")
    return list(by_image.values())


def _regions(answer: str, record: Record, report: SkipReport, where: str) -> list[Region]:
    parsed = get_task("<OD>").parse(answer, record.image_size)
    regions = []
    for box, label in zip(parsed["bboxes"], parsed["labels"], strict=True):
        clipped = clip_points(box, record.width, record.height)
        if clipped != [float(v) for v in box]:
            report.drop("location_clamped", example=where)  # kept, clamped: counted so that it is seen
        regions.append(Region(box=clipped, category=label))
    return regions


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", help="the export's folder, holding train/ valid/ test/")
    parser.add_argument("--splits", nargs="+", default=None, help="e.g. train valid (default: all three)")


register_converter(
    Converter(
        "maestro",
        "maestro / Roboflow Florence-2 JSONL (image, prefix, suffix)",
        convert_maestro,
        _arguments,
        splits=True,
    )
)
