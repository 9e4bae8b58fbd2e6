"""COCO instances (boxes, polygons, RLE, iscrowd), Roboflow COCO exports, COCO captions, incl. Karpathy splits.

What a malformed file gives: the keys that tie the file together (the ``images`` /
``annotations`` / ``categories`` lists, each image's ``id``, ``file_name``, ``width``, ``height``,
each category's ``id`` and ``name``, each annotation's ``image_id``) missing or mistyped, or an id
used twice, is a :class:`ConversionError` naming the file and the entry. One annotation whose own
values cannot be used (its ``bbox``, ``segmentation``, ``iscrowd``, ``category_id`` or caption) is
dropped and counted by reason, so one bad annotation among good ones does not stop a conversion.
"""

from __future__ import annotations

import argparse
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from f2lightning.data.converters.base import (
    BadAnnotation,
    ConversionError,
    Converter,
    JsonFile,
    SkipReport,
    checked_records,
    image_path,
    is_finite_numbers,
    is_number,
    read_image_size,
    register_converter,
    require_folder,
)
from f2lightning.data.schema import Record, Region
from f2lightning.geometry import clip_points, mask_to_polygons

CrowdPolicy = Literal["skip", "keep"]
# A Roboflow COCO export: one folder per split, holding the split's images and this file.
ROBOFLOW_SPLITS = ("train", "valid", "test")
ROBOFLOW_ANNOTATIONS = "_annotations.coco.json"


class CocoImage(NamedTuple):
    file_name: str
    width: int
    height: int

    def record(
        self, image_dir: str | os.PathLike, image_id: int | str, source: str, **annotations: Any
    ) -> Record:
        """The record of this image, found in `image_dir`, holding `annotations` (Record fields)."""
        return Record(
            image=image_path(image_dir, self.file_name),
            width=self.width,
            height=self.height,
            id=str(image_id),
            source=source,
            **annotations,
        )


@dataclass
class CocoFile:
    """A COCO-style JSON (instances, captions; RefCOCO's ``instances.json``) checked for the
    structure every entry relies on. ``annotations`` pairs each annotation with a label that
    names it in reports (its id, else its position)."""

    json: JsonFile
    images: dict[int | str, CocoImage]
    annotations: list[tuple[str, dict]]
    categories: dict[int | str, str]

    @classmethod
    def read(cls, path: str | os.PathLike, *, categories: bool) -> CocoFile:
        """Duplicate annotation ids are an error rather than a counted drop: pycocotools indexes
        annotations by id (a repeated one silently replaces the first in ``COCO.anns``) and
        MMDetection refuses such files ("Annotation ids ... are not unique"), so the file is
        broken for the tools its records are compared with, and which copy is right is unknown.
        Ids are optional (hand-written files leave them out); when present they must be unique."""
        coco = JsonFile(path)
        entries = coco.entries(coco.data, "images")
        images = {
            image_id: CocoImage(
                coco.string(image, "file_name", f"images[{i}]"),
                coco.size(image, "width", f"images[{i}]"),
                coco.size(image, "height", f"images[{i}]"),
            )
            for i, (image_id, image) in enumerate(coco.index(entries, "id", "images").items())
        }
        names = {}
        if categories:
            entries = coco.entries(coco.data, "categories")
            for i, (category_id, category) in enumerate(coco.index(entries, "id", "categories").items()):
                names[category_id] = coco.string(category, "name", f"categories[{i}]")
        entries = coco.entries(coco.data, "annotations")
        coco.index(entries, "id", "annotations", required=False)
        annotations = []
        for i, ann in enumerate(entries):
            coco.identifier(ann, "image_id", f"annotations[{i}]")
            annotations.append((f"annotation {ann['id']!r}" if "id" in ann else f"annotations[{i}]", ann))
        return cls(coco, images, annotations, names)

    def by_image(self, report: SkipReport) -> dict[int | str, list[tuple[str, dict]]]:
        """Annotations grouped by image; those whose ``image_id`` is not in ``images`` are
        counted as ``annotation_without_image``."""
        grouped = defaultdict(list)
        for label, ann in self.annotations:
            if ann["image_id"] in self.images:
                grouped[ann["image_id"]].append((label, ann))
            else:
                report.drop("annotation_without_image", example=f"{label}: image_id {ann['image_id']!r}")
        return grouped


def coco_box(bbox: list[float], width: int, height: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` as ``[x0, y0, x1, y1]`` clipped to the image; None if no area is left."""
    x, y, w, h = bbox
    box = clip_points([x, y, x + w, y + h], width, height)
    return box if box[2] > box[0] and box[3] > box[1] else None


def rle_string_counts(counts: str) -> list[int] | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString`` in Python), or
    None when it is not one: a character outside the alphabet, a run cut off, a negative run."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p == len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:  # runs after the second are stored as differences
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return runs


def coco_rle(segmentation: dict, width: int, height: int) -> dict:
    """A COCO RLE (compressed or not) checked and ready for ``mask_utils.decode``.

    pycocotools' C decoder trusts the run lengths: runs that do not add up to the image's
    pixels give a mask of uninitialised memory (or a crash), and its string parser reads past
    a run cut off at the end. So the runs are checked here first; a mask of another size than
    its image is refused too (its polygons would be in other pixels).
    """
    size, counts = segmentation.get("size"), segmentation.get("counts")
    runs = rle_string_counts(counts) if isinstance(counts, str) else counts
    if (
        size != [height, width]
        or not isinstance(runs, list)
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs)
        or sum(runs) != width * height
    ):
        raise BadAnnotation("bad_segmentation")
    if isinstance(counts, str):
        return {"size": [height, width], "counts": counts.encode("ascii")}
    return mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)


def coco_polygons(segmentation: Any, width: int, height: int, report: SkipReport) -> list[list[float]]:
    """Polygons of a COCO segmentation, whatever its encoding.

    Polygon lists are clipped to the image; RLE (compressed or not, the crowd encoding) is
    decoded with pycocotools and traced by :func:`mask_to_polygons` (outer boundaries, holes
    dropped, staircases simplified at 1 px). A missing segmentation gives no polygons; one that
    is neither polygons of numbers nor a valid RLE raises :class:`BadAnnotation`.
    """
    if segmentation is None:
        return []
    if isinstance(segmentation, list):
        if not all(isinstance(p, list) and all(is_number(v) for v in p) for p in segmentation):
            raise BadAnnotation("bad_segmentation")
        polygons = [clip_points(p, width, height) for p in segmentation]
        # Clamping keeps NaN as NaN: such a polygon cannot be repaired, only dropped and counted.
        finite = [p for p in polygons if all(math.isfinite(v) for v in p)]
        report.drop("non_finite_polygon", len(polygons) - len(finite))
        kept = [p for p in finite if len(p) >= 6 and len(p) % 2 == 0]
        report.drop("polygon_under_3_points", len(finite) - len(kept))
        return kept
    if isinstance(segmentation, dict):
        rle = coco_rle(segmentation, width, height)
        return mask_to_polygons(np.asarray(mask_utils.decode(rle), dtype=bool))
    raise BadAnnotation("bad_segmentation")


def coco_region(ann: dict, categories: dict[int | str, str], image: CocoImage, report: SkipReport) -> Region:
    """The region of one instance annotation (box, category, polygons); raises
    :class:`BadAnnotation` with the reason it cannot be one."""
    category_id = ann.get("category_id")
    if (
        isinstance(category_id, bool)
        or not isinstance(category_id, int | str)
        or category_id not in categories
    ):
        raise BadAnnotation("unknown_category")
    if not is_finite_numbers(ann.get("bbox"), 4):
        raise BadAnnotation("bad_bbox")
    box = coco_box(ann["bbox"], image.width, image.height)
    if box is None:
        raise BadAnnotation("box_without_area")
    polygons = coco_polygons(ann.get("segmentation"), image.width, image.height, report)
    return Region(box=box, category=categories[category_id], polygons=polygons)


def is_crowd(ann: dict) -> bool:
    """COCO's ``iscrowd`` (0 when absent); any value other than 0 / 1 raises :class:`BadAnnotation`."""
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise BadAnnotation("bad_iscrowd")
    return bool(crowd)


@checked_records
def convert_coco_instances(
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    crowd: CrowdPolicy = "skip",
    keep_negatives: bool = False,
    report: SkipReport,
) -> list[Record]:
    """One record per annotated image of a COCO ``instances_*.json``.

    ``crowd='skip'`` leaves iscrowd regions out (they mark groups detectors are not scored on,
    and as OD targets they would teach one box for many objects); ``'keep'`` keeps them with
    polygons traced from their RLE mask.

    An image without any annotation is dropped (``image_without_regions``): COCO's own files do
    not say it was checked for objects. ``keep_negatives=True`` says the file's makers did check
    (Roboflow exports, hand-labelled sets): such an image becomes a ``no_objects`` record, which
    trains object detection to answer nothing. An image whose annotations were all dropped
    (crowd, bad boxes) is never a negative: it has objects.
    """
    return _instances(annotations, image_dir, crowd, keep_negatives, "coco-instances", report)


@checked_records
def convert_roboflow_coco(
    root: str | os.PathLike,
    *,
    splits: list[str] | None = None,
    report: SkipReport,
) -> list[Record]:
    """A Roboflow COCO export: ``train/``, ``valid/`` and ``test/`` under ``root``, each holding its images
    and ``_annotations.coco.json``; records of every split there is (or of ``splits``), ``source`` naming
    the split.

    Roboflow exports the images labelled as having no object with no annotation, so they are kept as
    negatives (``keep_negatives`` of :func:`convert_coco_instances`). Its category list starts with a
    "superclass" (id 0, named after the project, e.g. "cells") that no annotation uses: it gives no region
    and so no label. A split folder without the annotation file is left out; no split with one is a
    :class:`ConversionError`.
    """
    require_folder(root, f"a Roboflow COCO export ({', '.join(ROBOFLOW_SPLITS)} with {ROBOFLOW_ANNOTATIONS})")
    records: list[Record] = []
    found = False
    for split in splits or ROBOFLOW_SPLITS:
        annotations = os.path.join(root, split, ROBOFLOW_ANNOTATIONS)
        if os.path.isfile(annotations):
            found = True
            folder = os.path.join(root, split)
            records += _instances(annotations, folder, "skip", True, f"roboflow-coco-{split}", report)
    if not found:
        names = "/".join(splits or ROBOFLOW_SPLITS)
        raise ConversionError(root, f"has no {names}/{ROBOFLOW_ANNOTATIONS} (a Roboflow COCO export)")
    return records


def _instances(
    annotations: str | os.PathLike,
    image_dir: str | os.PathLike,
    crowd: CrowdPolicy,
    keep_negatives: bool,
    source: str,
    report: SkipReport,
) -> list[Record]:
    coco = CocoFile.read(annotations, categories=True)
    by_image = coco.by_image(report)
    records = []
    for image_id, image in coco.images.items():
        anns = by_image.get(image_id, [])
        if not anns and keep_negatives:
            records.append(image.record(image_dir, image_id, source, no_objects=True))
            continue
        regions = []
        for label, ann in anns:
            try:
                if is_crowd(ann) and crowd == "skip":
                    report.drop("crowd_region")
                    continue
                regions.append(coco_region(ann, coco.categories, image, report))
            except BadAnnotation as bad:
                report.drop(bad.reason, example=label)
        if not regions:
            report.drop("image_without_regions")
            continue
        records.append(image.record(image_dir, image_id, source, regions=regions))
    return records


@checked_records
def convert_coco_captions(
    captions: str | os.PathLike, image_dir: str | os.PathLike, *, report: SkipReport
) -> list[Record]:
    """One record per image of a COCO ``captions_*.json``; all captions are brief texts.
    A caption that is not a string is dropped as ``bad_caption``, a blank one as ``empty_caption``."""
    coco = CocoFile.read(captions, categories=False)
    texts_by_image = defaultdict(list)
    for image_id, anns in coco.by_image(report).items():
        for label, ann in anns:
            text = ann.get("caption")
            if not isinstance(text, str):
                report.drop("bad_caption", example=label)
            elif text.strip():
                texts_by_image[image_id].append(text.strip())
            else:
                report.drop("empty_caption")
    records = []
    for image_id, image in coco.images.items():
        texts = texts_by_image.get(image_id)
        if not texts:
            report.drop("image_without_captions")
            continue
        records.append(image.record(image_dir, image_id, "coco-captions", texts={"brief": texts}))
    return records


@checked_records
def convert_karpathy(
    dataset: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    splits: list[str] | None = None,
    report: SkipReport,
) -> list[Record]:
    """Karpathy's ``dataset_coco.json`` (also ``dataset_flickr30k.json``): captions per image with
    a ``split`` of train / restval / val / test, kept when in ``splits`` (all when None).

    The file stores no image sizes, so they are read from the image headers under
    ``image_dir/<filepath>/<filename>``; images that cannot be read are dropped and counted.
    Each image entry needs a ``filename`` and a ``sentences`` list (else a :class:`ConversionError`);
    a sentence whose ``raw`` is not a string is dropped as ``bad_caption``.
    """
    data = JsonFile(dataset)
    records = []
    for i, image in enumerate(data.entries(data.data, "images")):
        where = f"images[{i}]"
        if splits is not None and image.get("split") not in splits:
            continue
        name = os.path.join(
            data.string(image, "filepath", where, default=""), data.string(image, "filename", where)
        )
        sentences = data.entries(image, "sentences", where)
        path = image_path(image_dir, name)
        size = read_image_size(path)
        if size is None:
            report.drop("missing_image", example=path)
            continue
        raws = [s.get("raw") for s in sentences]
        report.drop("bad_caption", sum(not isinstance(raw, str) for raw in raws), example=where)
        texts = [raw.strip() for raw in raws if isinstance(raw, str) and raw.strip()]
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
                source=f"karpathy-{data.data.get('dataset', 'coco')}-{image.get('split')}",
                texts={"brief": texts},
            )
        )
    return records


def _image_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="folder holding the images")


def _instances_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations", help="instances_*.json")
    _image_dir_argument(parser)
    parser.add_argument("--crowd", choices=["skip", "keep"], default="skip", help="iscrowd regions")
    parser.add_argument(
        "--keep-negatives",
        dest="keep_negatives",
        action="store_true",
        help="images without annotations were checked and hold no object: keep them as negatives",
    )


def _roboflow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="the export's folder, holding train/ valid/ test/")
    parser.add_argument("--splits", nargs="+", default=None, help="e.g. train valid (default: all three)")


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
    Converter(
        "roboflow-coco",
        "Roboflow COCO export (train/ valid/ test/ with _annotations.coco.json), negatives kept",
        convert_roboflow_coco,
        _roboflow_arguments,
        splits=True,
    )
)
register_converter(
    Converter("coco-captions", "COCO captions json", convert_coco_captions, _captions_arguments)
)
register_converter(
    Converter(
        "karpathy",
        "Karpathy split file dataset_coco.json",
        convert_karpathy,
        _karpathy_arguments,
        splits=True,
    )
)
