"""A task's scored result as annotations of a `Record`: the inverse of the task producers (tasks/registry.py).

What the data engine keeps of a prediction: every annotation carries the specialist that wrote it (`source`) and
its confidence (`score`, per box where the result has boxes, else the sequence's). A result the record schema has
no place for (plain `<OCR>` text has no quads) gives no annotation; a box without area gives none either, and is
counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from f2lightning.data.schema import Grounding, OcrLine, Phrase, Record, Region, SourcedText
from f2lightning.data.skips import SkipReport
from f2lightning.geometry import bounding_box
from f2lightning.tasks.registry import CAPTION_TASKS

# The tasks that list every object of an image: a record holding their output is exhaustive for that task.
LISTING_TASKS = {"<OD>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>"}

_Writer = Callable[[Record, Any, float, "_Context"], None]


class _Context:
    """What a writer needs besides the result: the prompt's input, the provenance, where to count drops."""

    def __init__(
        self,
        text_input: str | None,
        region: Sequence[float] | None,
        source: str,
        report: SkipReport,
        where: str,
    ) -> None:
        self.text_input, self.region, self.source, self.report, self.where = (
            text_input,
            region,
            source,
            report,
            where,
        )

    def region_of(self, box: Sequence[float], score: float, **fields: Any) -> Region | None:
        if not (box[2] > box[0] and box[3] > box[1]):
            self.report.drop("generated_box_without_area", example=f"{self.where}: {list(box)}")
            return None
        return Region(box=list(box), source=self.source, score=score, **fields)


def _caption(granularity: str) -> _Writer:
    def write(record: Record, result: str, score: float, context: _Context) -> None:
        if not result.strip():  # the model stopped at once: nothing to keep, but say so
            context.report.drop("empty_answer", example=context.where)
            return
        record.texts.setdefault(granularity, []).append(SourcedText(result, context.source, score))

    return write


def _labelled_boxes(field: str | None) -> _Writer:
    """OD (labels are categories), dense region captions (labels are brief texts), proposals (no label)."""

    def write(record: Record, result: dict, score: float, context: _Context) -> None:
        for box, label, box_score in zip(result["bboxes"], result["labels"], result["scores"], strict=True):
            fields = {field: label} if field and label else {}
            if (region := context.region_of(box, box_score, **fields)) is not None:
                record.regions.append(region)

    return write


def _open_vocabulary(record: Record, result: dict, score: float, context: _Context) -> None:
    for box, box_score in zip(result["bboxes"], result.get("scores", []), strict=True):
        if (region := context.region_of(box, box_score, category=context.text_input)) is not None:
            record.regions.append(region)
    for polygons in result["polygons"]:
        box = bounding_box([p for polygon in polygons for p in polygon])
        if (
            region := context.region_of(box, score, category=context.text_input, polygons=polygons)
        ) is not None:
            record.regions.append(region)


def _grounding(record: Record, result: dict, score: float, context: _Context) -> None:
    """Phrases are found in the caption in order; a label the caption does not contain is counted and left out."""
    text, phrases, start = context.text_input or "", [], 0
    scores: list[float] = []
    for label, box, box_score in zip(result["labels"], result["bboxes"], result["scores"], strict=True):
        if not (box[2] > box[0] and box[3] > box[1]):
            context.report.drop("generated_box_without_area", example=f"{context.where}: {list(box)}")
            continue
        if phrases and text[phrases[-1].span[0] : phrases[-1].span[1]] == label:
            phrases[-1].boxes.append(list(box))  # consecutive boxes of one phrase
            scores.append(box_score)
            continue
        found = text.find(label, start) if label else -1
        if found < 0:
            context.report.drop(
                "phrase_not_in_caption", example=f"{context.where}: {label!r} not in {text!r}"
            )
            continue
        phrases.append(Phrase(span=(found, found + len(label)), boxes=[list(box)]))
        scores.append(box_score)
        start = found + len(label)
    if phrases:
        record.groundings.append(Grounding(text, phrases, source=context.source, score=min(scores)))


def _referring(record: Record, result: dict, score: float, context: _Context) -> None:
    for box, box_score in zip(result["bboxes"], result["scores"], strict=True):
        if (region := context.region_of(box, box_score, referring=[context.text_input])) is not None:
            record.regions.append(region)


def _segmentation(named_by: str) -> _Writer:
    """Polygons of the object a prompt names: by an expression (referring), or by a region."""

    def write(record: Record, result: dict, score: float, context: _Context) -> None:
        for polygons in result["polygons"]:
            polygons = [p for p in polygons if len(p) >= 6]
            if not polygons:
                continue
            fields: dict[str, Any] = {"polygons": polygons}
            if named_by == "referring":
                fields["referring"] = [context.text_input]
            box = context.region if named_by == "region" else bounding_box([v for p in polygons for v in p])
            if (region := context.region_of(box, score, **fields)) is not None:
                record.regions.append(region)

    return write


def _region_text(field: str) -> _Writer:
    def write(record: Record, result: str, score: float, context: _Context) -> None:
        label = result.strip()
        if label and (region := context.region_of(context.region, score, **{field: label})) is not None:
            record.regions.append(region)

    return write


def _ocr_lines(record: Record, result: dict, score: float, context: _Context) -> None:
    for quad, label, quad_score in zip(result["quad_boxes"], result["labels"], result["scores"], strict=True):
        if label.strip():
            record.ocr.append(OcrLine(list(quad), label, source=context.source, score=quad_score))


WRITERS: dict[str, _Writer] = {
    **{token: _caption(granularity) for granularity, token in CAPTION_TASKS.items()},
    "<OD>": _labelled_boxes("category"),
    "<DENSE_REGION_CAPTION>": _labelled_boxes("brief"),
    "<REGION_PROPOSAL>": _labelled_boxes(None),
    "<OPEN_VOCABULARY_DETECTION>": _open_vocabulary,
    "<CAPTION_TO_PHRASE_GROUNDING>": _grounding,
    "<REFERRING_EXPRESSION_COMPREHENSION>": _referring,
    "<REFERRING_EXPRESSION_SEGMENTATION>": _segmentation("referring"),
    "<REGION_TO_SEGMENTATION>": _segmentation("region"),
    "<REGION_TO_CATEGORY>": _region_text("category"),
    "<REGION_TO_DESCRIPTION>": _region_text("brief"),
    "<OCR_WITH_REGION>": _ocr_lines,
}


def result_record(
    image: str,
    image_size: tuple[int, int],
    task: str,
    result: Any,
    score: float,
    *,
    source: str,
    text_input: str | None = None,
    region: Sequence[float] | None = None,
    report: SkipReport | None = None,
) -> Record:
    """A record of `image` holding `task`'s scored `result` (`results.scored_result`) as generated annotations.

    Listing tasks make the record exhaustive (the model was asked for every object); others do not, so a merged
    record never teaches a listing task from a few referred regions.
    """
    width, height = image_size
    record = Record(image=image, width=width, height=height, exhaustive=task in LISTING_TASKS)
    writer = WRITERS.get(task)
    if writer is not None:
        context = _Context(text_input, region, source, report or SkipReport(), f"{image} {task}")
        writer(record, result, score, context)
    return record
