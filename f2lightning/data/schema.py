"""The per-image annotation record: one JSON object per line of a ``.jsonl`` file.

One record holds everything FLD-5B holds for an image (paper §4.3, Table 2), and every
converter writes this shape, so the training data pipeline only ever reads one format::

    {
      "image": "images/000001.png",      # relative to the JSONL file's folder, or absolute
      "width": 640, "height": 480,        # pixels; every coordinate below is in these pixels
      "id": "000001",                     # optional
      "source": "coco-instances",         # optional: which converter / dataset made it
      "texts": {"brief": ["..."], "detailed": ["..."], "more_detailed": ["..."]},
      "regions": [{
          "box": [x0, y0, x1, y1],
          "category": "dog",              # optional: object category (OD, region-to-category)
          "phrase": "brown dog",          # optional: short phrase
          "brief": "a dog lying on a mat",  # optional: regional brief text (dense caption)
          "polygons": [[x, y, x, y, ...]],  # optional: one object may have several parts
          "referring": ["the dog on the left"]  # optional: expressions that single it out
      }],
      "exhaustive": true,                 # regions list every object (see below)
      "no_objects": true,                 # only for an image checked to hold no object (then no regions)
      "groundings": [{                    # text-phrase-region triplets
          "text": "A dog on a mat.", "granularity": "brief",
          "phrases": [{"span": [0, 5], "boxes": [[x0, y0, x1, y1]], "polygons": [[...]]}]
      }],
      "ocr": [{"quad": [x0, y0, x1, y1, x2, y2, x3, y3], "text": "EXIT"}],
      "vqa": [{"question": "What is on the mat?", "answers": ["dog", "dog", "puppy"]}],
      "instructions": [{                  # free-form prompt / answer pairs (tasks outside the paper)
          "prompt": "Extract the invoice fields as JSON", "target": "{\"total\": \"12.50\"}",
          "task": "json_extraction"       # optional (default "instruction"): a name for per-task scores
      }]
    }

Annotations made by a model (the data engine, paper §4.2) say so: a region, grounding or OCR line carries
``"source"`` (the specialist that wrote it) and ``"score"`` (its confidence in [0, 1]); a generated text is an
object ``{"text": "...", "source": "...", "score": 0.8}`` in place of the plain string. Human annotations have
neither, so files written before provenance existed read unchanged.

Empty / default fields are left out of the JSON. ``exhaustive`` is false for sources that
annotate only some objects (RefCOCO refers to a few objects per image); listing tasks (OD,
dense region caption, region proposal, open-vocabulary detection) are not generated from
such records because a missing box would be taught as "nothing here".

``no_objects`` marks a verified negative: an image someone checked and found without any object (a Roboflow
export's unannotated image). Without the flag an image without regions says nothing about its objects (COCO
leaves images out of its annotations for many reasons), so it gives no listing sample; with it, object detection
and region proposal train the empty answer. The flag with regions, or with ``exhaustive: false``, contradicts
itself and is refused.

``instructions`` are trained verbatim through the ``<INSTRUCTION>`` task: the prompt is the whole prompt, the
target the whole answer (surrounding whitespace aside). Neither may hold text that generation or parsing would
not give back (``f2lightning.tasks.formats.free_text_problem``): ``<s>``, ``</s>``, ``<pad>``, ``<image>`` or a
location token. Locations are refused because a record keeps every coordinate in pixels of its image; a task
that answers with locations needs an output format that writes them (``boxes``, ``polygons``, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from f2lightning.tasks.formats import free_text_problem
from f2lightning.tasks.text import label_problem, ocr_text_problem

GRANULARITIES = ("brief", "detailed", "more_detailed")
# The task name of an instruction that names none (`Instruction.task`).
DEFAULT_INSTRUCTION_TASK = "instruction"
# PNG's limit, the largest of the common image formats; it also keeps every coordinate a finite float.
MAX_IMAGE_SIDE = 2**31 - 1


class SourcedText(str):
    """A text of `Record.texts` written by a model: still a `str` to every task producer and filter, it
    remembers the specialist (`source`) and its confidence (`score`) so that they survive a write."""

    source: str | None
    score: float | None

    def __new__(cls, text: str, source: str | None = None, score: float | None = None) -> SourcedText:
        made = super().__new__(cls, text)
        made.source, made.score = source, score
        return made


def source_of(annotation: Any) -> str | None:
    """Which specialist wrote an annotation (a region, grounding, OCR line or text); None for a human one."""
    return getattr(annotation, "source", None)


class BadRecordError(ValueError):
    """A record that cannot be used. ``where`` is ``file:line``; ``reason`` is a short key
    used to count skips (``box_outside_image``, ``bad_polygon``, ...)."""

    def __init__(self, where: str, reason: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.reason, self.detail = where, reason, message


@dataclass
class Region:
    """A region-text pair: a box plus any of its textual annotations."""

    box: list[float]
    category: str | None = None
    phrase: str | None = None
    brief: str | None = None
    polygons: list[list[float]] = field(default_factory=list)
    referring: list[str] = field(default_factory=list)
    source: str | None = None  # the specialist that wrote it (None: a human annotation)
    score: float | None = None  # its confidence in [0, 1]
    # Polygons a specialist added to a region it did not write (the data engine segments human boxes too).
    polygons_source: str | None = None
    polygons_score: float | None = None

    @property
    def description(self) -> str | None:
        """Text for dense region captioning / region-to-description: the brief text, else the phrase."""
        return self.brief or self.phrase


@dataclass
class Phrase:
    """A noun phrase of a grounding text: ``text[span[0]:span[1]]`` and the boxes it refers to."""

    span: tuple[int, int]
    boxes: list[list[float]]
    polygons: list[list[float]] = field(default_factory=list)


@dataclass
class Grounding:
    """A text-phrase-region triplet set: a description and its grounded phrases."""

    text: str
    phrases: list[Phrase]
    granularity: str = "brief"
    source: str | None = None
    score: float | None = None

    def phrase_text(self, phrase: Phrase) -> str:
        return self.text[phrase.span[0] : phrase.span[1]]


@dataclass
class OcrLine:
    """A text line: quad clockwise from the text's top-left corner, and its transcription."""

    quad: list[float]
    text: str
    source: str | None = None
    score: float | None = None


@dataclass
class VqaPair:
    """A question and its (possibly repeated) human answers; the most frequent one is the target."""

    question: str
    answers: list[str]


@dataclass
class Instruction:
    """A free-form prompt and the answer it is trained to give verbatim (JSON extraction, key-value pairs, a
    chat question). `task` is a free name that `f2lightning evaluate` scores separately."""

    prompt: str
    target: str
    task: str = DEFAULT_INSTRUCTION_TASK


@dataclass
class Record:
    """All annotations of one image. See the module docstring for the JSON layout."""

    image: str
    width: int
    height: int
    id: str | None = None
    source: str | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)
    regions: list[Region] = field(default_factory=list)
    exhaustive: bool = True
    groundings: list[Grounding] = field(default_factory=list)
    ocr: list[OcrLine] = field(default_factory=list)
    vqa: list[VqaPair] = field(default_factory=list)
    # Last, so that positional construction of the fields above keeps working.
    no_objects: bool = False  # a verified negative: checked, holds no object (module docstring)
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; leaves out empty and default fields."""
        out: dict[str, Any] = {"image": self.image, "width": self.width, "height": self.height}
        if self.id is not None:
            out["id"] = self.id
        if self.source is not None:
            out["source"] = self.source
        texts = {k: [_text_json(t) for t in v] for k, v in self.texts.items() if v}
        if texts:
            out["texts"] = texts
        if self.regions:
            out["regions"] = [_region_json(r) for r in self.regions]
        if not self.exhaustive:
            out["exhaustive"] = False
        if self.no_objects:
            out["no_objects"] = True
        if self.groundings:
            out["groundings"] = [_grounding_json(g) for g in self.groundings]
        if self.ocr:
            out["ocr"] = [_with_origin({"quad": list(o.quad), "text": o.text}, o) for o in self.ocr]
        if self.vqa:
            out["vqa"] = [{"question": q.question, "answers": list(q.answers)} for q in self.vqa]
        if self.instructions:
            out["instructions"] = [_instruction_json(i) for i in self.instructions]
        return out

    def to_json_line(self) -> str:
        """One JSONL line (no newline); non-ASCII text is kept readable."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Any, where: str = "<record>", categories: set[str] | None = None) -> Record:
        """Validate a decoded JSON object and build a record.

        Raises :class:`BadRecordError` naming ``where`` (``file:line``) on anything a training
        step could choke on: missing / mistyped fields, boxes outside the image or with no area,
        NaN coordinates, polygons with fewer than 3 points, phrase spans outside their text,
        categories not in ``categories`` (when given), captions / questions / answers that are
        only whitespace (``blank_text``), labels the task language cannot write into a
        target (``unwritable_text``: see :mod:`f2lightning.tasks.text`), instructions that would not
        survive training verbatim (``unwritable_text``), and ``no_objects`` with regions or with
        ``exhaustive: false`` (``no_objects_conflict``).
        """
        return _Validator(where, categories).record(data)


def _region_json(r: Region) -> dict[str, Any]:
    out: dict[str, Any] = {"box": list(r.box)}
    for key in ("category", "phrase", "brief"):
        if getattr(r, key) is not None:
            out[key] = getattr(r, key)
    if r.polygons:
        out["polygons"] = [list(p) for p in r.polygons]
    if r.referring:
        out["referring"] = list(r.referring)
    return _with_origin(_with_origin(out, r), r, "polygons_")


def _instruction_json(i: Instruction) -> dict[str, Any]:
    out = {"prompt": i.prompt, "target": i.target}
    if i.task != DEFAULT_INSTRUCTION_TASK:
        out["task"] = i.task
    return out


def _with_origin(out: dict[str, Any], annotation: Any, prefix: str = "") -> dict[str, Any]:
    for key in (f"{prefix}source", f"{prefix}score"):
        if getattr(annotation, key) is not None:
            out[key] = getattr(annotation, key)
    return out


def _text_json(text: str) -> str | dict[str, Any]:
    return _with_origin({"text": str(text)}, text) if isinstance(text, SourcedText) else text


def _grounding_json(g: Grounding) -> dict[str, Any]:
    phrases = []
    for p in g.phrases:
        pj: dict[str, Any] = {"span": list(p.span), "boxes": [list(b) for b in p.boxes]}
        if p.polygons:
            pj["polygons"] = [list(q) for q in p.polygons]
        phrases.append(pj)
    return _with_origin({"text": g.text, "granularity": g.granularity, "phrases": phrases}, g)


class _Validator:
    """Turns JSON into dataclasses, checking as it goes so errors point at the exact field."""

    def __init__(self, where: str, categories: set[str] | None):
        self.where, self.categories = where, categories
        self.width = self.height = 0

    def fail(self, reason: str, message: str) -> BadRecordError:
        return BadRecordError(self.where, reason, message)

    def record(self, data: Any) -> Record:
        d = self.obj(data, "record")
        image = self.string(d.get("image"), "image")
        self.width = self.size(d.get("width"), "width")
        self.height = self.size(d.get("height"), "height")
        regions = [self.region(r, i) for i, r in enumerate(self.array(d.get("regions", []), "regions"))]
        exhaustive = self.boolean(d.get("exhaustive", True), "exhaustive")
        no_objects = self.boolean(d.get("no_objects", False), "no_objects")
        if no_objects and regions:
            raise self.fail(
                "no_objects_conflict",
                f"no_objects is true (an image checked to hold no object) but it has {len(regions)} region(s)",
            )
        if no_objects and not exhaustive:
            raise self.fail(
                "no_objects_conflict",
                "no_objects is true (every object checked: there is none) but exhaustive is false",
            )
        return Record(
            image=image,
            width=self.width,
            height=self.height,
            id=self.optional_string(d.get("id"), "id", allow_int=True),
            source=self.optional_string(d.get("source"), "source"),
            texts=self.texts(d.get("texts", {})),
            regions=regions,
            exhaustive=exhaustive,
            groundings=[
                self.grounding(g, i) for i, g in enumerate(self.array(d.get("groundings", []), "groundings"))
            ],
            ocr=[self.ocr_line(o, i) for i, o in enumerate(self.array(d.get("ocr", []), "ocr"))],
            vqa=[self.vqa_pair(q, i) for i, q in enumerate(self.array(d.get("vqa", []), "vqa"))],
            no_objects=no_objects,
            instructions=[
                self.instruction(x, i)
                for i, x in enumerate(self.array(d.get("instructions", []), "instructions"))
            ],
        )

    # -- containers -------------------------------------------------------------------------
    def obj(self, value: Any, name: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail("bad_field", f"{name} must be an object, got {type(value).__name__}")
        return value

    def array(self, value: Any, name: str) -> list:
        if not isinstance(value, list):
            raise self.fail("bad_field", f"{name} must be a list, got {type(value).__name__}")
        return value

    def strings(self, value: Any, name: str, item: Callable[[Any, str], str]) -> list[str]:
        return [item(v, f"{name}[{i}]") for i, v in enumerate(self.array(value, name))]

    # -- scalars ----------------------------------------------------------------------------
    def string(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail("bad_field", f"{name} must be a non-empty string, got {value!r}")
        return value

    def optional_string(self, value: Any, name: str, allow_int: bool = False) -> str | None:
        if value is None:
            return None
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.string(value, name)

    def free_text(self, value: Any, name: str) -> str:
        """A caption, question or answer: trained as written, so blank text would teach an empty answer."""
        text = self.string(value, name)
        if not text.strip():
            raise self.fail("blank_text", f"{name} {text!r} is only whitespace")
        return text

    def label(self, value: Any, name: str, problem: Callable[[str], str | None] = label_problem) -> str:
        """Text that becomes a label in a target (box label, OCR line): the task language's own rule."""
        text = self.string(value, name)
        why = problem(text)
        if why:
            raise self.fail("unwritable_text", f"{name} {text!r} cannot be written in a target: it {why}")
        return text

    def optional_label(self, value: Any, name: str) -> str | None:
        return None if value is None else self.label(value, name)

    def origin(self, d: dict, name: str, prefix: str = "") -> dict[str, Any]:
        """`source` / `score` of a generated annotation (`prefix`: of one part of it, e.g. `polygons_`): which
        specialist, how confident (in [0, 1])."""
        score = d.get(f"{prefix}score")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1
        ):
            raise self.fail(
                "bad_field", f"{name}.{prefix}score must be a number in [0, 1], got {_short(score)}"
            )
        source = self.optional_string(d.get(f"{prefix}source"), f"{name}.{prefix}source")
        return {f"{prefix}source": source, f"{prefix}score": None if score is None else float(score)}

    def text(self, value: Any, name: str) -> str:
        """A text: a plain string (human) or `{"text", "source", "score"}` (generated)."""
        if not isinstance(value, dict):
            return self.free_text(value, name)
        text = self.free_text(value.get("text"), f"{name}.text")
        return SourcedText(text, **self.origin(value, name))

    def boolean(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail("bad_field", f"{name} must be true or false, got {value!r}")
        return value

    def size(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_IMAGE_SIDE:
            raise self.fail(
                "bad_field",
                f"{name} must be a positive integer (at most {MAX_IMAGE_SIDE}), got {_short(value)}",
            )
        return value

    def numbers(self, value: Any, name: str, length: int | None = None) -> list[float]:
        values = self.array(value, name)
        if length is not None and len(values) != length:
            raise self.fail("bad_field", f"{name} must have {length} numbers, got {len(values)}")
        out = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise self.fail("bad_field", f"{name} must hold numbers, got {_short(v)}")
            try:
                number = float(v)
            except OverflowError:  # an integer of hundreds of digits: as good as infinite
                number = math.inf
            if not math.isfinite(number):
                raise self.fail("nan_coordinate", f"{name} {_short(values)} has a non-finite coordinate")
            out.append(number)
        return out

    # -- geometry ---------------------------------------------------------------------------
    def inside(self, points: list[float], name: str, reason: str) -> None:
        for i, v in enumerate(points):
            limit = self.width if i % 2 == 0 else self.height
            if v < 0 or v > limit:
                raise self.fail(reason, f"{name} {_fmt(points)} outside image {self.width}x{self.height}")

    def box(self, value: Any, name: str) -> list[float]:
        box = self.numbers(value, name, length=4)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise self.fail("bad_box", f"{name} {_fmt(box)} has no area (need x0 < x1 and y0 < y1)")
        self.inside(box, name, "box_outside_image")
        return box

    def polygon(self, value: Any, name: str) -> list[float]:
        poly = self.numbers(value, name)
        if len(poly) % 2 or len(poly) < 6:
            raise self.fail("bad_polygon", f"{name} needs at least 3 (x, y) points, got {len(poly)} numbers")
        self.inside(poly, name, "polygon_outside_image")
        return poly

    def polygons(self, value: Any, name: str) -> list[list[float]]:
        polys = self.array(value, name)
        if not polys:
            raise self.fail("bad_polygon", f"{name} is an empty list of polygons")
        return [self.polygon(p, f"{name}[{i}]") for i, p in enumerate(polys)]

    # -- annotation kinds -------------------------------------------------------------------
    def texts(self, value: Any) -> dict[str, list[str]]:
        texts = self.obj(value, "texts")
        unknown = set(texts) - set(GRANULARITIES)
        if unknown:
            raise self.fail(
                "bad_field", f"texts has unknown granularity {sorted(unknown)}; use {GRANULARITIES}"
            )
        return {k: self.strings(v, f"texts.{k}", self.text) for k, v in texts.items()}

    def region(self, value: Any, i: int) -> Region:
        name = f"regions[{i}]"
        r = self.obj(value, name)
        # Category, phrase, brief text and expressions all become box labels (OD, dense captions, REC).
        category = self.optional_label(r.get("category"), f"{name}.category")
        if category is not None and self.categories is not None and category not in self.categories:
            raise self.fail("unknown_category", f"{name}.category {category!r} is not in the category list")
        return Region(
            box=self.box(r.get("box"), f"{name}.box"),
            category=category,
            phrase=self.optional_label(r.get("phrase"), f"{name}.phrase"),
            brief=self.optional_label(r.get("brief"), f"{name}.brief"),
            polygons=self.polygons(r["polygons"], f"{name}.polygons") if "polygons" in r else [],
            referring=self.strings(r.get("referring", []), f"{name}.referring", self.label),
            **self.origin(r, name),
            **self.origin(r, name, "polygons_"),
        )

    def grounding(self, value: Any, i: int) -> Grounding:
        name = f"groundings[{i}]"
        g = self.obj(value, name)
        text = self.free_text(g.get("text"), f"{name}.text")
        granularity = g.get("granularity", "brief")
        if granularity not in GRANULARITIES:
            raise self.fail("bad_field", f"{name}.granularity {granularity!r} is not one of {GRANULARITIES}")
        phrases = []
        for j, value_p in enumerate(self.array(g.get("phrases"), f"{name}.phrases")):
            pname = f"{name}.phrases[{j}]"
            p = self.obj(value_p, pname)
            span = self.array(p.get("span"), f"{pname}.span")
            if not (
                len(span) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) for s in span)
                and 0 <= span[0] < span[1] <= len(text)
            ):
                raise self.fail(
                    "bad_span", f"{pname}.span {span} is not a character range of a {len(text)}-char text"
                )
            # the phrase becomes a box label of the grounding target
            self.label(text[span[0] : span[1]], f"{pname} (its span's text)")
            boxes = self.array(p.get("boxes"), f"{pname}.boxes")
            if not boxes:
                raise self.fail("bad_box", f"{pname}.boxes is empty")
            phrases.append(
                Phrase(
                    span=(span[0], span[1]),
                    boxes=[self.box(b, f"{pname}.boxes[{k}]") for k, b in enumerate(boxes)],
                    polygons=self.polygons(p["polygons"], f"{pname}.polygons") if "polygons" in p else [],
                )
            )
        return Grounding(text=text, phrases=phrases, granularity=granularity, **self.origin(g, name))

    def ocr_line(self, value: Any, i: int) -> OcrLine:
        name = f"ocr[{i}]"
        o = self.obj(value, name)
        quad = self.numbers(o.get("quad"), f"{name}.quad", length=8)
        self.inside(quad, f"{name}.quad", "quad_outside_image")
        text = self.label(o.get("text"), f"{name}.text", ocr_text_problem)
        return OcrLine(quad=quad, text=text, **self.origin(o, name))

    def vqa_pair(self, value: Any, i: int) -> VqaPair:
        name = f"vqa[{i}]"
        q = self.obj(value, name)
        answers = self.strings(q.get("answers"), f"{name}.answers", self.free_text)
        if not answers:
            raise self.fail("bad_field", f"{name}.answers is empty")
        return VqaPair(question=self.free_text(q.get("question"), f"{name}.question"), answers=answers)

    def instruction(self, value: Any, i: int) -> Instruction:
        name = f"instructions[{i}]"
        x = self.obj(value, name)
        prompt, target = (self.verbatim(x.get(key), f"{name}.{key}") for key in ("prompt", "target"))
        task = self.optional_string(x.get("task"), f"{name}.task")
        return Instruction(prompt=prompt, target=target, task=task or DEFAULT_INSTRUCTION_TASK)

    def verbatim(self, value: Any, name: str) -> str:
        """An instruction's prompt or target, trained as written: text the model can give back as written."""
        text = self.free_text(value, name)
        why = free_text_problem(text)
        if why:
            raise self.fail("unwritable_text", f"{name} {_short(text)} cannot be trained verbatim: it {why}")
        return text


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _short(value: Any) -> str:
    """`repr` cut to a readable length: a bad value may be a 400-digit number or a whole nested object."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
