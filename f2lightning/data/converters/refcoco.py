"""RefCOCO / RefCOCO+ / RefCOCOg: ``refs(unc).p`` / ``refs(umd).p`` pickles + ``instances.json``."""

from __future__ import annotations

import argparse
import os
import pickle
from collections import defaultdict
from typing import Any

from f2lightning.data.converters.base import (
    BadAnnotation,
    ConversionError,
    Converter,
    SkipReport,
    checked_records,
    register_converter,
)
from f2lightning.data.converters.coco import CocoFile, coco_region
from f2lightning.data.schema import Record


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds only lists, dicts, tuples, strings, bytes and numbers.

    A pickle can name any importable callable (``os.system``) and have it called while loading;
    every such reference goes through ``find_class``, which refuses all of them. The RefCOCO refs
    need none: they are lists of dicts of strings and integers."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refuses to load {module}.{name}: only plain lists, dicts, strings and numbers"
        )


def py2_text(value: Any) -> Any:
    """``value`` with every byte string decoded, in containers too (dict keys included).

    Python 2 wrote its ``str`` as bytes (the released pickles hold UTF-8 text in them);
    unpickled with ``encoding="bytes"`` they come back as ``bytes``, which are decoded as UTF-8,
    falling back to latin-1 (every byte string decodes) for text that is not UTF-8. Python 2
    ``unicode`` and Python 3 ``str`` already come back as ``str``."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, list | tuple):
        return type(value)(py2_text(v) for v in value)
    if isinstance(value, dict):
        return {py2_text(k): py2_text(v) for k, v in value.items()}
    return value


def load_refs(path: str | os.PathLike) -> list[dict]:
    """The refs pickle as a list of dicts, through :class:`PlainDataUnpickler`; anything else is a
    :class:`ConversionError` naming the file."""
    try:
        with open(path, "rb") as f:
            refs = py2_text(PlainDataUnpickler(f, encoding="bytes").load())
    except pickle.UnpicklingError as error:
        raise ConversionError(path, f"is not a plain-data RefCOCO refs pickle ({error})") from None
    except OSError as error:
        raise ConversionError(path, f"cannot be read ({error})") from None
    except Exception as error:  # a corrupt pickle fails in many ways (EOFError, KeyError, struct.error, ...)
        raise ConversionError(path, f"is not a readable pickle ({type(error).__name__}: {error})") from None
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ConversionError(path, "must hold a list of refs (dicts)")
    return refs


def ref_sentences(ref: dict, path: str | os.PathLike, where: str) -> list[str]:
    sentences = ref.get("sentences")
    if not isinstance(sentences, list) or not all(
        isinstance(s, dict) and isinstance(s.get("sent"), str) for s in sentences
    ):
        raise ConversionError(path, f"{where}.sentences must be a list of {{'sent': text, ...}}")
    return [s["sent"].strip() for s in sentences if s["sent"].strip()]


@checked_records
def convert_refcoco(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    splits: list[str] | None = None,
    source: str = "refcoco",
    report: SkipReport,
) -> list[Record]:
    """One record per image, one region per referred object, holding all its expressions.

    Only referred objects are annotated, so records are marked ``exhaustive=False`` (no OD /
    region-proposal targets from them). ``splits`` filters the refs' ``split`` (train, val,
    testA, testB, test); None keeps all. A ref without ``ann_id``, ``image_id`` or a
    ``sentences`` list is a :class:`ConversionError`; a referred annotation that cannot be a region
    is dropped by the reason the COCO converter uses (``bad_bbox``, ``unknown_category``, ...).
    """
    ref_list = load_refs(refs)
    coco = CocoFile.read(instances, categories=True)
    anns = {ann["id"]: (label, ann) for label, ann in coco.annotations if "id" in ann}

    expressions: dict[Any, dict[Any, list[str]]] = defaultdict(dict)  # image -> ann -> sentences
    for i, ref in enumerate(ref_list):
        where = f"refs[{i}]"
        if splits is not None and ref.get("split") not in splits:
            continue
        ann_id, image_id = ref.get("ann_id"), ref.get("image_id")
        if not all(isinstance(v, int | str) and not isinstance(v, bool) for v in (ann_id, image_id)):
            raise ConversionError(
                refs, f"{where} needs an integer ann_id and image_id, got {ann_id!r}, {image_id!r}"
            )
        sentences = ref_sentences(ref, refs, where)
        if ann_id not in anns or image_id not in coco.images:
            report.drop("ref_without_annotation", example=f"{where}: ann_id {ann_id!r}")
            continue
        expressions[image_id].setdefault(ann_id, []).extend(sentences)

    records = []
    for image_id, by_ann in expressions.items():
        image = coco.images[image_id]
        regions = []
        for ann_id, sentences in by_ann.items():
            label, ann = anns[ann_id]
            if not sentences:
                report.drop("ref_without_sentences", example=label)
                continue
            try:
                region = coco_region(ann, coco.categories, image, report)
            except BadAnnotation as bad:
                report.drop(bad.reason, example=label)
                continue
            region.referring = sentences
            regions.append(region)
        if regions:
            records.append(image.record(image_dir, image_id, source, regions=regions, exhaustive=False))
    return records


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("refs", help="refs(unc).p, refs(google).p or refs(umd).p")
    parser.add_argument("instances", help="the dataset's instances.json")
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="COCO train2014 images")
    parser.add_argument("--splits", nargs="+", default=None, help="e.g. train (default: all)")
    parser.add_argument("--source", default="refcoco", help="name stored in each record (refcoco+, refcocog)")


register_converter(
    Converter(
        "refcoco",
        "RefCOCO / RefCOCO+ / RefCOCOg refs pickle + instances.json",
        convert_refcoco,
        _arguments,
        splits=True,
    )
)
