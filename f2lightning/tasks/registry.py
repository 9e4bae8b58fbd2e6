"""Florence-2's tasks (paper Tables 13 and 14): task token → prompt, target format and generation budget.

Prompts are the natural-language instructions of transformers' `Florence2Processor`, so released checkpoints
answer our prompts unchanged; the task tokens themselves never reach the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from f2lightning.tasks.formats import PARSERS, SERIALIZERS, ImageSize
from f2lightning.tasks.geometry import normalise_box
from f2lightning.tasks.locations import format_locations

INPUT = "{input}"


@dataclass(frozen=True)
class Task:
    """One task of the task language.

    `location_heavy` marks outputs where repeated n-grams are legitimate — location tokens, verbatim OCR text —
    so generation must not use `no_repeat_ngram_size` there. `output` names the target format in
    `f2lightning.tasks.formats`; `name` is a snake_case alias for configs (defaults to the lower-cased token).
    """

    token: str
    prompt: str
    max_new_tokens: int
    location_heavy: bool
    output: str = "text"
    name: str = ""

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


TASKS: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Add `task` under its token (and name); an existing token or name is only overwritten with `replace`."""
    clashes = [t.token for t in TASKS.values() if task.token == t.token or task.name == t.name]
    if clashes and not replace:
        raise ValueError(f"task {task.token} ({task.name}) clashes with registered {', '.join(clashes)}")
    for token in clashes:
        del TASKS[token]
    TASKS[task.token] = task
    return task


def get_task(token_or_name: str | Task) -> Task:
    """A registered task by token (`'<OD>'`) or snake_case name (`'object_detection'`)."""
    if isinstance(token_or_name, Task):
        return token_or_name
    task = TASKS.get(token_or_name) or _by_name(token_or_name)
    if task is None:
        known = ", ".join(f"{t.token} ({t.name})" for t in TASKS.values())
        raise KeyError(f"unknown task {token_or_name!r}; known tasks: {known}")
    return task


def parse(task: str | Task, text: str, image_size: ImageSize | None) -> str | dict[str, list]:
    """`get_task(task).parse(text, image_size)`."""
    return get_task(task).parse(text, image_size)


def _by_name(name: str) -> Task | None:
    return next((t for t in TASKS.values() if t.name == name), None)


# Output budgets: a polygon or a page of OCR runs to hundreds of tokens; captions and answers stay short.
# fmt: off
for _task in [
    Task("<CAPTION>", "What does the image describe?", 128, False),
    Task("<DETAILED_CAPTION>", "Describe in detail what is shown in the image.", 256, False),
    Task("<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image.", 512, False),
    Task("<REGION_PROPOSAL>", "Locate the region proposals in the image.", 1024, True, "region_proposals"),
    Task("<OD>", "Locate the objects with category name in the image.", 1024, True, "boxes", "object_detection"),
    Task("<DENSE_REGION_CAPTION>", "Locate the objects in the image, with their descriptions.", 1024, True, "boxes"),
    Task("<CAPTION_TO_PHRASE_GROUNDING>", "Locate the phrases in the caption: {input}", 1024, True,
         "phrase_grounding"),
    # Not in the released processor: Florence-2 answers referring expressions through phrase grounding, so
    # the same prompt lets released checkpoints answer it; the target is the expression and its box(es), parsed
    # without phrase grounding's banned phrases (an expression is never dropped for its words).
    Task("<REFERRING_EXPRESSION_COMPREHENSION>", "Locate the phrases in the caption: {input}", 256, True, "boxes"),
    Task("<OPEN_VOCABULARY_DETECTION>", "Locate {input} in the image.", 1024, True, "boxes_or_polygons"),
    Task("<REFERRING_EXPRESSION_SEGMENTATION>", "Locate {input} in the image with mask", 1024, True, "polygons"),
    # Region-to-text answers echo the region's four location tokens in released checkpoints.
    Task("<REGION_TO_CATEGORY>", "What is the region {input}?", 64, True),
    Task("<REGION_TO_DESCRIPTION>", "What does the region {input} describe?", 256, True),
    Task("<REGION_TO_SEGMENTATION>", "What is the polygon mask of region {input}", 1024, True, "polygons"),
    Task("<REGION_TO_OCR>", "What text is in the region {input}?", 256, True),
    Task("<OCR>", "What is the text in the image?", 1024, True),
    Task("<OCR_WITH_REGION>", "What is the text in the image, with regions?", 1024, True, "quad_boxes"),
    # VQA has no released prompt: the question is the instruction.
    Task("<VQA>", INPUT, 64, False),
]:
    register_task(_task)
# fmt: on
