"""Turn one annotation record into (task, prompt, target) training samples.

Two steps so the data rules can be tested without the task language: :func:`task_annotations`
decides *which* tasks a record supports and with what annotation (pure data, Table 13's mapping
of annotation types to tasks), and :func:`expand` renders them through the task registry's
``build_prompt`` / ``serialize``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from f2lightning.data.geometry import bounding_box
from f2lightning.data.schema import Record

CAPTION_TASKS = {
    "brief": "<CAPTION>",
    "detailed": "<DETAILED_CAPTION>",
    "more_detailed": "<MORE_DETAILED_CAPTION>",
}

ALL_TASKS = (
    "<CAPTION>",
    "<DETAILED_CAPTION>",
    "<MORE_DETAILED_CAPTION>",
    "<OD>",
    "<OPEN_VOCABULARY_DETECTION>",
    "<REGION_TO_CATEGORY>",
    "<DENSE_REGION_CAPTION>",
    "<REGION_TO_DESCRIPTION>",
    "<REGION_PROPOSAL>",
    "<REFERRING_EXPRESSION_COMPREHENSION>",
    "<REFERRING_EXPRESSION_SEGMENTATION>",
    "<REGION_TO_SEGMENTATION>",
    "<CAPTION_TO_PHRASE_GROUNDING>",
    "<OCR>",
    "<OCR_WITH_REGION>",
    "<REGION_TO_OCR>",
    "<VQA>",
)

# Lines of an <OCR> target are joined with a newline so reading order and line breaks survive.
OCR_LINE_SEPARATOR = "\n"


@dataclass(frozen=True)
class Sample:
    """One training example. ``image_path`` is the record's (resolved) image; ``image_size`` is
    ``(width, height)`` of that image, the frame of every location token in prompt and target."""

    image_path: str
    task: str
    prompt: str
    target: str
    image_size: tuple[int, int]


@dataclass(frozen=True)
class TaskAnnotation:
    """What :func:`expand` feeds the task registry: prompt inputs and the target annotation dict,
    shaped like the task's parse result (``{'text'}``, ``{'bboxes', 'labels'}``,
    ``{'quad_boxes', 'labels'}``, ``{'polygons'}``, ...; see ``f2lightning.tasks.formats``)."""

    task: str
    annotation: dict[str, Any]
    text_input: str | None = None
    region: list[float] | None = None


def task_annotations(record: Record, tasks: Iterable[str] | None = None) -> list[TaskAnnotation]:
    """Every (task, inputs, annotation) the record supports, in a fixed order, restricted to
    ``tasks`` (task tokens) when given."""
    wanted = set(ALL_TASKS) if tasks is None else set(tasks)
    unknown = wanted - set(ALL_TASKS)
    if unknown:
        raise ValueError(f"unknown task token(s) {sorted(unknown)}; known: {', '.join(ALL_TASKS)}")
    out = [*_captions(record), *_regions(record), *_groundings(record), *_ocr(record), *_vqa(record)]
    return [a for a in out if a.task in wanted]


def expand(record: Record, tasks: Iterable[str] | None = None) -> list[Sample]:
    """The record's training samples for every task it supports (or only ``tasks``)."""
    from f2lightning.tasks import get_task  # the task language lives beside, not under, data

    size = record.image_size
    samples = []
    for a in task_annotations(record, tasks):
        task = get_task(a.task)
        prompt = task.build_prompt(text_input=a.text_input, region=a.region, image_size=size)
        samples.append(Sample(record.image, a.task, prompt, task.serialize(a.annotation, size), size))
    return samples


def _boxes(boxes: list[list[float]], labels: list[str]) -> dict[str, Any]:
    return {"bboxes": [list(b) for b in boxes], "labels": list(labels)}


def _captions(record: Record) -> list[TaskAnnotation]:
    return [
        TaskAnnotation(token, {"text": text})
        for granularity, token in CAPTION_TASKS.items()
        for text in record.texts.get(granularity, [])
    ]


def _regions(record: Record) -> list[TaskAnnotation]:
    out = []
    categorized = [r for r in record.regions if r.category]
    described = [r for r in record.regions if r.description]
    # Listing tasks need every object annotated, or a missing box would be taught as background.
    if record.exhaustive and categorized:
        labels = [r.category for r in categorized]
        out.append(TaskAnnotation("<OD>", _boxes([r.box for r in categorized], labels)))
        for category in dict.fromkeys(labels):
            boxes = [r.box for r in categorized if r.category == category]
            # keys of transformers' open-vocabulary detection result (which may hold polygons instead)
            annotation = {"bboxes": boxes, "bboxes_labels": [category] * len(boxes)}
            out.append(TaskAnnotation("<OPEN_VOCABULARY_DETECTION>", annotation, category))
    if record.exhaustive and described:
        labels = [r.description for r in described]
        out.append(TaskAnnotation("<DENSE_REGION_CAPTION>", _boxes([r.box for r in described], labels)))
    if record.exhaustive and record.regions:
        out.append(TaskAnnotation("<REGION_PROPOSAL>", {"bboxes": [list(r.box) for r in record.regions]}))
    for r in record.regions:
        # Released checkpoints answer region-to-text with the text followed by the region's
        # locations; the 'region' key makes the target say the same.
        if r.category:
            annotation = {"text": r.category, "region": r.box}
            out.append(TaskAnnotation("<REGION_TO_CATEGORY>", annotation, region=r.box))
        if r.description:
            annotation = {"text": r.description, "region": r.box}
            out.append(TaskAnnotation("<REGION_TO_DESCRIPTION>", annotation, region=r.box))
        polygons = {"polygons": [[list(p) for p in r.polygons]]}  # the object is named by the prompt
        for expression in r.referring:
            # as phrase grounding: the expression, then its box
            target = _boxes([r.box], [expression])
            out.append(TaskAnnotation("<REFERRING_EXPRESSION_COMPREHENSION>", target, expression))
            if r.polygons:
                out.append(TaskAnnotation("<REFERRING_EXPRESSION_SEGMENTATION>", polygons, expression))
        if r.polygons:
            out.append(TaskAnnotation("<REGION_TO_SEGMENTATION>", polygons, region=r.box))
    return out


def _groundings(record: Record) -> list[TaskAnnotation]:
    out = []
    for g in record.groundings:
        if not g.phrases:
            continue
        # One label per box: a phrase naming two people yields two (phrase, box) entries.
        pairs = [(g.phrase_text(p), box) for p in g.phrases for box in p.boxes]
        out.append(
            TaskAnnotation(
                "<CAPTION_TO_PHRASE_GROUNDING>", _boxes([b for _, b in pairs], [t for t, _ in pairs]), g.text
            )
        )
    return out


def _ocr(record: Record) -> list[TaskAnnotation]:
    if not record.ocr:
        return []
    out = [
        TaskAnnotation("<OCR>", {"text": OCR_LINE_SEPARATOR.join(o.text for o in record.ocr)}),
        TaskAnnotation(
            "<OCR_WITH_REGION>",
            {"quad_boxes": [list(o.quad) for o in record.ocr], "labels": [o.text for o in record.ocr]},
        ),
    ]
    out += [
        TaskAnnotation("<REGION_TO_OCR>", {"text": o.text}, region=bounding_box(o.quad)) for o in record.ocr
    ]
    return out


def _vqa(record: Record) -> list[TaskAnnotation]:
    # The most frequent human answer is the target (VQAv2 has 10 answers per question); ties go
    # to the answer seen first, which keeps expansion deterministic.
    return [
        TaskAnnotation("<VQA>", {"text": Counter(q.answers).most_common(1)[0][0]}, q.question)
        for q in record.vqa
    ]
