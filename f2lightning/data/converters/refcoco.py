"""RefCOCO / RefCOCO+ / RefCOCOg: ``refs(unc).p`` / ``refs(umd).p`` pickles + ``instances.json``."""

from __future__ import annotations

import argparse
import json
import os
import pickle
from collections import defaultdict

from f2lightning.data.converters.base import (
    ConversionReport,
    Converter,
    image_path,
    register_converter,
    with_report,
)
from f2lightning.data.converters.coco import coco_box, coco_polygons
from f2lightning.data.schema import Record, Region


def convert_refcoco(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    splits: list[str] | None = None,
    source: str = "refcoco",
    report: ConversionReport | None = None,
) -> list[Record]:
    """One record per image, one region per referred object, holding all its expressions.

    Only referred objects are annotated, so records are marked ``exhaustive=False`` (no OD /
    region-proposal targets from them). ``splits`` filters the refs' ``split`` (train, val,
    testA, testB, test); None keeps all.
    """
    report = with_report(report)
    with open(refs, "rb") as f:
        # The released pickles were written by Python 2; latin-1 maps their byte strings 1:1.
        ref_list = pickle.load(f, encoding="latin1")
    with open(instances, encoding="utf-8") as f:
        coco = json.load(f)
    images = {im["id"]: im for im in coco["images"]}
    anns = {a["id"]: a for a in coco["annotations"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}

    expressions: dict[int, dict[int, list[str]]] = defaultdict(dict)  # image -> ann -> sentences
    for ref in ref_list:
        if splits is not None and ref["split"] not in splits:
            continue
        if ref["ann_id"] not in anns or ref["image_id"] not in images:
            report.drop("ref_without_annotation")
            continue
        sentences = [s["sent"].strip() for s in ref["sentences"] if s["sent"].strip()]
        expressions[ref["image_id"]].setdefault(ref["ann_id"], []).extend(sentences)

    records = []
    for image_id, by_ann in expressions.items():
        image = images[image_id]
        w, h = image["width"], image["height"]
        regions = []
        for ann_id, sentences in by_ann.items():
            ann = anns[ann_id]
            box = coco_box(ann["bbox"], w, h)
            if box is None or not sentences:
                report.drop("box_without_area" if box is None else "ref_without_sentences")
                continue
            regions.append(
                Region(
                    box=box,
                    category=names[ann["category_id"]],
                    polygons=coco_polygons(ann.get("segmentation"), w, h, report),
                    referring=sentences,
                )
            )
        if regions:
            records.append(
                Record(
                    image=image_path(image_dir, image["file_name"]),
                    width=w,
                    height=h,
                    id=str(image_id),
                    source=source,
                    regions=regions,
                    exhaustive=False,
                )
            )
    report.records += len(records)
    return records


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("refs", help="refs(unc).p, refs(google).p or refs(umd).p")
    parser.add_argument("instances", help="the dataset's instances.json")
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="COCO train2014 images")
    parser.add_argument("--splits", nargs="+", default=None, help="e.g. train (default: all)")
    parser.add_argument("--source", default="refcoco", help="name stored in each record (refcoco+, refcocog)")


register_converter(
    Converter(
        "refcoco", "RefCOCO / RefCOCO+ / RefCOCOg refs pickle + instances.json", convert_refcoco, _arguments
    )
)
