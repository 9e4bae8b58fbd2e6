"""COCO instances (boxes, polygons, RLE, iscrowd) and COCO captions, incl. Karpathy splits."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from f2lightning.data.converters.base import (
    ConversionReport,
    Converter,
    image_path,
    read_image_size,
    register_converter,
    with_report,
)
from f2lightning.data.geometry import clip_points, mask_to_polygons
from f2lightning.data.schema import Record, Region

CrowdPolicy = Literal["skip", "keep"]


def coco_box(bbox: list[float], width: int, height: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` as ``[x0, y0, x1, y1]`` clipped to the image; None if no area is left."""
    x, y, w, h = bbox
    box = clip_points([x, y, x + w, y + h], width, height)
    return box if box[2] > box[0] and box[3] > box[1] else None


def coco_polygons(segmentation: Any, width: int, height: int, report: ConversionReport) -> list[list[float]]:
    """Polygons of a COCO segmentation, whatever its encoding.

    Polygon lists are clipped to the image; RLE (compressed or not, the crowd encoding) is
    decoded with pycocotools and traced by :func:`mask_to_polygons` (outer boundaries, holes
    dropped, staircases simplified at 1 px).
    """
    if isinstance(segmentation, list):
        polygons = [clip_points(p, width, height) for p in segmentation]
        # Clamping keeps NaN as NaN: such a polygon cannot be repaired, only dropped and counted.
        finite = [p for p in polygons if all(math.isfinite(v) for v in p)]
        if len(finite) < len(polygons):
            report.drop("non_finite_polygon", len(polygons) - len(finite))
        kept = [p for p in finite if len(p) >= 6 and len(p) % 2 == 0]
        report.drop("polygon_under_3_points", len(finite) - len(kept))
        return kept
    if isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        elif isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        return mask_to_polygons(np.asarray(mask_utils.decode(rle), dtype=bool))
    return []


def convert_coco_instances(
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    crowd: CrowdPolicy = "skip",
    report: ConversionReport | None = None,
) -> list[Record]:
    """One record per annotated image of a COCO ``instances_*.json``.

    ``crowd='skip'`` leaves iscrowd regions out (they mark groups detectors are not scored on,
    and as OD targets they would teach one box for many objects); ``'keep'`` keeps them with
    polygons traced from their RLE mask.
    """
    report = with_report(report)
    with open(annotations, encoding="utf-8") as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_image = defaultdict(list)
    for ann in coco.get("annotations", []):
        by_image[ann["image_id"]].append(ann)
    records = []
    for image in coco["images"]:
        w, h = image["width"], image["height"]
        regions = []
        for ann in by_image.get(image["id"], []):
            if ann.get("iscrowd") and crowd == "skip":
                report.drop("crowd_region")
                continue
            box = coco_box(ann["bbox"], w, h)
            if box is None:
                report.drop("box_without_area")
                continue
            polygons = coco_polygons(ann.get("segmentation"), w, h, report)
            regions.append(Region(box=box, category=names[ann["category_id"]], polygons=polygons))
        if not regions:
            report.drop("image_without_regions")
            continue
        records.append(
            Record(
                image=image_path(image_dir, image["file_name"]),
                width=w,
                height=h,
                id=str(image["id"]),
                source="coco-instances",
                regions=regions,
            )
        )
    report.records += len(records)
    return records


def convert_coco_captions(
    captions: str | os.PathLike, image_dir: str | os.PathLike, *, report: ConversionReport | None = None
) -> list[Record]:
    """One record per image of a COCO ``captions_*.json``; all captions are brief texts."""
    report = with_report(report)
    with open(captions, encoding="utf-8") as f:
        coco = json.load(f)
    by_image = defaultdict(list)
    for ann in coco["annotations"]:
        text = ann["caption"].strip()
        if text:
            by_image[ann["image_id"]].append(text)
        else:
            report.drop("empty_caption")
    records = []
    for image in coco["images"]:
        texts = by_image.get(image["id"])
        if not texts:
            report.drop("image_without_captions")
            continue
        records.append(
            Record(
                image=image_path(image_dir, image["file_name"]),
                width=image["width"],
                height=image["height"],
                id=str(image["id"]),
                source="coco-captions",
                texts={"brief": texts},
            )
        )
    report.records += len(records)
    return records


def convert_karpathy(
    dataset: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    splits: list[str] | None = None,
    report: ConversionReport | None = None,
) -> list[Record]:
    """Karpathy's ``dataset_coco.json`` (also ``dataset_flickr30k.json``): captions per image with
    a ``split`` of train / restval / val / test, kept when in ``splits`` (all when None).

    The file stores no image sizes, so they are read from the image headers under
    ``image_dir/<filepath>/<filename>``; images that cannot be read are dropped and counted.
    """
    report = with_report(report)
    with open(dataset, encoding="utf-8") as f:
        data = json.load(f)
    records = []
    for image in data["images"]:
        if splits is not None and image.get("split") not in splits:
            continue
        path = image_path(image_dir, os.path.join(image.get("filepath", ""), image["filename"]))
        size = read_image_size(path)
        if size is None:
            report.drop("missing_image")
            continue
        texts = [s["raw"].strip() for s in image["sentences"] if s["raw"].strip()]
        if not texts:
            report.drop("image_without_captions")
            continue
        image_id = image.get("cocoid", image.get("imgid"))
        records.append(
            Record(
                image=path,
                width=size[0],
                height=size[1],
                id=None if image_id is None else str(image_id),
                source=f"karpathy-{data.get('dataset', 'coco')}-{image.get('split')}",
                texts={"brief": texts},
            )
        )
    report.records += len(records)
    return records


def _image_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="folder holding the images")


def _instances_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations", help="instances_*.json")
    _image_dir_argument(parser)
    parser.add_argument("--crowd", choices=["skip", "keep"], default="skip", help="iscrowd regions")


def _captions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captions", help="captions_*.json")
    _image_dir_argument(parser)


def _karpathy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="dataset_coco.json")
    _image_dir_argument(parser)
    parser.add_argument("--splits", nargs="+", default=None, help="e.g. train restval (default: all)")


register_converter(
    Converter(
        "coco-instances",
        "COCO instances json (boxes, polygons, RLE)",
        convert_coco_instances,
        _instances_arguments,
    )
)
register_converter(
    Converter("coco-captions", "COCO captions json", convert_coco_captions, _captions_arguments)
)
register_converter(
    Converter("karpathy", "Karpathy split file dataset_coco.json", convert_karpathy, _karpathy_arguments)
)
