"""The data engine's filters (paper §4.2.2): what specialist models wrote is noisy, so generated texts,
regions and groundings are checked before they become training data. Human annotations are kept as they are
(the text filter takes them too with `include_human`). Every annotation left out is counted by reason in a
`SkipReport`, with examples naming the image; `docs/data_engine.md` lists the reasons and the defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from f2lightning.data.schema import Grounding, Record, Region, source_of
from f2lightning.data.skips import SkipReport
from f2lightning.engine.text_analysis import DEFAULT_PIPELINE, TextAnalysis, analyze, load_pipeline

if TYPE_CHECKING:
    from spacy.tokens import Doc

# Phrases with low visual grounding: a box "for" them marks no particular thing. Pronouns refer to something
# named elsewhere; the other words name the picture itself, a position in it or a vague piece of something.
# A region or grounding phrase is non-visual when every word of it is in this set, once articles and
# demonstratives are set aside ("the left side", "top of the image").
NON_VISUAL_WORDS = frozenset(
    {
        # pronouns and stand-ins
        "it", "its", "they", "them", "their", "he", "him", "his", "she", "her", "we", "us", "you", "i", "me",
        "one", "ones", "something", "someone", "somebody", "anything", "everything", "nothing", "thing",
        "things", "stuff",
        # the picture itself
        "background", "foreground", "image", "picture", "photo", "photograph", "scene", "view", "frame",
        # positions and pieces
        "side", "left", "right", "front", "back", "top", "bottom", "middle", "center", "centre", "corner",
        "edge", "part", "area", "section", "piece",
    }
)  # fmt: skip
_FUNCTION_WORDS = frozenset({"a", "an", "the", "of", "this", "that", "these", "those"})
_WORD = re.compile(r"[\w'-]+")
# Rank below every scored box in NMS: a generated region without a confidence cannot outrank one with it.
_UNSCORED = -1.0


@dataclass
class TextFilter:
    """Which generated texts (image texts of `Record.texts`, and grounding texts) to keep.

    - `max_objects` (10): a brief text naming more objects than this is dropped (`text_too_many_objects`). The
      paper observes that texts listing excessive objects tend to be noise rather than a description of the
      image. Longer texts name more things, so `detailed` texts get `max_objects_detailed` (25) and
      `more_detailed` ones `max_objects_more_detailed` (50).
    - `min_complexity` (2): a text whose most connected object or action has a node degree below this in the
      dependency tree is dropped (`text_low_complexity`). The paper keeps texts with some minimum complexity
      of objects and actions so that they carry rich visual concepts; with 2 a bare "A dog." (degree 1) goes
      and "A brown dog." or "The cat sleeps." stays.
    - a text in which no object is found is dropped (`text_no_object`): "It is sitting." grounds nothing.
    - `include_human` (False): human texts are trusted and kept unless this is set.

    `parse` turns a text into a parsed spaCy `Doc`; by default the pipeline `spacy_model` is loaded on first
    use (see `f2lightning.engine.text_analysis.load_pipeline` for the error when it is not installed).
    """

    max_objects: int = 10
    max_objects_detailed: int = 25
    max_objects_more_detailed: int = 50
    min_complexity: int = 2
    include_human: bool = False
    spacy_model: str = DEFAULT_PIPELINE
    parse: Callable[[str], Doc] | None = field(default=None, repr=False, compare=False)

    def object_limit(self, granularity: str) -> int:
        return {"detailed": self.max_objects_detailed, "more_detailed": self.max_objects_more_detailed}.get(
            granularity, self.max_objects
        )

    def rejection(self, analysis: TextAnalysis, granularity: str) -> tuple[str, str] | None:
        """None for a text to keep, else its (reason, explanation)."""
        if not analysis.objects:
            return "text_no_object", "names no object"
        limit = self.object_limit(granularity)
        if len(analysis.objects) > limit:
            return "text_too_many_objects", f"names {len(analysis.objects)} objects (max {limit})"
        if analysis.complexity < self.min_complexity:
            return "text_low_complexity", f"has complexity {analysis.complexity} (min {self.min_complexity})"
        return None


@dataclass
class RegionFilter:
    """Which generated regions and groundings to keep.

    - `min_score` (0.3): a generated region whose score is below it is dropped (`region_low_score`); one
      without a score passes, there being nothing to compare.
    - `nms_iou` (0.5): non-maximum suppression (`torchvision.ops.batched_nms`) among the generated regions of
      one label (category, else phrase, else brief text, case-insensitive); a suppressed region counts as
      `region_nms`. Specialists often box one object several times. A generated region that overlaps a human
      region of its label by more than `nms_iou` repeats that human box and is dropped (`duplicate_of_human`).
      1.0 turns both off.
    - `blacklist` (`NON_VISUAL_WORDS`): a generated region whose category, phrase or brief text is non-visual
      is dropped (`region_blacklisted_phrase`): its box was found for a phrase that points at no one thing.
      A non-visual phrase of a generated grounding is removed from it (`phrase_blacklisted`).
    - `min_phrase_score` (0.3): phrases have no score of their own in the record, so a generated grounding
      whose score (the confidence of its phrase-box matches) is below this loses all its phrases
      (`phrase_low_score`, one count per phrase).
    - a generated grounding left without phrases is dropped (`grounding_empty`).

    Human regions and groundings are never dropped or suppressed.
    """

    min_score: float = 0.3
    nms_iou: float = 0.5
    min_phrase_score: float = 0.3
    blacklist: frozenset[str] = NON_VISUAL_WORDS

    def is_non_visual(self, phrase: str) -> bool:
        """Every word of `phrase`, articles and demonstratives aside, is in the blacklist (so is a phrase of
        nothing but those: "this", "the")."""
        words = [w for w in _WORD.findall(phrase.lower()) if w not in _FUNCTION_WORDS]
        return all(w in self.blacklist for w in words)


def filter_records(
    records: Iterable[Record],
    text_filter: TextFilter | None,
    region_filter: RegionFilter | None,
    report: SkipReport,
) -> list[Record]:
    """Apply the filters (either may be None: not applied) and return new records. The input records are left
    as they were; the annotations that pass are shared with them, not copied.

    A record whose annotations all go is still returned: the image stays in the corpus for the specialists'
    next round. Every dropped text, region, phrase and grounding is counted in `report`.
    """
    judge = _TextJudge(text_filter, report) if text_filter is not None else None
    out = []
    for record in records:
        texts = record.texts
        if judge is not None:
            texts = {}
            for granularity, values in record.texts.items():
                where = f"{record.image}: texts.{granularity}"
                if kept := [text for text in values if judge.keep(text, text, granularity, where)]:
                    texts[granularity] = kept
        groundings = []
        for i, grounding in enumerate(record.groundings):
            where = f"{record.image}: groundings[{i}]"
            if judge is not None and not judge.keep(grounding, grounding.text, grounding.granularity, where):
                continue
            if region_filter is not None:
                grounding = _filter_grounding(grounding, where, region_filter, report)
            if grounding is not None:
                groundings.append(grounding)
        regions = (
            _filter_regions(record, region_filter, report) if region_filter is not None else record.regions
        )
        out.append(replace(record, texts=texts, regions=regions, groundings=groundings))
    return out


class _TextJudge:
    """A `TextFilter` with its parser resolved and each distinct text analysed once (a grounding's text is
    usually also one of the record's texts)."""

    def __init__(self, text_filter: TextFilter, report: SkipReport):
        self.filter, self.report = text_filter, report
        parse = text_filter.parse
        self.parse = parse if parse is not None else load_pipeline(text_filter.spacy_model)
        self.analyses: dict[str, TextAnalysis] = {}

    def keep(self, annotation: object, text: str, granularity: str, where: str) -> bool:
        """Whether to keep `text` (a text, or the text of a grounding: `annotation`); counts a rejection."""
        if source_of(annotation) is None and not self.filter.include_human:
            return True
        if text not in self.analyses:
            self.analyses[text] = analyze(self.parse(text))
        rejected = self.filter.rejection(self.analyses[text], granularity)
        if rejected is not None:
            reason, why = rejected
            self.report.drop(reason, example=f"{where} {text!r} {why}")
        return rejected is None


def _label(region: Region) -> str:
    return (region.category or region.phrase or region.brief or "").strip().lower()


def _box(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _filter_regions(record: Record, region_filter: RegionFilter, report: SkipReport) -> list[Region]:
    """The record's regions that pass, in their original order."""
    import torch  # here, not at the top: `f2lightning --help` and the text filter need no torch
    from torchvision.ops import batched_nms, box_iou

    regions = record.regions
    human, candidates = [], []  # indices into `regions`
    for i, region in enumerate(regions):
        where = f"{record.image}: region {_box(region.box)} {_label(region)!r}"
        if source_of(region) is None:
            human.append(i)
        elif region.score is not None and region.score < region_filter.min_score:
            report.drop(
                "region_low_score", example=f"{where} score {region.score:g} < {region_filter.min_score:g}"
            )
        elif any(
            text is not None and region_filter.is_non_visual(text)
            for text in (region.category, region.phrase, region.brief)
        ):
            report.drop("region_blacklisted_phrase", example=f"{where} has a non-visual phrase")
        else:
            candidates.append(i)
    if not candidates:
        return [regions[i] for i in human]
    labels = {label: n for n, label in enumerate(sorted({_label(r) for r in regions}))}
    boxes = torch.tensor([regions[i].box for i in candidates], dtype=torch.float64)
    ids = torch.tensor([labels[_label(regions[i])] for i in candidates])
    unique = torch.ones(len(candidates), dtype=torch.bool)
    if human:
        overlap = box_iou(boxes, torch.tensor([regions[i].box for i in human], dtype=torch.float64))
        human_ids = torch.tensor([labels[_label(regions[i])] for i in human])
        overlap[ids[:, None] != human_ids[None, :]] = 0  # only a box of the same label is a duplicate
        best, which = overlap.max(dim=1)
        unique = best <= region_filter.nms_iou
        for n in torch.nonzero(~unique).flatten().tolist():
            region = regions[candidates[n]]
            report.drop(
                "duplicate_of_human",
                example=f"{record.image}: region {_box(region.box)} {_label(region)!r} repeats the human box "
                f"{_box(regions[human[which[n]]].box)} (IoU {best[n]:.2f})",
            )
    rest = torch.nonzero(unique).flatten()
    scores = torch.tensor([_score(regions[i]) for i in candidates], dtype=torch.float64)
    kept = set(rest[batched_nms(boxes[rest], scores[rest], ids[rest], region_filter.nms_iou)].tolist())
    for n in sorted(set(rest.tolist()) - kept):
        region = regions[candidates[n]]
        report.drop(
            "region_nms",
            example=f"{record.image}: region {_box(region.box)} {_label(region)!r} overlaps a higher-scored "
            f"region of its label (IoU > {region_filter.nms_iou:g})",
        )
    survivors = set(human) | {candidates[n] for n in kept}
    return [region for i, region in enumerate(regions) if i in survivors]


def _score(region: Region) -> float:
    return _UNSCORED if region.score is None else region.score


def _filter_grounding(
    grounding: Grounding, where: str, region_filter: RegionFilter, report: SkipReport
) -> Grounding | None:
    """The grounding without its rejected phrases, or None when none is left."""
    if source_of(grounding) is None:
        return grounding
    phrases = []
    if grounding.score is not None and grounding.score < region_filter.min_phrase_score:
        report.drop(
            "phrase_low_score",
            n=len(grounding.phrases),
            example=f"{where} {grounding.text!r} score {grounding.score:g} "
            f"< {region_filter.min_phrase_score:g} (all its phrases)",
        )
    else:
        for phrase in grounding.phrases:
            text = grounding.phrase_text(phrase)
            if region_filter.is_non_visual(text):
                report.drop("phrase_blacklisted", example=f"{where} phrase {text!r} of {grounding.text!r}")
            else:
                phrases.append(phrase)
    if not phrases:
        report.drop("grounding_empty", example=f"{where} {grounding.text!r} has no phrase left")
        return None
    return replace(grounding, phrases=phrases)
