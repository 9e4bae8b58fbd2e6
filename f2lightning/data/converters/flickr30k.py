"""Flickr30k Entities: ``Sentences/<id>.txt`` phrase markup + ``Annotations/<id>.xml`` boxes."""

from __future__ import annotations

import argparse
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from f2lightning.data.converters.base import (
    ConversionReport,
    Converter,
    image_path,
    register_converter,
    with_report,
)
from f2lightning.data.geometry import clip_points
from f2lightning.data.schema import Grounding, Phrase, Record

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


def parse_boxes(xml_path: str | os.PathLike) -> tuple[str, int, int, dict[str, list[list[float]]]]:
    """``(filename, width, height, {entity_id: boxes})``. One ``<object>`` may name several
    entities; boxes are VOC-style 1-based inclusive pixels, turned into pixel extents."""
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    width, height = int(size.findtext("width")), int(size.findtext("height"))
    boxes: dict[str, list[list[float]]] = {}
    for obj in root.iter("object"):
        bndbox = obj.find("bndbox")
        if bndbox is None:  # <nobndbox> or <scene>: the entity has no region
            continue
        x0, y0, x1, y1 = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        box = clip_points([x0 - 1, y0 - 1, x1, y1], width, height)
        for name in obj.findall("name"):
            boxes.setdefault(name.text.strip(), []).append(box)
    return root.findtext("filename") or f"{Path(xml_path).stem}.jpg", width, height, boxes


def convert_flickr30k_entities(
    sentences_dir: str | os.PathLike,
    annotations_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    ids: list[str] | str | None = None,
    report: ConversionReport | None = None,
) -> list[Record]:
    """One record per image with a brief-text grounding per sentence. ``ids`` is a list of image
    ids or a split file (``train.txt``) with one id per line; None converts every annotation file.
    Phrases whose entity has no box (non-visual, scene) stay in the text but are not grounded."""
    report = with_report(report)
    if isinstance(ids, str | os.PathLike):
        ids = Path(ids).read_text(encoding="utf-8").split()
    if ids is None:
        ids = sorted(p.stem for p in Path(annotations_dir).glob("*.xml"))
    records = []
    for image_id in ids:
        filename, width, height, boxes = parse_boxes(Path(annotations_dir) / f"{image_id}.xml")
        groundings = []
        for line in (Path(sentences_dir) / f"{image_id}.txt").read_text(encoding="utf-8").splitlines():
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
    report.records += len(records)
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
