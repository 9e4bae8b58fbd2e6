"""VizWiz-VQA (``Annotations/train.json`` / ``val.json``): questions blind people asked about their photos."""

from __future__ import annotations

import argparse
import os

from f2lightning.data.converters.base import (
    BadAnnotation,
    Converter,
    JsonFile,
    SkipReport,
    checked_records,
    image_path,
    read_image_size,
    register_converter,
)
from f2lightning.data.converters.vqa import answer_texts, question_text
from f2lightning.data.schema import Record, VqaPair


@checked_records
def convert_vizwiz(
    annotations: str | os.PathLike, image_dir: str | os.PathLike, *, report: SkipReport
) -> list[Record]:
    """``[{image, question, answers: [{answer, answer_confidence}], ...}, ...]``; one record per image with
    all its question / answers pairs. The file has no image sizes, so they are read from the image headers and
    unreadable images are dropped (``missing_image``, per question). An entry that is not an object or has no
    ``image`` name is a :class:`ConversionError` naming the file; a question whose text or answers cannot be
    used is dropped and counted (the test split has no answers)."""
    data = JsonFile(annotations, top_level="list")  # a list of question entries
    records: dict[str, Record] = {}
    for i, entry in enumerate(data.data):
        name = data.string(entry, "image", f"[{i}]")
        raw = entry.get("answers", [])
        if isinstance(raw, list) and all(isinstance(a, dict) for a in raw):  # [{"answer": ...}] as in VQAv2
            raw = [a.get("answer") for a in raw]
        try:
            pair = VqaPair(question=question_text(entry), answers=answer_texts(raw))
        except BadAnnotation as bad:
            report.drop(bad.reason, example=f"[{i}] ({name})")
            continue
        if name not in records:
            path = image_path(image_dir, name)
            size = read_image_size(path)
            if size is None:
                report.drop("missing_image", example=path)
                continue
            records[name] = Record(image=path, width=size[0], height=size[1], id=name, source="vizwiz")
        records[name].vqa.append(pair)
    return list(records.values())


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations", help="Annotations/val.json (or train.json)")
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="the split's images, e.g. val/")


register_converter(Converter("vizwiz", "VizWiz-VQA json", convert_vizwiz, _arguments))
