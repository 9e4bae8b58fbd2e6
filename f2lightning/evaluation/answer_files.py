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
from f2lightning.evaluation.samples import EvalSample


@dataclass(frozen=True)
class AnswerFormat:
    task: str  # the task its questions are asked with; only benchmarks of that task can use the format
    load: Callable[..., list[EvalSample]]  # the questions file (+ image folder) → samples without targets
    entry: Callable[[EvalSample, str], dict[str, Any]]  # one item of the server's JSON list


Question = tuple[str, str, tuple[int, int] | None, str]  # image path, question, size if the file has it, key


def _read(source: str | os.PathLike, entries: Any, question: Callable[[dict], Question]) -> list[EvalSample]:
    """The questions file's entries → samples. A malformed entry or an unreadable image is an error naming the
    file (and the entry): the server wants an answer to every question. Sizes not in the file come from the
    image header."""
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a list of questions, got {type(entries).__name__}")
    samples, unreadable = [], []
    for i, entry in enumerate(entries):
        try:
            path, text, size, key = question(entry)
            text = text.strip()
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{source}: question {i} is malformed ({type(error).__name__}: {error})"
            ) from None
        size = size or read_image_size(path)
        if size is None:
            unreadable.append(path)
            continue
        samples.append(EvalSample(path, size, text, None, key))
    if unreadable:
        raise ValueError(
            f"{source}: {len(unreadable)} of {len(entries)} questions show images that cannot be read (first: "
            f"{unreadable[0]}); the server wants an answer to every question, so check `image_dir`"
        )
    if not samples:
        raise ValueError(f"{source}: no questions")
    return samples


def _load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None


def _field(path: str | os.PathLike, data: Any, key: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: expected a JSON object with `{key}`")
    return data[key]


def vqav2_questions(
    questions: str | os.PathLike, image_dir: str | os.PathLike, *, image_pattern: str = VQAV2_IMAGE_PATTERN
) -> list[EvalSample]:
    """VQAv2 ``v2_OpenEnded_mscoco_test-dev2015_questions.json``; keys are question ids. test-dev's images live
    in test2015, so its configs set ``image_pattern: COCO_test2015_{image_id:012d}.jpg``."""
    data = _load_json(questions)
    entries = _field(questions, data, "questions")
    subtype = data.get("data_subtype", "")

    def question(q: dict) -> Question:
        name = image_pattern.format(image_id=q["image_id"], data_subtype=subtype)
        return image_path(image_dir, name), q["question"], None, str(int(q["question_id"]))

    return _read(questions, entries, question)


def textvqa_questions(questions: str | os.PathLike, image_dir: str | os.PathLike) -> list[EvalSample]:
    """TextVQA ``TextVQA_0.5.1_test.json`` (``{"data": [{question, question_id, image_id, image_width, ...}]}``);
    keys are question ids."""

    def question(e: dict) -> Question:
        size = (int(e["image_width"]), int(e["image_height"])) if "image_width" in e else None
        return image_path(image_dir, textvqa_image_file(e)), e["question"], size, str(int(e["question_id"]))

    return _read(questions, _field(questions, _load_json(questions), "data"), question)


def vizwiz_questions(questions: str | os.PathLike, image_dir: str | os.PathLike) -> list[EvalSample]:
    """VizWiz-VQA ``test.json`` (a list of ``{image, question}``); keys are image file names, one question each."""

    def question(e: dict) -> Question:
        return image_path(image_dir, e["image"]), e["question"], None, e["image"]

    return _read(questions, _load_json(questions), question)


def _by_question_id(sample: EvalSample, answer: str) -> dict[str, Any]:
    return {"question_id": int(sample.key), "answer": answer}


def _by_image(sample: EvalSample, answer: str) -> dict[str, Any]:
    return {"image": sample.key, "answer": answer}


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "vqav2-questions": AnswerFormat("<VQA>", vqav2_questions, _by_question_id),
    "textvqa-questions": AnswerFormat("<VQA>", textvqa_questions, _by_question_id),
    "vizwiz-questions": AnswerFormat("<VQA>", vizwiz_questions, _by_image),
}


def write_answers(path: Path, fmt: str, samples: Sequence[EvalSample], answers: Sequence[str]) -> Path:
    """The server's JSON list, one item per question in the questions file's order."""
    entry = ANSWER_FORMATS[fmt].entry
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [entry(sample, answer) for sample, answer in zip(samples, answers, strict=True)]
    path.write_text(json.dumps(items, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
