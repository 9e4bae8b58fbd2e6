"""Hugging Face datasets stored with their images inside: Parquet (the Hub's `data/*.parquet` and
`refs/convert/parquet`) or Arrow (the `datasets` cache and `save_to_disk` folders, whose `*.arrow` files are
IPC streams; the IPC file format reads too).

The image column holds what `datasets.Image()` stores, a struct `{"bytes": binary, "path": string}`, or plain
binary. A struct whose `bytes` are null (the `datasets` cache of a local image folder) names its file in
`path`, absolute or relative to the data file. The bytes are written unchanged into an image folder, one file
per distinct image named by its content's SHA-1, so rows that repeat an image (DocVQA has a row per question)
share the file and become one record holding all their annotations.

Which columns hold annotations is the caller's to say (the schema of a Hub dataset is its own):

- `question_column` + `answers_column`: VQA pairs (DocVQA-style: answers a list of strings, or one string);
- `caption_column`: brief texts (a string or a list of strings);
- `objects_column`: regions, listing every object (`exhaustive`), as a list of `{bbox, category}` structs or
  as `datasets`' `Sequence` of them, a struct of lists `{bbox: [...], category: [...]}`; boxes in
  `bbox_format` (`xyxy` pixels, or `xywh`: COCO's top-left corner and size). An integer category is a
  `ClassLabel`: its name comes from the features `datasets` writes into the file's schema metadata, or is the
  number itself when the file has none.

A named column the file lacks, or an image column of another type, is a `ConversionError` listing the file's
columns; a file that is not Parquet / Arrow is one too. What one row holds that cannot be used is dropped and
counted with an example naming the file and row: an image that is missing or does not decode
(`missing_image`, `undecodable_image`, `image_too_large`), a bad question, caption, box or category, objects of
an image whose objects an earlier row already gave (`repeated_image_objects`), and a row left without any
annotation (`row_without_annotations`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from f2lightning.data.converters.base import (
    BadAnnotation,
    ConversionError,
    Converter,
    checked_records,
    image_path,
    is_finite_numbers,
    register_converter,
)
from f2lightning.data.converters.vqa import answer_texts
from f2lightning.data.schema import Record, Region, VqaPair
from f2lightning.data.skips import SkipReport
from f2lightning.geometry import clip_points
from f2lightning.images import BadImageError, load_image_bytes
from f2lightning.tasks.text import label_problem

BboxFormat = Literal["xyxy", "xywh"]
SUFFIXES = (".parquet", ".arrow")
# Decoded rows held at once: a row can carry a multi-megabyte scan.
BATCH_ROWS = 64
# File extensions by Pillow format, where the format's own name is not the usual one.
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "TIFF": ".tif"}


@dataclass
class _Image:
    """What is known of one distinct image: its record, and whether a row gave its objects already."""

    record: Record
    objects_given: bool = False


@dataclass(frozen=True)
class _Columns:
    """The column of each annotation kind (None: not read)."""

    image: str
    question: str | None
    answers: str
    caption: str | None
    objects: str | None

    def wanted(self) -> list[str]:
        """The columns to read, each once; the answers column only with a question column."""
        answers = self.answers if self.question else None
        return list(
            dict.fromkeys(c for c in (self.image, self.question, answers, self.caption, self.objects) if c)
        )


@checked_records
def convert_hf_parquet(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    image_dir: str | os.PathLike | None = None,
    *,
    # Only a str: where `f2lightning convert` writes (its -o), not a file to read (`path_parameters`).
    output: str | None = None,
    image_column: str = "image",
    question_column: str | None = None,
    answers_column: str = "answers",
    caption_column: str | None = None,
    objects_column: str | None = None,
    bbox_format: BboxFormat = "xyxy",
    keep_negatives: bool = False,
    report: SkipReport,
) -> list[Record]:
    """One record per distinct image of `files` (Parquet / Arrow files, or folders searched for them).

    Images are written into `image_dir`, by default `images/` beside `output` (the record JSONL the command
    writes). `keep_negatives`: a row whose objects column holds an empty list is an image checked to hold no
    object (a `no_objects` record); by default such a row gives no object annotation.
    """
    if image_dir is None:
        if output is None:
            raise ValueError(
                "give image_dir (where the images are written) or output (the images go beside it)"
            )
        image_dir = Path(output).parent / "images"
    columns = _Columns(image_column, question_column, answers_column, caption_column, objects_column)
    images: dict[str, _Image] = {}
    for path in _data_files(files):
        _read_file(path, columns, bbox_format, keep_negatives, Path(image_dir), images, report)
    return [image.record for image in images.values()]


def _data_files(files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    paths = [Path(files)] if isinstance(files, str | os.PathLike) else [Path(f) for f in files]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not inside:
                raise ConversionError(path, f"holds no {' or '.join(SUFFIXES)} file")
            found += inside
        else:
            found.append(path)
    return found


def _read_file(
    path: Path,
    columns: _Columns,
    bbox_format: BboxFormat,
    keep_negatives: bool,
    image_dir: Path,
    images: dict[str, _Image],
    report: SkipReport,
) -> None:
    schema, batches = _open(path, columns)
    names = _class_names(schema, columns.objects) if columns.objects else None  # of ClassLabel categories
    for index, row in _rows(path, batches):
        where = f"{path}: row {index}"
        data = _image_bytes(row[columns.image], path, where, report)
        if data is None:
            continue
        digest = hashlib.sha1(data).hexdigest()[:20]
        known = images.get(digest)
        if known is None:
            try:
                decoded = load_image_bytes(data, where)
            except BadImageError as error:
                report.drop(error.reason, example=str(error))
                continue
            record = Record(
                image="", width=decoded.width, height=decoded.height, id=digest, source="hf-parquet"
            )
        else:
            record = known.record
        vqa = _vqa(row, columns, where, report)
        captions = _captions(row[columns.caption], where, report) if columns.caption else []
        objects = None
        if columns.objects and row[columns.objects] is not None:
            if known is not None and known.objects_given:
                report.drop("repeated_image_objects", example=where)
            else:
                objects = _regions(row[columns.objects], names, bbox_format, record, where, report)
        negative = objects is not None and not objects and keep_negatives and _is_empty(row[columns.objects])
        if not (vqa or captions or objects or negative):
            report.drop("row_without_annotations", example=where)
            continue
        if known is None:
            record.image = _write_image(data, digest, image_dir)
            known = images[digest] = _Image(record)
        record.vqa += vqa
        if captions:
            record.texts.setdefault("brief", []).extend(captions)
        if objects or negative:
            record.regions, record.no_objects, known.objects_given = objects or [], negative, True


def _open(path: Path, columns: _Columns) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The file's schema, checked against the columns asked for, and its batches of just those columns."""
    kind = "Arrow" if path.suffix == ".arrow" else "Parquet"
    try:
        if kind == "Parquet":
            parquet = pq.ParquetFile(path)
            schema = parquet.schema_arrow
            _check_columns(path, schema, columns)
            return schema, parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns.wanted())
        source = pa.memory_map(str(path))
        is_file_format = source.read(6) == b"ARROW1"  # the IPC file format's magic; streams have none
        source.seek(0)
        reader = pa.ipc.open_file(source) if is_file_format else pa.ipc.open_stream(source)
        schema = reader.schema
        _check_columns(path, schema, columns)
        if is_file_format:
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        return schema, (batch.select(columns.wanted()) for batch in batches)
    except (pa.ArrowException, OSError) as error:
        raise ConversionError(path, f"cannot be read as {kind} ({error})") from None


def _check_columns(path: Path, schema: pa.Schema, columns: _Columns) -> None:
    names = schema.names
    listed = ", ".join(names)
    if not (columns.question or columns.caption or columns.objects):
        raise ConversionError(
            path,
            "name the columns that hold annotations (--question-column, --caption-column, --objects-column); "
            f"its columns: {listed}",
        )
    options = {
        "--image-column": columns.image,
        "--question-column": columns.question,
        "--answers-column": columns.answers if columns.question else None,
        "--caption-column": columns.caption,
        "--objects-column": columns.objects,
    }
    missing = [f"{name!r} ({option})" for option, name in options.items() if name and name not in names]
    if missing:
        raise ConversionError(path, f"has no column {', '.join(missing)}; its columns: {listed}")
    kind = schema.field(columns.image).type
    is_struct = pa.types.is_struct(kind) and kind.get_field_index("bytes") != -1
    if not (is_struct or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise ConversionError(
            path,
            f"column {columns.image!r} holds {kind}, not images (a struct of bytes and path, as "
            "datasets.Image() stores them, or binary)",
        )


def _rows(path: Path, batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 0, row) over the whole file; a file that breaks off is an error naming it."""
    index = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as error:
            raise ConversionError(path, f"row {index} onwards cannot be read ({error})") from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _class_names(schema: pa.Schema, column: str) -> list[str] | None:
    """The `ClassLabel` names of `column`'s `category`, from the features `datasets` stores in the schema."""
    try:
        features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    except (TypeError, KeyError, ValueError):
        return None
    objects = _unwrap(features.get(column)) if isinstance(features, dict) else None
    category = _unwrap(objects.get("category")) if isinstance(objects, dict) else None
    if isinstance(category, dict) and category.get("_type") == "ClassLabel":
        names = category.get("names")
        return [str(n) for n in names] if isinstance(names, list) else None
    return None


def _unwrap(node: Any) -> Any:
    """A features node without its list wrappers (`Sequence`, `List`, `[feature]`)."""
    while True:
        if isinstance(node, list) and len(node) == 1:
            node = node[0]
        elif isinstance(node, dict) and node.get("_type") in ("Sequence", "List", "LargeList"):
            node = node.get("feature")
        else:
            return node


def _image_bytes(value: Any, path: Path, where: str, report: SkipReport) -> bytes | None:
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        name = value.get("path")
        if isinstance(name, str) and name:
            file = path.parent / name  # an absolute `name` stays itself
            if file.is_file():
                return file.read_bytes()
            report.drop("missing_image", example=f"{where}: {file} not found")
            return None
        value = None
    if value is None:
        report.drop("missing_image", example=f"{where}: no image bytes")
        return None
    return value


def _write_image(data: bytes, digest: str, image_dir: Path) -> str:
    with Image.open(io.BytesIO(data)) as image:
        kind = image.format or ""
    name = digest + _EXTENSIONS.get(kind, "." + kind.lower())
    target = image_dir / name
    if not target.exists():  # named by content: an existing file already holds these bytes
        image_dir.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return image_path(image_dir, name)


def _vqa(row: dict[str, Any], columns: _Columns, where: str, report: SkipReport) -> list[VqaPair]:
    if not columns.question:
        return []
    question, answers = row[columns.question], row[columns.answers]
    if not isinstance(question, str) or not question.strip():
        report.drop("bad_question", example=where)
        return []
    try:
        texts = answer_texts([answers] if isinstance(answers, str) else answers)
    except BadAnnotation as bad:
        report.drop(bad.reason, example=where)
        return []
    return [VqaPair(question=question.strip(), answers=texts)]


def _captions(value: Any, where: str, report: SkipReport) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        report.drop("bad_caption", example=where)
        return []
    texts = [v.strip() for v in values if v.strip()]
    report.drop("empty_caption", len(values) - len(texts), example=where)
    return texts


def _is_empty(objects: Any) -> bool:
    """An objects value listing no object: `[]`, or a struct of empty `bbox` and `category` lists."""
    if isinstance(objects, dict):
        return objects.get("bbox") == [] and objects.get("category") == []
    return objects == []


def _regions(
    objects: Any,
    names: list[str] | None,
    bbox_format: BboxFormat,
    record: Record,
    where: str,
    report: SkipReport,
) -> list[Region]:
    if isinstance(objects, dict):  # datasets' Sequence of structs: a struct of lists
        boxes, categories = objects.get("bbox"), objects.get("category")
        if not isinstance(boxes, list) or not isinstance(categories, list) or len(boxes) != len(categories):
            report.drop("bad_objects", example=f"{where}: needs bbox and category lists of one length")
            return []
        pairs = list(zip(boxes, categories))
    elif isinstance(objects, list) and all(isinstance(o, dict) for o in objects):
        pairs = [(o.get("bbox"), o.get("category")) for o in objects]
    else:
        report.drop("bad_objects", example=f"{where}: not a list of {{bbox, category}}")
        return []
    regions = []
    for i, (bbox, category) in enumerate(pairs):
        label = f"{where}, object {i}"
        try:
            regions.append(_region(bbox, category, names, bbox_format, record, label, report))
        except BadAnnotation as bad:
            report.drop(bad.reason, example=label)
    return regions


def _region(
    bbox: Any,
    category: Any,
    names: list[str] | None,
    bbox_format: BboxFormat,
    record: Record,
    where: str,
    report: SkipReport,
) -> Region:
    if not is_finite_numbers(bbox, 4):
        raise BadAnnotation("bad_bbox")
    x0, y0, a, b = (float(v) for v in bbox)
    box = [x0, y0, x0 + a, y0 + b] if bbox_format == "xywh" else [x0, y0, a, b]
    clipped = clip_points(box, record.width, record.height)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise BadAnnotation("box_without_area")
    if clipped != box:  # kept, clamped onto the border: counted so that it is seen
        report.drop("location_clamped", example=where)
    return Region(box=clipped, category=_category(category, names))


def _category(value: Any, names: list[str] | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if names is None:
            return str(value)
        if not 0 <= value < len(names):
            raise BadAnnotation("unknown_category")
        value = names[value]
    if not isinstance(value, str) or label_problem(value):
        raise BadAnnotation("bad_category")
    return value.strip()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help=".parquet / .arrow files, or folders holding them")
    parser.add_argument(
        "--image-dir", dest="image_dir", default=None, help="where the images are written (default: images/ "
        "beside the output)"
    )  # fmt: skip
    parser.add_argument("--image-column", dest="image_column", default="image")
    parser.add_argument("--question-column", dest="question_column", default=None, help="VQA questions")
    parser.add_argument("--answers-column", dest="answers_column", default="answers", help="their answers")
    parser.add_argument("--caption-column", dest="caption_column", default=None, help="brief captions")
    parser.add_argument(
        "--objects-column", dest="objects_column", default=None, help="{bbox, category} objects"
    )
    parser.add_argument("--bbox-format", dest="bbox_format", choices=["xyxy", "xywh"], default="xyxy")
    parser.add_argument(
        "--keep-negatives",
        dest="keep_negatives",
        action="store_true",
        help="an empty objects list means checked, no object: keep such images as negatives",
    )


register_converter(
    Converter(
        "hf-parquet",
        "Hugging Face datasets as Parquet / Arrow with embedded images",
        convert_hf_parquet,
        _arguments,
    )
)
