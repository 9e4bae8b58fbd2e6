"""Flickr30k Entities: ``Sentences/<id>.txt`` phrase markup + ``Annotations/<id>.xml`` boxes."""

from __future__ import annotations

import argparse
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from f2lightning.data.converters.base import (
    ConversionError,
    Converter,
    SkipReport,
    checked_records,
    image_path,
    read_text,
    register_converter,
    require_folder,
)
from f2lightning.data.schema import Grounding, Phrase, Record
from f2lightning.geometry import clip_points

# "[/EN#123/people/other A man]": entity id, its types, the phrase words.
_ENTITY = re.compile(r"\[/EN#(\d+)((?:/[^\s\]]+)*)\s+([^\]]*)\]")


def parse_sentence(line: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Plain text of a marked-up sentence and its ``(start, end, entity_id)`` phrase spans."""
    text, spans, last = [], [], 0
    length = 0
    for m in _ENTITY.finditer(line):
        plain = line[last : m.start()]
        text.append(plain)
        length += len(plain)
        words = m.group(3).strip()
        spans.append((length, length + len(words), m.group(1)))
        text.append(words)
        length += len(words)
        last = m.end()
    text.append(line[last:])
    return "".join(text).strip(), spans


def parse_boxes(
    xml_path: str | os.PathLike, report: SkipReport | None = None
) -> tuple[str, int, int, dict[str, list[list[float]]]]:
    """``(filename, width, height, {entity_id: boxes})``. One ``<object>`` may name several
    entities; boxes are VOC-style 1-based inclusive pixels, turned into pixel extents.

    An XML that does not parse, or lacks a positive ``<size>`` or numeric box corners, is a
    :class:`ConversionError` naming it; a box with no area left inside the image is dropped and
    counted as ``box_without_area`` (in ``report`` when given)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise ConversionError(xml_path, f"is not well-formed XML ({error})") from None
    width, height = (_xml_number(root, f"size/{k}", xml_path) for k in ("width", "height"))
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise ConversionError(xml_path, f"<size> must hold positive integers, got {width:g}x{height:g}")
    boxes: dict[str, list[list[float]]] = {}
    for obj in root.iter("object"):
        bndbox = obj.find("bndbox")
        if bndbox is None:  # <nobndbox> or <scene>: the entity has no region
            continue
        x0, y0, x1, y1 = (_xml_number(bndbox, k, xml_path) for k in ("xmin", "ymin", "xmax", "ymax"))
        box = clip_points([x0 - 1, y0 - 1, x1, y1], width, height)
        if not (box[2] > box[0] and box[3] > box[1]):
            if report is not None:
                report.drop("box_without_area", example=os.fspath(xml_path))
            continue
        for name in obj.findall("name"):
            boxes.setdefault((name.text or "").strip(), []).append(box)
    return root.findtext("filename") or f"{Path(xml_path).stem}.jpg", int(width), int(height), boxes


def _xml_number(element: ET.Element, path: str, xml_path: str | os.PathLike) -> float:
    text = element.findtext(path)
    try:
        value = float(text)  # type: ignore[arg-type]  (None is caught below)
    except (TypeError, ValueError):
        raise ConversionError(xml_path, f"<{path}> must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ConversionError(xml_path, f"<{path}> must be a finite number, got {text!r}")
    return value


@checked_records
def convert_flickr30k_entities(
    sentences_dir: str | os.PathLike,
    annotations_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    ids: list[str] | str | os.PathLike | None = None,
    report: SkipReport,
) -> list[Record]:
    """One record per image with a brief-text grounding per sentence. ``ids`` is a list of image
    ids or a split file (``train.txt``) with one id per line; None converts every annotation file.
    Phrases whose entity has no box (non-visual, scene) stay in the text but are not grounded.

    An image whose ``Annotations/<id>.xml`` or ``Sentences/<id>.txt`` is missing is dropped and
    counted as ``missing_annotation_file``, the files named in the report's examples: a split file
    can list an image that a partial download lacks, and the other images still convert. A file
    that is there but not in the format (XML that does not parse, text that is not UTF-8) is a
    :class:`ConversionError` naming it, as are missing folders and a missing split file."""
    require_folder(sentences_dir, "the Sentences/ folder")
    require_folder(annotations_dir, "the Annotations/ folder")
    if isinstance(ids, str | os.PathLike):
        ids = read_text(ids).split()
    if ids is None:
        ids = sorted(p.stem for p in Path(annotations_dir).glob("*.xml"))
    records = []
    for image_id in ids:
        xml_path, text_path = (
            Path(annotations_dir) / f"{image_id}.xml",
            Path(sentences_dir) / f"{image_id}.txt",
        )
        missing = [str(p) for p in (xml_path, text_path) if not p.is_file()]
        if missing:
            report.drop("missing_annotation_file", example=", ".join(missing))
            continue
        filename, width, height, boxes = parse_boxes(xml_path, report)
        groundings = []
        for line in read_text(text_path).splitlines():
            if not line.strip():
                continue
            text, spans = parse_sentence(line)
            phrases = []
            for start, end, entity in spans:
                if entity in boxes and end > start:
                    phrases.append(Phrase(span=(start, end), boxes=boxes[entity]))
                else:
                    report.drop("phrase_without_box")
            if phrases:
                groundings.append(Grounding(text=text, phrases=phrases, granularity="brief"))
            else:
                report.drop("sentence_without_grounded_phrase")
        if not groundings:
            report.drop("image_without_groundings")
            continue
        records.append(
            Record(
                image=image_path(image_dir, filename),
                width=width,
                height=height,
                id=str(image_id),
                source="flickr30k-entities",
                groundings=groundings,
            )
        )
    return records


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sentences_dir", help="Sentences/ folder")
    parser.add_argument("annotations_dir", help="Annotations/ folder")
    parser.add_argument("--image-dir", dest="image_dir", required=True, help="flickr30k-images/")
    parser.add_argument("--ids", default=None, help="split file (train.txt) with one image id per line")


register_converter(
    Converter(
        "flickr30k-entities",
        "Flickr30k Entities sentences + box annotations",
        convert_flickr30k_entities,
        _arguments,
    )
)
