"""Florence-2's tasks (paper Tables 13 and 14): task token → prompt, target format, generation budget and the
record annotations that produce its training samples.

Prompts are the natural-language instructions of transformers' `Florence2Processor`, so released checkpoints
answer our prompts unchanged; the task tokens themselves never reach the tokenizer.

The registry is the one list of tasks: training data (`f2lightning.data.expand`), validation metrics (through
each task's output format, `f2lightning.training.quality`), evaluation and parsing all look tasks up here, so
`register_task` alone makes a new task train, validate and parse. Its order (registration order) is the fixed
task order of the training data, which keeps dataset indices identical on every rank.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from f2lightning.geometry import bounding_box, normalise_box
from f2lightning.tasks.formats import PARSERS, SERIALIZERS, ImageSize
from f2lightning.tasks.locations import format_locations

if TYPE_CHECKING:
    from f2lightning.data.schema import Record

INPUT = "{input}"
# Lines of an <OCR> target are joined with a newline so reading order and line breaks survive.
OCR_LINE_SEPARATOR = "\n"


@dataclass(frozen=True)
class TaskAnnotation:
    """One training example of a task before rendering: prompt inputs and the target annotation dict, shaped
    like the task's parse result (`{'text'}`, `{'bboxes', 'labels'}`, `{'quad_boxes', 'labels'}`, `{'polygons'}`,
    ...; see `f2lightning.tasks.formats`)."""

    task: str
    annotation: dict[str, Any]
    text_input: str | None = None
    region: list[float] | None = None


# A record's annotations for one or more tasks. One producer may feed several tasks (one pass over a record's
# regions feeds nine); each task keeps the annotations its own producer yields for it.
Producer = Callable[["Record"], Iterable[TaskAnnotation]]


@dataclass(frozen=True)
class Task:
    """One task of the task language.

    `location_heavy` marks outputs where repeated n-grams are legitimate — location tokens, verbatim OCR text —
    so generation must not use `no_repeat_ngram_size` there. `output` names the target format in
    `f2lightning.tasks.formats` (which also picks the validation metric); `name` is a snake_case alias for
    configs (defaults to the lower-cased token). `producer` turns a record into this task's annotations; a task
    without one has no training samples (it can still be prompted and parsed).
    """

    token: str
    prompt: str
    max_new_tokens: int
    location_heavy: bool
    output: str = "text"
    name: str = ""
    producer: Producer | None = None

    def __post_init__(self) -> None:
        if self.output not in PARSERS:
            raise ValueError(
                f"{self.token}: unknown output format {self.output!r}, expected one of {sorted(PARSERS)}"
            )
        if not self.name:
            object.__setattr__(self, "name", self.token.strip("<>").lower())

    @property
    def takes_input(self) -> bool:
        """Whether the prompt needs a text input or a region."""
        return INPUT in self.prompt

    def build_prompt(
        self,
        text_input: str | None = None,
        region: Sequence[float] | None = None,
        image_size: ImageSize | None = None,
    ) -> str:
        """The prompt text; `region` (`[x0, y0, x1, y1]` pixels of an `image_size` image) becomes `<loc_*>` tokens."""
        if not self.takes_input:
            if text_input or region is not None:
                raise ValueError(f"{self.token} takes no input, got {text_input!r} / {region!r}")
            return self.prompt
        if region is not None:
            if image_size is None:
                raise ValueError(f"{self.token}: a region needs image_size (width, height)")
            text_input = format_locations(normalise_box(region), image_size)
        if not text_input:
            raise ValueError(f"{self.token} needs an input: {self.prompt!r}")
        # str.replace rather than str.format: the input may hold braces.
        return self.prompt.replace(INPUT, text_input.strip())

    def serialize(self, annotation: Mapping[str, Any], image_size: ImageSize | None) -> str:
        """The target text of an annotation shaped like this task's `parse` result (`{'text': str}` for text)."""
        return SERIALIZERS[self.output](annotation, image_size)

    def parse(self, text: str, image_size: ImageSize | None) -> str | dict[str, list]:
        """What `Florence2Processor.post_process_generation` returns under this task's key, coordinates in
        pixels of `image_size`; malformed text gives whatever could be parsed, never an exception."""
        return PARSERS[self.output](text, image_size)


class UnknownTaskError(KeyError, ValueError):
    """Task tokens or names that are not registered; the message lists the known tasks.

    A `KeyError` for lookups and a `ValueError` for configuration checks, so callers of either kind catch it.
    """

    def __init__(self, unknown: Iterable[Any]) -> None:
        known = ", ".join(f"{t.token} ({t.name})" for t in TASKS.values())
        super().__init__(f"unknown task(s) {sorted(map(str, unknown))}; known tasks: {known}")

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would print the message in quotes


TASKS: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Add `task` under its token (and name); an existing token or name is only overwritten with `replace`.

    A replaced token keeps its place in the registry's order, so the training data's task order does not move.
    """
    clashes = [t.token for t in TASKS.values() if task.token == t.token or task.name == t.name]
    if clashes and not replace:
        raise ValueError(f"task {task.token} ({task.name}) clashes with registered {', '.join(clashes)}")
    for token in clashes:
        if token != task.token:
            del TASKS[token]
    TASKS[task.token] = task
    return task


def unregister_task(token_or_name: str | Task) -> Task:
    """Remove a registered task (e.g. one a test registered) and return it."""
    return TASKS.pop(get_task(token_or_name).token)


def get_task(token_or_name: str | Task) -> Task:
    """A registered task by token (`'<OD>'`) or snake_case name (`'object_detection'`)."""
    if isinstance(token_or_name, Task):
        return token_or_name
    task = TASKS.get(token_or_name) or _by_name(token_or_name)
    if task is None:
        raise UnknownTaskError([token_or_name])
    return task


def task_tokens(tasks: Iterable[str | Task]) -> list[str]:
    """The tokens of `tasks` (tokens, names or tasks) in their order; one `UnknownTaskError` names every unknown one.

    The check of every task a configuration or a caller names.
    """
    tasks = list(tasks)
    unknown = [t for t in tasks if not isinstance(t, Task) and t not in TASKS and _by_name(t) is None]
    if unknown:
        raise UnknownTaskError(unknown)
    return [get_task(t).token for t in tasks]


def parse(task: str | Task, text: str, image_size: ImageSize | None) -> str | dict[str, list]:
    """`get_task(task).parse(text, image_size)`."""
    return get_task(task).parse(text, image_size)


def _by_name(name: str) -> Task | None:
    return next((t for t in TASKS.values() if t.name == name), None)


# ------------------------------------------------------------------------------------------- producers
# Table 13's mapping of annotation types to tasks: which tasks a record supports and with what annotation.

CAPTION_TASKS = {
    "brief": "<CAPTION>",
    "detailed": "<DETAILED_CAPTION>",
    "more_detailed": "<MORE_DETAILED_CAPTION>",
}


def _boxes(boxes: list[list[float]], labels: list[str]) -> dict[str, Any]:
    return {"bboxes": [list(b) for b in boxes], "labels": list(labels)}


def _captions(record: Record) -> list[TaskAnnotation]:
    return [
        TaskAnnotation(token, {"text": text})
        for granularity, token in CAPTION_TASKS.items()
        for text in record.texts.get(granularity, [])
    ]


def _regions(record: Record) -> list[TaskAnnotation]:
    if record.no_objects:
        # A verified negative answers the listing tasks its dataset's positives train (a detection dataset's: OD
        # and proposals) with nothing; open-vocabulary detection has no category to ask about.
        return [
            TaskAnnotation("<OD>", _boxes([], [])),
            TaskAnnotation("<REGION_PROPOSAL>", {"bboxes": []}),
        ]
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


def _instructions(record: Record) -> list[TaskAnnotation]:
    return [TaskAnnotation("<INSTRUCTION>", {"text": i.target}, i.prompt) for i in record.instructions]


# ------------------------------------------------------------------------------------------- the tasks
# Output budgets: a polygon or a page of OCR runs to hundreds of tokens; captions and answers stay short.
# Registered grouped by producer, in the training data's task order of earlier releases (their dataset indices).
# fmt: off
_BUILT_IN: list[tuple[Producer, list[Task]]] = [
    (_captions, [
        Task("<CAPTION>", "What does the image describe?", 128, False),
        Task("<DETAILED_CAPTION>", "Describe in detail what is shown in the image.", 256, False),
        Task("<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image.", 512, False),
    ]),
    (_regions, [
        Task("<OD>", "Locate the objects with category name in the image.", 1024, True, "boxes", "object_detection"),
        Task("<OPEN_VOCABULARY_DETECTION>", "Locate {input} in the image.", 1024, True, "boxes_or_polygons"),
        # Region-to-text answers echo the region's four location tokens in released checkpoints.
        Task("<REGION_TO_CATEGORY>", "What is the region {input}?", 64, True),
        Task("<DENSE_REGION_CAPTION>", "Locate the objects in the image, with their descriptions.", 1024, True,
             "boxes"),
        Task("<REGION_TO_DESCRIPTION>", "What does the region {input} describe?", 256, True),
        Task("<REGION_PROPOSAL>", "Locate the region proposals in the image.", 1024, True, "region_proposals"),
        # Not in the released processor: Florence-2 answers referring expressions through phrase grounding, so
        # the same prompt lets released checkpoints answer it; the target is the expression and its box(es),
        # parsed without phrase grounding's banned phrases (an expression is never dropped for its words).
        Task("<REFERRING_EXPRESSION_COMPREHENSION>", "Locate the phrases in the caption: {input}", 256, True,
             "boxes"),
        Task("<REFERRING_EXPRESSION_SEGMENTATION>", "Locate {input} in the image with mask", 1024, True, "polygons"),
        Task("<REGION_TO_SEGMENTATION>", "What is the polygon mask of region {input}", 1024, True, "polygons"),
    ]),
    (_groundings, [
        Task("<CAPTION_TO_PHRASE_GROUNDING>", "Locate the phrases in the caption: {input}", 1024, True,
             "phrase_grounding"),
    ]),
    (_ocr, [
        Task("<OCR>", "What is the text in the image?", 1024, True),
        Task("<OCR_WITH_REGION>", "What is the text in the image, with regions?", 1024, True, "quad_boxes"),
        Task("<REGION_TO_OCR>", "What text is in the region {input}?", 256, True),
    ]),
    # VQA has no released prompt: the question is the instruction.
    (_vqa, [Task("<VQA>", INPUT, 64, False)]),
    # Not in the paper: the record's own prompt and answer (JSON, key-value pairs, chat), trained verbatim.
    # Marked location-heavy for what that flag switches off, n-gram blocking: a JSON answer repeats `", "` and
    # key patterns, and `no_repeat_ngram_size` would corrupt it.
    (_instructions, [Task("<INSTRUCTION>", INPUT, 1024, True, "free_text")]),
]
# fmt: on
for _producer, _tasks in _BUILT_IN:
    for _task in _tasks:
        register_task(dataclasses.replace(_task, producer=_producer))
