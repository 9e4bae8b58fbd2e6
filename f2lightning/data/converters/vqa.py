"""VQAv2-style (questions + annotations JSON, also OK-VQA) and TextVQA-style (one JSON) VQA,
and TextCaps captions (same single-JSON layout as TextVQA)."""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

from f2lightning.data.converters.base import (
    ConversionReport,
    Converter,
    image_path,
    read_image_size,
    register_converter,
    with_report,
)
from f2lightning.data.schema import Record, VqaPair

VQAV2_IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


def convert_vqav2(
    questions: str | os.PathLike,
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    image_pattern: str = VQAV2_IMAGE_PATTERN,
    report: ConversionReport | None = None,
) -> list[Record]:
    """One record per image with all its question / answers pairs.

    Image files are named by ``image_pattern`` (formatted with ``image_id`` and the questions
    file's ``data_subtype``, e.g. ``train2014``); the JSON has no image sizes, so they are read
    from the image headers and unreadable images are dropped and counted.
    """
    report = with_report(report)
    with open(questions, encoding="utf-8") as f:
        qdata = json.load(f)
    with open(annotations, encoding="utf-8") as f:
        answers = {a["question_id"]: a for a in json.load(f)["annotations"]}
    by_image = defaultdict(list)
    for q in qdata["questions"]:
        ann = answers.get(q["question_id"])
        texts = [a["answer"].strip() for a in ann["answers"] if a["answer"].strip()] if ann else []
        if not texts:
            report.drop("question_without_answers")
            continue
        by_image[q["image_id"]].append(VqaPair(question=q["question"].strip(), answers=texts))
    subtype = qdata.get("data_subtype", "")
    records = []
    for image_id, pairs in by_image.items():
        path = image_path(image_dir, image_pattern.format(image_id=image_id, data_subtype=subtype))
        size = read_image_size(path)
        if size is None:
            report.drop("missing_image", len(pairs))
            continue
        records.append(
            Record(image=path, width=size[0], height=size[1], id=str(image_id), source="vqav2", vqa=pairs)
        )
    report.records += len(records)
    return records


def textvqa_image_file(entry: dict) -> str:
    # TextCaps entries carry their relative path; TextVQA names images by id.
    return entry.get("image_path") or f"{entry['image_id']}.jpg"


def convert_textvqa(
    annotations: str | os.PathLike, image_dir: str | os.PathLike, *, report: ConversionReport | None = None
) -> list[Record]:
    """TextVQA ``TextVQA_0.5.1_train.json``: ``{"data": [{question, image_id, answers,
    image_width, image_height}, ...]}``; one record per image."""
    report = with_report(report)
    with open(annotations, encoding="utf-8") as f:
        entries = json.load(f)["data"]
    images: dict[str, Record] = {}
    for e in entries:
        texts = [a.strip() for a in e.get("answers", []) if a.strip()]
        if not texts:
            report.drop("question_without_answers")
            continue
        record = _text_image_record(images, e, image_dir, "textvqa")
        record.vqa.append(VqaPair(question=e["question"].strip(), answers=texts))
    report.records += len(images)
    return list(images.values())


def convert_textcaps(
    annotations: str | os.PathLike, image_dir: str | os.PathLike, *, report: ConversionReport | None = None
) -> list[Record]:
    """TextCaps ``TextCaps_0.1_train.json``: one entry per caption (``caption_str``) with the
    image's ``image_id``, size and ``image_path``; one record per image, captions as brief texts."""
    report = with_report(report)
    with open(annotations, encoding="utf-8") as f:
        entries = json.load(f)["data"]
    images: dict[str, Record] = {}
    for e in entries:
        caption = (e.get("caption_str") or "").strip()
        if not caption:  # the test split has no captions
            report.drop("entry_without_caption")
            continue
        record = _text_image_record(images, e, image_dir, "textcaps")
        record.texts.setdefault("brief", []).append(caption)
    report.records += len(images)
    return list(images.values())


def _vqav2_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("questions", help="v2_OpenEnded_mscoco_train2014_questions.json")
    parser.add_argument("annotations", help="v2_mscoco_train2014_annotations.json")
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="e.g. train2014/")
    parser.add_argument(
        "--image-pattern",
        dest="image_pattern",
        default=VQAV2_IMAGE_PATTERN,
        help="image file name; fields {image_id} and {data_subtype}",
    )


def _single_json_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations", help="the dataset's json")
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="folder holding the images")


register_converter(
    Converter("vqav2", "VQAv2 / OK-VQA questions + annotations json", convert_vqav2, _vqav2_arguments)
)
register_converter(Converter("textvqa", "TextVQA json", convert_textvqa, _single_json_arguments))
register_converter(Converter("textcaps", "TextCaps json", convert_textcaps, _single_json_arguments))


def _text_image_record(images: dict[str, Record], entry: dict, image_dir: str | os.PathLike, source: str) -> Record:
    """The record of an entry's image, made on first sight (TextVQA and TextCaps share the image layout)."""
    if entry["image_id"] not in images:
        images[entry["image_id"]] = Record(
            image=image_path(image_dir, textvqa_image_file(entry)),
            width=int(entry["image_width"]),
            height=int(entry["image_height"]),
            id=str(entry["image_id"]),
            source=source,
        )
    return images[entry["image_id"]]
