"""Merging what specialists wrote into an image's record (paper §4.2.1): human annotations are kept, generated
ones are added beside them with their `source` and `score`; the filters decide later what stays."""

from __future__ import annotations

from collections.abc import Sequence

from f2lightning.data.schema import Record
from f2lightning.data.skips import SkipReport
from f2lightning.inference.records import LISTING_TASKS

# Tasks that annotate a region the record already holds rather than adding annotations of their own.
REGION_TASKS = {"<REGION_TO_SEGMENTATION>"}


def merge(
    record: Record,
    generated: Record,
    task: str,
    region: Sequence[float] | None = None,
    report: SkipReport | None = None,
) -> None:
    """Add `generated` (one task's answer for `record`'s image, `inference.records.result_record`) to `record`.

    Nothing of `record` is replaced or removed. Image-level answers are appended; after a listing task (OD,
    dense region captions, proposals) the record lists every object, so it becomes exhaustive. A segmentation of
    `region` gives that region its polygons, with their own provenance (`polygons_source` / `polygons_score`),
    unless it has polygons already (counted as `region_already_segmented`).
    """
    if task in REGION_TASKS:
        _add_polygons(record, generated, region, report or SkipReport())
        return
    for granularity, texts in generated.texts.items():
        record.texts.setdefault(granularity, []).extend(texts)
    record.regions.extend(generated.regions)
    record.groundings.extend(generated.groundings)
    record.ocr.extend(generated.ocr)
    if task in LISTING_TASKS and generated.regions:
        record.exhaustive = True
        record.no_objects = False


def _add_polygons(
    record: Record, generated: Record, region: Sequence[float] | None, report: SkipReport
) -> None:
    target = next((r for r in record.regions if region is not None and list(r.box) == list(region)), None)
    answer = next((r for r in generated.regions if r.polygons), None)
    if target is None or answer is None:
        return
    if target.polygons:
        report.drop("region_already_segmented", example=f"{record.image}: {target.box}")
        return
    target.polygons = answer.polygons
    target.polygons_source, target.polygons_score = answer.source, answer.score
