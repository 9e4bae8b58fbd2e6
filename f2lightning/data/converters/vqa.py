"""VQAv2-style (questions + annotations JSON, also OK-VQA) and TextVQA-style (one JSON) VQA,
and TextCaps captions (same single-JSON layout as TextVQA)."""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from typing import Any

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
from f2lightning.data.schema import Record, VqaPair

VQAV2_IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"


def question_text(entry: dict) -> str:
    """The stripped ``question`` of an entry; raises :class:`BadAnnotation` (``bad_question``:
    not a string, ``empty_question``: blank)."""
    question = entry.get("question")
    if not isinstance(question, str):
        raise BadAnnotation("bad_question")
    if not question.strip():
        raise BadAnnotation("empty_question")
    return question.strip()


def answer_texts(answers: Any) -> list[str]:
    """The non-blank answers of a list of strings; raises :class:`BadAnnotation`
    (``bad_answers``: not a list of strings, ``question_without_answers``: none left)."""
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise BadAnnotation("bad_answers")
    texts = [a.strip() for a in answers if a.strip()]
    if not texts:
        raise BadAnnotation("question_without_answers")
    return texts


@checked_records
def convert_vqav2(
    questions: str | os.PathLike,
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    image_pattern: str = VQAV2_IMAGE_PATTERN,
    report: SkipReport,
) -> list[Record]:
    """One record per image with all its question / answers pairs.

    Image files are named by ``image_pattern`` (formatted with ``image_id`` and the questions
    file's ``data_subtype``, e.g. ``train2014``); the JSON has no image sizes, so they are read
    from the image headers and unreadable images are dropped and counted.

    Either file without its list (``questions`` / ``annotations``), an entry without an integer
    or string ``question_id`` / ``image_id``, or a question id used twice is a
    :class:`ConversionError` naming the file; a question whose text or answers cannot be used is
    dropped and counted.
    """
    qfile, afile = JsonFile(questions), JsonFile(annotations)
    answers = afile.index(afile.entries(afile.data, "annotations"), "question_id", "annotations")
    entries = qfile.entries(qfile.data, "questions")
    qfile.index(entries, "question_id", "questions")
    by_image = defaultdict(list)
    for i, q in enumerate(entries):
        image_id = qfile.identifier(q, "image_id", f"questions[{i}]")
        ann = answers.get(q["question_id"])
        raw = ann.get("answers") if ann else []
        if isinstance(raw, list) and all(isinstance(a, dict) for a in raw):  # VQAv2: [{"answer": ...}]
            raw = [a.get("answer") for a in raw]
        try:
            by_image[image_id].append(VqaPair(question=question_text(q), answers=answer_texts(raw)))
        except BadAnnotation as bad:
            report.drop(bad.reason, example=f"question {q['question_id']!r}")
    subtype = qfile.data.get("data_subtype", "")
    records = []
    for image_id, pairs in by_image.items():
        try:
            name = image_pattern.format(image_id=image_id, data_subtype=subtype)
        except (ValueError, KeyError, IndexError) as error:  # e.g. {image_id:012d} given a string id
            raise qfile.error(
                f"image_id {image_id!r} does not fit the image pattern {image_pattern!r} ({error})"
            ) from None
        path = image_path(image_dir, name)
        size = read_image_size(path)
        if size is None:
            report.drop("missing_image", len(pairs), example=path)
            continue
        records.append(
            Record(image=path, width=size[0], height=size[1], id=str(image_id), source="vqav2", vqa=pairs)
        )
    return records


def textvqa_image_file(entry: dict) -> str:
    # TextCaps entries carry their relative path; TextVQA names images by id.
    return entry.get("image_path") or f"{entry['image_id']}.jpg"


@checked_records
def convert_textvqa(
    annotations: str | os.PathLike, image_dir: str | os.PathLike, *, report: SkipReport
) -> list[Record]:
    """TextVQA ``TextVQA_0.5.1_train.json``: ``{"data": [{question, image_id, answers,
    image_width, image_height}, ...]}``; one record per image. An entry without its image
    fields is a :class:`ConversionError` naming the file; a question whose text or answers
    cannot be used is dropped and counted (the test split has no answers)."""
    data = JsonFile(annotations)
    images: dict[int | str, Record] = {}
    for i, e in enumerate(data.entries(data.data, "data")):
        record = _text_image_record(images, data, e, f"data[{i}]", image_dir, "textvqa")
        try:
            record.vqa.append(VqaPair(question=question_text(e), answers=answer_texts(e.get("answers", []))))
        except BadAnnotation as bad:  # the test split has no answers
            report.drop(bad.reason, example=f"question {e.get('question_id', i)!r}")
    # Images made for entries that were all dropped have no pairs; they are not records.
    return [r for r in images.values() if r.vqa]


@checked_records
def convert_textcaps(
    annotations: str | os.PathLike, image_dir: str | os.PathLike, *, report: SkipReport
) -> list[Record]:
    """TextCaps ``TextCaps_0.1_train.json``: one entry per caption (``caption_str``) with the
    image's ``image_id``, size and ``image_path``; one record per image, captions as brief texts.
    An entry without its image fields is a :class:`ConversionError` naming the file; a caption
    that is not a string is dropped as ``bad_caption``."""
    data = JsonFile(annotations)
    images: dict[int | str, Record] = {}
    for i, e in enumerate(data.entries(data.data, "data")):
        record = _text_image_record(images, data, e, f"data[{i}]", image_dir, "textcaps")
        caption = e.get("caption_str")
        if caption is not None and not isinstance(caption, str):
            report.drop("bad_caption", example=f"data[{i}]")
        elif not (caption or "").strip():  # the test split has no captions
            report.drop("entry_without_caption")
        else:
            record.texts.setdefault("brief", []).append(caption.strip())
    return [r for r in images.values() if r.texts]


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


def _text_image_record(
    images: dict[int | str, Record],
    data: JsonFile,
    entry: dict,
    where: str,
    image_dir: str | os.PathLike,
    source: str,
) -> Record:
    """The record of an entry's image, made on first sight (TextVQA and TextCaps share the image
    layout); the image fields are checked on every entry, as they are the file's structure."""
    image_id = data.identifier(entry, "image_id", where)
    width, height = data.size(entry, "image_width", where), data.size(entry, "image_height", where)
    name = data.string(entry, "image_path", where, default=textvqa_image_file(entry))
    if image_id not in images:
        images[image_id] = Record(
            image=image_path(image_dir, name),
            width=width,
            height=height,
            id=str(image_id),
            source=source,
        )
    return images[image_id]
