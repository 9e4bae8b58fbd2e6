"""Splits whose answers are private (VQAv2 test-dev / test-std, TextVQA and VizWiz test): read the questions in
their public format, and write the answers file the benchmark's evaluation server (EvalAI) scores.

A benchmark config selects one with its data `format` (``vqav2-questions``, ``textvqa-questions``,
``vizwiz-questions``); `f2lightning evaluate -o DIR` then writes ``DIR/answers/<benchmark>_<column>.json``
instead of a score. The server expects an answer to every question, so a question whose image cannot be read is
an error here, not a counted skip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from f2lightning.data.converters.base import image_path, read_image_size
from f2lightning.data.converters.vqa import VQAV2_IMAGE_PATTERN, textvqa_image_file
from f2lightning.evaluation.generation import EvalSample


@dataclass(frozen=True)
class AnswerFormat:
    load: Callable[..., list[EvalSample]]  # the questions file (+ image folder) → samples without targets
    entry: Callable[[EvalSample, str], dict[str, Any]]  # one item of the server's JSON list


def _samples(source: str | os.PathLike, questions: list[tuple[str, str, tuple[int, int] | None, str]]) -> list[EvalSample]:
    """`(image path, question, size or None, key)` → samples; sizes not in the file come from the image header."""
    samples, unreadable = [], []
    for path, question, size, key in questions:
        size = size or read_image_size(path)
        if size is None:
            unreadable.append(path)
            continue
        samples.append(EvalSample(path, size, question.strip(), None, key))
    if unreadable:
        raise ValueError(
            f"{source}: {len(unreadable)} of {len(questions)} questions show images that cannot be read (first: "
            f"{unreadable[0]}); the server wants an answer to every question, so check `image_dir`"
        )
    if not samples:
        raise ValueError(f"{source}: no questions")
    return samples


def vqav2_questions(
    questions: str | os.PathLike, image_dir: str | os.PathLike, *, image_pattern: str = VQAV2_IMAGE_PATTERN
) -> list[EvalSample]:
    """VQAv2 ``v2_OpenEnded_mscoco_test-dev2015_questions.json``; keys are question ids. test-dev's images live
    in test2015, so its configs set ``image_pattern: COCO_test2015_{image_id:012d}.jpg``."""
    with open(questions, encoding="utf-8") as f:
        data = json.load(f)
    subtype = data.get("data_subtype", "")
    return _samples(questions, [
        (image_path(image_dir, image_pattern.format(image_id=q["image_id"], data_subtype=subtype)), q["question"],
         None, str(q["question_id"]))
        for q in data["questions"]
    ])  # fmt: skip


def textvqa_questions(questions: str | os.PathLike, image_dir: str | os.PathLike) -> list[EvalSample]:
    """TextVQA ``TextVQA_0.5.1_test.json`` (``{"data": [{question, question_id, image_id, image_width, ...}]}``);
    keys are question ids."""
    with open(questions, encoding="utf-8") as f:
        entries = json.load(f)["data"]
    return _samples(questions, [
        (image_path(image_dir, textvqa_image_file(e)), e["question"],
         (int(e["image_width"]), int(e["image_height"])) if "image_width" in e else None, str(e["question_id"]))
        for e in entries
    ])  # fmt: skip


def vizwiz_questions(questions: str | os.PathLike, image_dir: str | os.PathLike) -> list[EvalSample]:
    """VizWiz-VQA ``test.json`` (a list of ``{image, question}``); keys are image file names, one question each."""
    with open(questions, encoding="utf-8") as f:
        entries = json.load(f)
    return _samples(questions, [(image_path(image_dir, e["image"]), e["question"], None, e["image"]) for e in entries])


def _by_question_id(sample: EvalSample, answer: str) -> dict[str, Any]:
    return {"question_id": int(sample.key), "answer": answer}


def _by_image(sample: EvalSample, answer: str) -> dict[str, Any]:
    return {"image": sample.key, "answer": answer}


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "vqav2-questions": AnswerFormat(vqav2_questions, _by_question_id),
    "textvqa-questions": AnswerFormat(textvqa_questions, _by_question_id),
    "vizwiz-questions": AnswerFormat(vizwiz_questions, _by_image),
}


def write_answers(path: Path, fmt: str, samples: Sequence[EvalSample], answers: Sequence[str]) -> Path:
    """The server's JSON list, one item per question in the questions file's order."""
    entry = ANSWER_FORMATS[fmt].entry
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [entry(sample, answer) for sample, answer in zip(samples, answers, strict=True)]
    path.write_text(json.dumps(items, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
