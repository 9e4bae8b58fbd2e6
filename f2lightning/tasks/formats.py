r"""Target texts of each output format: annotation dict → text (serialize) and model text → result (parse).

Parsing reproduces transformers' `Florence2Processor.post_process_generation` (itself a port of Microsoft's
processor): its regexes' results, so released checkpoints' outputs parse to the same structures.
The reference regexes backtrack quadratically on long outputs (`[^<]+` and `.+?` retried from every
position of a long text, `(?:<loc_\d+>)+` from every token of a long run): a 1024-token output took up to a
second, 50k characters nearly a minute. The parsers here scan each text once and return what those regexes
return, match for match (`benchmarks/parsing.py` keeps the regexes as its baseline).

Phrase grounding drops the phrases of the released processor configuration's `banned_grounding_tokens`
(pronouns, "the image", lone articles, ...; `BANNED_GROUNDING_PHRASES`), as transformers does with the
`processor_config.json` of the released checkpoints. Referring expression comprehension, which is not a task of
the released processor, reads the same answers without that list: its answer is the expression it was asked
about, whatever the words. Two deliberate differences remain: coordinates are bin centres as floats
(transformers >= 5 truncates them to ints, Microsoft's original did not), and `<pad>` is removed from pure-text
answers too (batched generation pads them).

Serialization writes what the parser reads back, in Florence-2's conventions:
- boxes `label<loc_x0><loc_y0><loc_x1><loc_y1>`; consecutive boxes of one label share it,
  `label<box 1><box 2>`, as Florence-2 writes phrase grounding;
- quad boxes `text<loc>*8`, corners clockwise from the top-left;
- polygons: an object's parts joined by `<sep>`; several objects each wrapped in `<poly>…</poly>`; a label, when
  the format has one (open-vocabulary detection), precedes the `<poly>` groups of its consecutive objects;
- free text (`<INSTRUCTION>`): the answer itself, which parses back to itself; text that would not (see
  `free_text_problem`) is refused. It is `text` without a region, kept apart so that validation scores it by
  edit distance (a long JSON answer is rarely exactly right, yet far from useless).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from f2lightning.geometry import clockwise_polygon, clockwise_quad, normalise_box
from f2lightning.tasks.locations import LOCATION_PATTERN, dequantize_bins, format_locations, parse_bin
from f2lightning.tasks.text import label_problem, ocr_text_problem

ImageSize = Sequence[float]

_GENERATION_MARKERS = ("<s>", "</s>", "<pad>")
# What free text cannot hold. The markers are stripped from every answer (and `</s>` ends generation); `<image>`
# is the image's place in a transformers Florence-2 prompt; a location token is a coordinate, which records keep
# in pixels of their image (a task that answers with locations writes them through a format that has them).
_FREE_TEXT_FORBIDDEN = re.compile(
    "|".join([*map(re.escape, (*_GENERATION_MARKERS, "<image>")), LOCATION_PATTERN.pattern])
)
# Tokens a label ends before: the lookahead of the reference's `^\s*(.*?)(?=<od>|...|<loc_)`; polygons add `<poly>`.
_BOX_LABEL_ENDS = ("<od>", "</od>", "<box>", "</box>", "<bbox>", "</bbox>", "<loc_")
_POLYGON_LABEL_ENDS = (*_BOX_LABEL_ENDS, "<poly>")
# Runs of structure tokens, matched at one position only (never searched from every position of a text).
_BOX_RUN = re.compile(r"(?:<loc_\d+>){4,}")
_POLYGON_RUN = re.compile(r"(?:<loc_\d+>|<sep>|<poly>|</poly>){4,}")
_LOCATION_RUN = re.compile(r"(?:<loc_\d+>)+")
_QUAD_LOCATIONS = re.compile(r"<loc_(\d+)>" * 8)
_LEADING_LOCATION = re.compile(r"<loc_\d+>")

# `phrase_grounding.banned_grounding_tokens` of the released Florence-2 processor configuration (transformers'
# convert_florence2_original_pytorch_to_hf.py writes it into processor_config.json): a grounded phrase equal to
# one of these (after stripping, case-sensitive) is dropped with its boxes.
BANNED_GROUNDING_PHRASES = frozenset(
    [
        "it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers", "they", "them",
        "their", "theirs", "one", "oneself", "we", "us", "our", "ours", "its", "myself", "yourself", "himself",
        "herself", "itself", "ourselves", "yourselves", "themselves", "this", "that", "these", "those", "who",
        "whom", "whose", "which", "what", "all", "another", "any", "anybody", "anyone", "anything", "each",
        "everybody", "everyone", "everything", "few", "many", "nobody", "none", "several", "some", "somebody",
        "someone", "something", "each other", "one another", "the image", "image", "images", "the", "a", "an",
        "a group", "other objects", "lots", "a set",
    ]
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- serialize


def serialize_text(annotation: Mapping[str, Any], image_size: ImageSize | None) -> str:
    """`{'text': str}` as is; with a `'region'` box the text is followed by its four location tokens, as
    Florence-2's released checkpoints answer region-to-category / region-to-description."""
    text = annotation["text"].strip()
    if annotation.get("region") is not None:
        text += format_locations(normalise_box(annotation["region"]), _require_size(image_size))
    return text


def free_text_problem(text: str) -> str | None:
    """Why `text` cannot be a free-text prompt or answer (e.g. `holds '</s>'`), or None when it can: the rule of
    record validation (`Instruction`) and of `serialize_free_text`."""
    if not text.strip():
        return "is empty or only whitespace"
    found = _FREE_TEXT_FORBIDDEN.search(text)
    return f"holds {found.group()!r}" if found else None


def serialize_free_text(annotation: Mapping[str, Any], image_size: ImageSize | None = None) -> str:
    """`{'text': str}` as is (stripped, as it parses back); text that would not parse back is refused."""
    problem = free_text_problem(annotation["text"])
    if problem:
        raise ValueError(f"free text {annotation['text'][:80]!r} cannot be written: it {problem}")
    return annotation["text"].strip()


def serialize_boxes(annotation: Mapping[str, Any], image_size: ImageSize) -> str:
    """`{'bboxes': [[x0, y0, x1, y1]], 'labels': [str]}`."""
    return "".join(
        label + "".join(format_locations(normalise_box(b), image_size) for b in boxes)
        for label, boxes in _consecutive_groups(annotation["labels"], annotation["bboxes"])
    )


def serialize_region_proposals(annotation: Mapping[str, Any], image_size: ImageSize) -> str:
    """`{'bboxes': [[x0, y0, x1, y1]]}`: boxes without labels (any `'labels'` are ignored)."""
    return "".join(format_locations(normalise_box(b), image_size) for b in annotation["bboxes"])


def serialize_quad_boxes(annotation: Mapping[str, Any], image_size: ImageSize) -> str:
    """`{'quad_boxes': [[x0, y0, ..., x3, y3]], 'labels': [str]}`; every quad carries its own text."""
    quads, labels = annotation["quad_boxes"], annotation["labels"]
    _check_lengths(quads, labels)
    return "".join(
        _checked_ocr_text(text) + format_locations(clockwise_quad(q), image_size)
        for q, text in zip(quads, labels)
    )


def serialize_polygons(annotation: Mapping[str, Any], image_size: ImageSize) -> str:
    """`{'polygons': [[[x, y, ...], ...]]}`: the objects of referring / region-to segmentation, whose labels
    live in the prompt (any `'labels'` are ignored). One object is written bare, as Florence-2 does."""
    objects = [_polygon_parts(parts, image_size) for parts in annotation["polygons"]]
    if len(objects) == 1:
        return objects[0]
    return "".join(f"<poly>{parts}</poly>" for parts in objects)


def serialize_boxes_or_polygons(annotation: Mapping[str, Any], image_size: ImageSize) -> str:
    """Open-vocabulary detection: `{'bboxes', 'bboxes_labels'}` or `{'polygons', 'polygons_labels'}`.

    A text holds boxes or polygons, not both: the parser reads polygons alone once it sees `<poly>`.
    """
    bboxes, polygons = annotation.get("bboxes", []), annotation.get("polygons", [])
    if bboxes and polygons:
        raise ValueError("open-vocabulary detection targets hold boxes or polygons, not both")
    if not polygons:
        return serialize_boxes({"bboxes": bboxes, "labels": annotation.get("bboxes_labels", [])}, image_size)
    return "".join(
        label + "".join(f"<poly>{_polygon_parts(p, image_size)}</poly>" for p in objects)
        for label, objects in _consecutive_groups(annotation["polygons_labels"], polygons)
    )


def _polygon_parts(parts: Sequence[Sequence[float]], image_size: ImageSize) -> str:
    if not parts:
        raise ValueError("an object needs at least one polygon")
    return "<sep>".join(format_locations(clockwise_polygon(p), image_size) for p in parts)


def _consecutive_groups(labels: Sequence[str], items: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
    """Runs of items sharing a (checked, stripped) label, in order."""
    _check_lengths(items, labels)
    labels = [_checked_label(label) for label in labels]
    group: list[Any] = []
    for i, (label, item) in enumerate(zip(labels, items)):
        group.append(item)
        if i + 1 == len(labels) or labels[i + 1] != label:
            yield label, group
            group = []


def _checked_label(label: str) -> str:
    """The stripped label; one the parser would not read back is refused (`f2lightning.tasks.text`)."""
    problem = label_problem(label)
    if problem:
        raise ValueError(f"label {label!r} cannot be written: it {problem} (must be non-empty, without '<')")
    return label.strip()


def _checked_ocr_text(text: str) -> str:
    problem = ocr_text_problem(text)
    if problem:
        raise ValueError(f"OCR text {text!r} cannot be written: it {problem} (must be non-empty, one line)")
    return text.strip()


def _check_lengths(items: Sequence[Any], labels: Sequence[str]) -> None:
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} shapes but {len(labels)} labels")


def _require_size(image_size: ImageSize | None) -> ImageSize:
    if image_size is None:
        raise ValueError("image_size (width, height) is needed to write locations")
    return image_size


# -------------------------------------------------------------------------------------------------- parse


def parse_text(text: str, image_size: ImageSize | None = None) -> str:
    """The answer without generation markers, stripped."""
    return _without_markers(text).strip()


def parse_boxes(text: str, image_size: ImageSize) -> dict[str, list]:
    """`{'bboxes': [[x0, y0, x1, y1]], 'labels': [str]}` from `label<loc>*4...` groups."""
    return _parse_boxes(_labelled_runs(_without_markers(text), _BOX_RUN), image_size)


def parse_phrase_grounding(text: str, image_size: ImageSize) -> dict[str, list]:
    """Like :func:`parse_boxes`, without the phrases of `BANNED_GROUNDING_PHRASES`."""
    phrases = _labelled_runs(_without_markers(text), _BOX_RUN)
    return _parse_boxes(phrases, image_size, BANNED_GROUNDING_PHRASES)


def parse_region_proposals(text: str, image_size: ImageSize) -> dict[str, list]:
    """`{'bboxes': [...], 'labels': ['', ...]}`: every run of location tokens, text ignored."""
    return _parse_boxes(_BOX_RUN.findall(_without_markers(text)), image_size)


def _parse_boxes(
    phrases: list[str], image_size: ImageSize, banned: frozenset[str] = frozenset()
) -> dict[str, list]:
    bboxes: list[list[float]] = []
    labels: list[str] = []
    for phrase in phrases:
        label = _label(phrase, _BOX_LABEL_ENDS)
        # Banned phrases are compared before the ASCII filter below, as transformers does.
        if label is None or label in banned:
            continue
        # Florence-2 drops non-ASCII characters from box labels.
        label = label.encode("ascii", "ignore").decode("ascii")
        # A phrase is its label and then only location tokens: its boxes are their consecutive fours.
        bins = LOCATION_PATTERN.findall(phrase)
        for start in range(0, len(bins) - 3, 4):
            bboxes.append(_decode(bins[start : start + 4], image_size))
            labels.append(label)
    return {"bboxes": bboxes, "labels": labels}


def parse_quad_boxes(text: str, image_size: ImageSize) -> dict[str, list]:
    """`{'quad_boxes': [[x0, y0, ..., x3, y3]], 'labels': [str]}` from `text<loc>*8...`.

    The reference's `(.+?)<loc>{8}`: at least one character of text, never across a line break, then the first
    eight location tokens in a row. So each line is searched once, from where the last quad ended.
    """
    text = _without_markers(text)
    quad_boxes: list[list[float]] = []
    labels: list[str] = []
    line_start = 0
    while line_start <= len(text):
        line_end = text.find("\n", line_start)
        line_end = len(text) if line_end == -1 else line_end
        start = line_start
        while match := _QUAD_LOCATIONS.search(text, start + 1, line_end):
            quad_boxes.append(_decode(match.groups(), image_size))
            labels.append(text[start : match.start()].strip())
            start = match.end()
        line_start = line_end + 1
    return {"quad_boxes": quad_boxes, "labels": labels}


def parse_polygons(text: str, image_size: ImageSize) -> dict[str, list]:
    """`{'polygons': [[[x, y, ...], ...]], 'labels': ['', ...]}`: one entry per object."""
    return _parse_polygons(_POLYGON_RUN.findall(_without_markers(text)), image_size)


def parse_boxes_or_polygons(text: str, image_size: ImageSize) -> dict[str, list]:
    """Open-vocabulary detection: `{'bboxes', 'bboxes_labels', 'polygons', 'polygons_labels'}`."""
    result: dict[str, list] = {"bboxes": [], "bboxes_labels": [], "polygons": [], "polygons_labels": []}
    if "<poly>" in text:
        polygons = _parse_polygons(_labelled_runs(_without_markers(text), _POLYGON_RUN), image_size)
        result.update(polygons=polygons["polygons"], polygons_labels=polygons["labels"])
    else:
        boxes = parse_boxes(text, image_size)
        result.update(bboxes=boxes["bboxes"], bboxes_labels=boxes["labels"])
    return result


def _parse_polygons(phrases: list[str], image_size: ImageSize) -> dict[str, list]:
    polygons: list[list[list[float]]] = []
    labels: list[str] = []
    for phrase in phrases:
        leading = _LEADING_LOCATION.match(phrase)
        label = _label(phrase[leading.end() :] if leading else phrase, _POLYGON_LABEL_ENDS)
        if label is None:
            continue
        wrapped = "<poly>" in phrase and "</poly>" in phrase
        for obj in _polygon_groups(phrase) if wrapped else [phrase]:
            parts = _polygon_parts_of(obj)
            if not parts:
                continue
            polygons.append([_decode(_even(LOCATION_PATTERN.findall(p)), image_size) for p in parts])
            labels.append(label)
    return {"polygons": polygons, "labels": labels}


def _labelled_runs(text: str, run: re.Pattern[str]) -> list[str]:
    """What `re.findall(r"([^<]+RUN)", text)` finds, in one pass over `text`.

    `[^<]+` can only end just before a `<`, so every start inside one stretch of text without `<` succeeds or
    fails alike: each stretch is tried once, with `run` matched at the `<` that ends it (the stretch may begin
    inside a token, e.g. `loc_5>` of an unlabelled run, exactly as in the regex).
    """
    phrases = []
    # Where the current stretch without `<` begins: just after a `<`, or where the last phrase ended.
    start = 0
    bracket = text.find("<")
    while bracket != -1:
        match = run.match(text, bracket) if bracket > start else None
        if match:
            phrases.append(text[start : match.end()])
            start = match.end()
        else:
            start = bracket + 1
        bracket = text.find("<", start)
    return phrases


def _label(phrase: str, ends: tuple[str, ...]) -> str | None:
    r"""What `re.search(r"^\s*(.*?)(?=END)", phrase).group().strip()` gives, or None where it finds nothing.

    Backtracking the leading whitespace never helps (an END starts with `<`, never whitespace), so the label
    is the text up to the first END after the leading whitespace, unless a line break (which `.` does not
    cross) lies between.
    """
    body = len(phrase) - len(phrase.lstrip())
    end = phrase.find("<", body)
    while end != -1 and not phrase.startswith(ends, end):
        end = phrase.find("<", end + 1)
    if end == -1 or "\n" in phrase[body:end]:
        return None
    return phrase[:end].strip()


def _polygon_groups(phrase: str) -> list[str]:
    """What `re.findall(r"<poly>(.*?)</poly>", phrase)` finds (a phrase holds no line break after its label)."""
    groups = []
    start = phrase.find("<poly>")
    while start != -1:
        end = phrase.find("</poly>", start + 6)
        if end == -1:
            break
        groups.append(phrase[start + 6 : end])
        start = phrase.find("<poly>", end + 7)
    return groups


def _polygon_parts_of(obj: str) -> list[str]:
    r"""What `re.findall(r"((?:<loc_\d+>)+)(?:<sep>|$)", obj)` finds: the runs of location tokens followed by
    `<sep>` or the end. A run followed by anything else fails from each of its tokens alike, so each run is
    matched once (an object holds no line break, before which `$` would also match)."""
    return [
        match.group()
        for match in _LOCATION_RUN.finditer(obj)
        if match.end() == len(obj) or obj.startswith("<sep>", match.end())
    ]


def _even(items: list[str]) -> list[str]:
    """Drop a trailing x without its y."""
    return items[: len(items) - len(items) % 2]


def _decode(digits: Sequence[str], image_size: ImageSize) -> list[float]:
    return dequantize_bins([parse_bin(d) for d in digits], image_size)


def _without_markers(text: str) -> str:
    for marker in _GENERATION_MARKERS:
        text = text.replace(marker, "")
    return text


SERIALIZERS: dict[str, Callable[[Mapping[str, Any], ImageSize], str]] = {
    "text": serialize_text,
    "boxes": serialize_boxes,
    # Written like boxes; a banned phrase is written too (training on it does no harm), parsing then drops it.
    "phrase_grounding": serialize_boxes,
    "region_proposals": serialize_region_proposals,
    "quad_boxes": serialize_quad_boxes,
    "polygons": serialize_polygons,
    "boxes_or_polygons": serialize_boxes_or_polygons,
    "free_text": serialize_free_text,
}
PARSERS: dict[str, Callable[[str, ImageSize], str | dict[str, list]]] = {
    "text": parse_text,
    "boxes": parse_boxes,
    "phrase_grounding": parse_phrase_grounding,
    "region_proposals": parse_region_proposals,
    "quad_boxes": parse_quad_boxes,
    "polygons": parse_polygons,
    "boxes_or_polygons": parse_boxes_or_polygons,
    "free_text": parse_text,
}
