"""Every converter on a small file written here in its public format, and the convert CLI."""

from __future__ import annotations

import argparse
import inspect
import io
import json
import pickle
import pickletools
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from f2lightning.cli import main
from f2lightning.data.commands import register_cli
from f2lightning.data.converters import CONVERTERS, ConversionError, get_converter
from f2lightning.data.converters.base import checked_records
from f2lightning.data.converters.coco import (
    coco_polygons,
    convert_coco_captions,
    convert_coco_instances,
    convert_karpathy,
    rle_string_counts,
)
from f2lightning.data.converters.flickr30k import convert_flickr30k_entities, parse_sentence
from f2lightning.data.converters.icdar import convert_icdar2015
from f2lightning.data.converters.refcoco import convert_refcoco
from f2lightning.data.converters.vizwiz import convert_vizwiz
from f2lightning.data.converters.vqa import convert_textcaps, convert_textvqa, convert_vqav2
from f2lightning.data.expand import expand, task_annotations
from f2lightning.data.records import read_records
from f2lightning.data.schema import Record, Region
from f2lightning.data.skips import SkipReport
from f2lightning.geometry import signed_area


def image(path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (9, 9, 9)).save(path)


def dump(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def valid(records: list[Record]) -> None:
    """Converter output passes the schema's own validation."""
    for r in records:
        assert Record.from_json(json.loads(r.to_json_line())) == r


def coco_instances(tmp_path) -> str:
    crowd = np.zeros((48, 64), dtype=np.uint8, order="F")
    crowd[20:40, 30:60] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode("ascii")
    return dump(
        tmp_path / "instances_val2017.json",
        {
            "images": [
                {"id": 1, "file_name": "000001.jpg", "width": 64, "height": 48},
                {"id": 2, "file_name": "000002.jpg", "width": 64, "height": 48},
            ],
            "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}, {"id": 1, "name": "person"}],
            "annotations": [
                {
                    "id": 10,
                    "image_id": 1,
                    "category_id": 18,
                    "iscrowd": 0,
                    "area": 100.0,
                    "bbox": [2.0, 3.0, 20.0, 10.0],
                    "segmentation": [[2, 3, 22, 3, 22, 13, 2, 13], [5, 5, 6, 6]],
                },
                # overshoots the border by rounding, as real COCO boxes do
                {
                    "id": 11,
                    "image_id": 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 50.0,
                    "bbox": [50.0, 30.0, 14.02, 18.1],
                    "segmentation": [[50, 30, 64.02, 30, 64.02, 48.1]],
                },
                {
                    "id": 12,
                    "image_id": 1,
                    "category_id": 1,
                    "iscrowd": 1,
                    "area": 600.0,
                    "bbox": [30.0, 20.0, 30.0, 20.0],
                    "segmentation": rle,
                },
                {
                    "id": 13,
                    "image_id": 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 0.0,
                    "bbox": [5.0, 5.0, 0.0, 3.0],
                    "segmentation": [[5, 5, 5, 8, 5, 6]],
                },
            ],
        },
    )


def test_coco_instances(tmp_path) -> None:
    report = SkipReport()
    records = convert_coco_instances(coco_instances(tmp_path), "images", report=report)
    valid(records)
    (r,) = records  # image 2 has no annotations
    assert (r.image, r.width, r.height, r.id, r.exhaustive) == ("images/000001.jpg", 64, 48, "1", True)
    assert [(g.category, g.box) for g in r.regions] == [("dog", [2, 3, 22, 13]), ("person", [50, 30, 64, 48])]
    assert r.regions[0].polygons == [[2, 3, 22, 3, 22, 13, 2, 13]]
    assert r.regions[1].polygons == [[50, 30, 64, 30, 64, 48]]
    assert report.dropped == {
        "crowd_region": 1,
        "box_without_area": 1,
        "image_without_regions": 1,
        "polygon_under_3_points": 1,
    }


def test_coco_crowd_rle_becomes_a_polygon(tmp_path) -> None:
    (r,) = convert_coco_instances(coco_instances(tmp_path), "images", crowd="keep")
    crowd = r.regions[2]
    assert crowd.box == [30, 20, 60, 40]
    assert crowd.polygons == [[30, 20, 60, 20, 60, 40, 30, 40]]


def test_coco_uncompressed_rle_polygon_covers_the_mask() -> None:
    mask = np.zeros((40, 50), dtype=np.uint8)
    yy, xx = np.mgrid[:40, :50]
    mask[(xx - 25) ** 2 + (yy - 20) ** 2 < 15**2] = 1
    counts, last, run = [], 0, 0
    for v in mask.flatten(order="F"):  # COCO's uncompressed RLE: column-major run lengths from 0
        if v != last:
            counts.append(run)
            last, run = v, 0
        run += 1
    counts.append(run)
    (polygon,) = coco_polygons({"size": [40, 50], "counts": counts}, 50, 40, SkipReport())
    assert signed_area(polygon) > 0
    drawn = mask_utils.decode(mask_utils.frPyObjects([polygon], 40, 50)).squeeze()
    iou = (drawn & mask).sum() / (drawn | mask).sum()
    assert iou > 0.9


def test_coco_captions(tmp_path) -> None:
    path = dump(
        tmp_path / "captions_val2017.json",
        {
            "images": [
                {"id": 5, "file_name": "5.jpg", "width": 64, "height": 48},
                {"id": 6, "file_name": "6.jpg", "width": 64, "height": 48},
            ],
            "annotations": [
                {"id": 1, "image_id": 5, "caption": "A dog runs. "},
                {"id": 2, "image_id": 5, "caption": "A brown dog."},
                {"id": 3, "image_id": 6, "caption": "  "},
            ],
        },
    )
    report = SkipReport()
    (r,) = convert_coco_captions(path, "coco", report=report)
    valid([r])
    assert r.texts == {"brief": ["A dog runs.", "A brown dog."]} and r.image == "coco/5.jpg"
    assert report.dropped == {"empty_caption": 1, "image_without_captions": 1}


def test_karpathy_splits(tmp_path) -> None:
    image(tmp_path / "coco" / "val2014" / "a.jpg", (40, 30))
    image(tmp_path / "coco" / "train2014" / "b.jpg")
    sentence = {"tokens": ["a", "cat"], "raw": "A cat.", "imgid": 0, "sentid": 0}
    path = dump(
        tmp_path / "dataset_coco.json",
        {
            "dataset": "coco",
            "images": [
                {
                    "filepath": "val2014",
                    "sentids": [0],
                    "filename": "a.jpg",
                    "imgid": 0,
                    "split": "restval",
                    "sentences": [sentence],
                    "cocoid": 11,
                },
                {
                    "filepath": "train2014",
                    "sentids": [1],
                    "filename": "b.jpg",
                    "imgid": 1,
                    "split": "test",
                    "sentences": [sentence],
                    "cocoid": 12,
                },
                {
                    "filepath": "val2014",
                    "sentids": [2],
                    "filename": "gone.jpg",
                    "imgid": 2,
                    "split": "train",
                    "sentences": [sentence],
                    "cocoid": 13,
                },
            ],
        },
    )
    report = SkipReport()
    records = convert_karpathy(path, tmp_path / "coco", splits=["train", "restval"], report=report)
    valid(records)
    assert [(r.id, r.width, r.height, r.texts["brief"]) for r in records] == [("11", 40, 30, ["A cat."])]
    assert records[0].source == "karpathy-coco-restval"
    assert report.dropped == {"missing_image": 1}
    assert len(convert_karpathy(path, tmp_path / "coco")) == 2


def test_refcoco(tmp_path) -> None:
    instances = dump(
        tmp_path / "instances.json",
        {
            "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [
                {
                    "id": 70,
                    "image_id": 7,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 10,
                    "bbox": [1, 2, 10, 20],
                    "segmentation": [[1, 2, 11, 2, 11, 22, 1, 22]],
                },
                {
                    "id": 71,
                    "image_id": 7,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 10,
                    "bbox": [30, 2, 10, 20],
                    "segmentation": [[30, 2, 40, 2, 40, 22]],
                },
            ],
        },
    )
    refs = [
        {
            "ref_id": 0,
            "ann_id": 70,
            "image_id": 7,
            "split": "train",
            "category_id": 1,
            "file_name": "COCO_train2014_000000000007_70.jpg",
            "sentences": [
                {"tokens": ["man", "left"], "raw": "Man left", "sent_id": 0, "sent": "man left"},
                {"tokens": ["guy"], "raw": "guy", "sent_id": 1, "sent": "guy"},
            ],
            "sent_ids": [0, 1],
        },
        {
            "ref_id": 1,
            "ann_id": 71,
            "image_id": 7,
            "split": "testA",
            "category_id": 1,
            "file_name": "COCO_train2014_000000000007_71.jpg",
            "sentences": [{"tokens": ["right"], "raw": "right", "sent_id": 2, "sent": "right"}],
            "sent_ids": [2],
        },
    ]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (r,) = convert_refcoco(tmp_path / "refs(unc).p", instances, "train2014", splits=["train"])
    valid([r])
    assert r.exhaustive is False and r.image == "train2014/COCO_train2014_000000000007.jpg"
    (region,) = r.regions
    assert (
        region.referring == ["man left", "guy"]
        and region.box == [1, 2, 11, 22]
        and region.category == "person"
    )
    tasks = {a.task for a in task_annotations(r)}
    assert "<REFERRING_EXPRESSION_SEGMENTATION>" in tasks and "<OD>" not in tasks
    assert len(convert_refcoco(tmp_path / "refs(unc).p", instances, "x")[0].regions) == 2


FLICKR_XML = """<annotation>
<filename>1000.jpg</filename>
<size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>18</name><name>20</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
<object><name>18</name><bndbox><xmin>40</xmin><ymin>5</ymin><xmax>64</xmax><ymax>48</ymax></bndbox></object>
<object><name>19</name><nobndbox>1</nobndbox></object>
<object><name>21</name><scene>1</scene></object>
</annotation>
"""


def test_flickr30k_entities(tmp_path) -> None:
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "1000.xml").write_text(FLICKR_XML)
    (tmp_path / "Sentences" / "1000.txt").write_text(
        "[/EN#18/people Two men] in [/EN#19/clothing hats] play on [/EN#21/scene the street] .\n"
        "[/EN#20/people/other A man] smiles .\n"
        "[/EN#0/notvisual Nobody] .\n"
    )
    (tmp_path / "train.txt").write_text("1000\n")
    report = SkipReport()
    (r,) = convert_flickr30k_entities(
        tmp_path / "Sentences",
        tmp_path / "Annotations",
        "flickr30k-images",
        ids=str(tmp_path / "train.txt"),
        report=report,
    )
    valid([r])
    assert (r.image, r.width, r.height) == ("flickr30k-images/1000.jpg", 64, 48)
    first, second = r.groundings
    assert first.text == "Two men in hats play on the street ."
    (men,) = first.phrases
    assert first.phrase_text(men) == "Two men" and men.boxes == [[0, 1, 30, 40], [39, 4, 64, 48]]
    assert second.phrase_text(second.phrases[0]) == "A man"
    assert report.dropped == {"phrase_without_box": 3, "sentence_without_grounded_phrase": 1}


def test_flickr_markup() -> None:
    text, spans = parse_sentence("[/EN#1/people A man] and [/EN#2/animals/other his dog]")
    assert text == "A man and his dog"
    assert [(text[a:b], e) for a, b, e in spans] == [("A man", "1"), ("his dog", "2")]


def test_vqav2(tmp_path) -> None:
    image(tmp_path / "train2014" / "COCO_train2014_000000000042.jpg", (50, 40))
    questions = dump(
        tmp_path / "q.json",
        {
            "data_subtype": "train2014",
            "questions": [
                {"image_id": 42, "question": "What color?", "question_id": 420},
                {"image_id": 42, "question": "How many?", "question_id": 421},
                {"image_id": 43, "question": "Where?", "question_id": 430},
            ],
        },
    )
    answers = [
        {"answer": a, "answer_confidence": "yes", "answer_id": i}
        for i, a in enumerate(["red", "red", "blue"])
    ]
    annotations = dump(
        tmp_path / "a.json",
        {
            "annotations": [
                {"question_id": 420, "image_id": 42, "answers": answers, "multiple_choice_answer": "red"},
                {"question_id": 421, "image_id": 42, "answers": [{"answer": "2", "answer_id": 1}]},
                {"question_id": 430, "image_id": 43, "answers": [{"answer": "here", "answer_id": 1}]},
            ]
        },
    )
    report = SkipReport()
    (r,) = convert_vqav2(questions, annotations, tmp_path / "train2014", report=report)
    valid([r])
    assert (r.width, r.height, [q.question for q in r.vqa]) == (50, 40, ["What color?", "How many?"])
    assert r.vqa[0].answers == ["red", "red", "blue"]
    assert report.dropped == {"missing_image": 1}


def test_textvqa_and_textcaps(tmp_path) -> None:
    textvqa = dump(
        tmp_path / "TextVQA_0.5.1_train.json",
        {
            "dataset_name": "textvqa",
            "data": [
                {
                    "question": "what brand?",
                    "image_id": "abc",
                    "image_width": 64,
                    "image_height": 48,
                    "answers": ["nike"] * 9 + ["adidas"],
                    "question_id": 1,
                    "set_name": "train",
                },
                {
                    "question": "what year?",
                    "image_id": "abc",
                    "image_width": 64,
                    "image_height": 48,
                    "answers": ["1999"],
                    "question_id": 2,
                    "set_name": "train",
                },
            ],
        },
    )
    (r,) = convert_textvqa(textvqa, "train_images")
    valid([r])
    assert r.image == "train_images/abc.jpg" and [q.question for q in r.vqa] == ["what brand?", "what year?"]

    textcaps = dump(
        tmp_path / "TextCaps_0.1_train.json",
        {
            "dataset_name": "textcaps",
            "data": [
                {
                    "image_id": "abc",
                    "image_width": 64,
                    "image_height": 48,
                    "image_path": "train/abc.jpg",
                    "caption_id": 1,
                    "caption_str": "A sign that says STOP.",
                },
                {
                    "image_id": "abc",
                    "image_width": 64,
                    "image_height": 48,
                    "image_path": "train/abc.jpg",
                    "caption_id": 2,
                    "caption_str": "A red sign.",
                },
                {"image_id": "def", "image_width": 64, "image_height": 48, "image_path": "test/def.jpg"},
            ],
        },
    )
    report = SkipReport()
    (r,) = convert_textcaps(textcaps, "textcaps", report=report)
    valid([r])
    assert r.image == "textcaps/train/abc.jpg" and r.texts == {
        "brief": ["A sign that says STOP.", "A red sign."]
    }
    assert report.dropped == {"entry_without_caption": 1}


def vizwiz_entry(name: str, question: str = "What is this?", answers: list[str] | None = None) -> dict:
    """One entry of VizWiz-VQA's ``Annotations/val.json`` as published (the test split has no ``answers``)."""
    entry = {"image": name, "question": question, "answerable": 1, "answer_type": "other"}
    if answers is not None:
        entry["answers"] = [{"answer": a, "answer_confidence": "yes"} for a in answers]
    return entry


def test_vizwiz(tmp_path) -> None:
    image(tmp_path / "val" / "VizWiz_val_00000000.jpg", (64, 48))
    annotations = dump(
        tmp_path / "val.json",
        [
            vizwiz_entry("VizWiz_val_00000000.jpg", "What is this?", ["a can", " a can ", "", "soda"]),
            vizwiz_entry("VizWiz_val_00000000.jpg", "  What colour?  ", ["red"] * 10),
            vizwiz_entry("VizWiz_val_00000000.jpg", "Is it cold?", []),
            vizwiz_entry("VizWiz_val_00000001.jpg", "Where am I?", ["unanswerable"]),
        ],
    )
    report = SkipReport()
    (r,) = convert_vizwiz(annotations, tmp_path / "val", report=report)
    valid([r])
    assert (r.id, r.source, r.width, r.height) == ("VizWiz_val_00000000.jpg", "vizwiz", 64, 48)
    assert [(q.question, q.answers) for q in r.vqa] == [
        ("What is this?", ["a can", "a can", "soda"]),
        ("What colour?", ["red"] * 10),
    ]
    assert report.records == 1
    assert report.dropped == {"question_without_answers": 1, "missing_image": 1}
    assert get_converter("vizwiz").convert is convert_vizwiz


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"questions": []}', "the top level must be a list, got a object"),
        (b"[7]", "[0] must be a JSON object, got a number"),
        (b'[{"question": "What is this?"}]', "[0] has no 'image'"),
        (b'[{"image": ""}]', "[0].image must be a non-empty string"),
        (b"[{", "cannot be read as JSON"),
    ],
    ids=["object", "entry a number", "no image", "empty image", "cut"],
)
def test_malformed_vizwiz_is_an_error_naming_the_file(tmp_path, content, message) -> None:
    path = tmp_path / "val.json"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=f"^{re.escape(str(path))}: {re.escape(message)}"):
        convert_vizwiz(path, tmp_path)
    with pytest.raises(ConversionError, match=r"absent\.json: cannot be read"):
        convert_vizwiz(tmp_path / "absent.json", tmp_path)


def test_icdar2015(tmp_path) -> None:
    image(tmp_path / "images" / "img_1.jpg", (100, 80))
    image(tmp_path / "images" / "img_2.jpg", (100, 80))
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "gt_img_1.txt").write_text(
        "\ufeff10,10,50,10,50,20,10,20,Genaxis Theatre\n"
        "60,40,60,50,95,50,95,40,1,000\n"  # counter-clockwise, comma in the text
        "1,1,5,1,5,5,1,5,###\n",
        encoding="utf-8",
    )
    (tmp_path / "gt" / "gt_img_2.txt").write_text("1,1,5,1,5,5,1,5,###\n", encoding="utf-8")
    report = SkipReport()
    (r,) = convert_icdar2015(tmp_path / "gt", tmp_path / "images", report=report)
    valid([r])
    assert [o.text for o in r.ocr] == ["Genaxis Theatre", "1,000"]
    assert r.ocr[0].quad == [10, 10, 50, 10, 50, 20, 10, 20]
    assert r.ocr[1].quad == [60, 40, 95, 40, 95, 50, 60, 50]
    assert report.dropped == {"dont_care_text": 2, "image_without_text": 1}


def test_registry() -> None:
    assert set(CONVERTERS) == {
        "coco-instances",
        "coco-captions",
        "karpathy",
        "refcoco",
        "flickr30k-entities",
        "vqav2",
        "textvqa",
        "textcaps",
        "icdar2015",
        "vizwiz",
        "maestro",
        "yolo",
        "roboflow-coco",
        "hf-parquet",
    }
    with pytest.raises(KeyError, match="unknown format"):
        get_converter("pascal")


def test_convert_cli_writes_paths_relative_to_the_output(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    annotations = coco_instances(tmp_path)
    image(tmp_path / "val2017" / "000001.jpg")
    out = tmp_path / "out" / "data.jsonl"
    args = parser.parse_args(
        [
            "convert",
            "coco-instances",
            annotations,
            "--image-dir",
            str(tmp_path / "val2017"),
            "--crowd",
            "keep",
            "-o",
            str(out),
        ]
    )
    args.func(args)
    assert "1 record(s)" in capsys.readouterr().out
    assert json.loads(out.read_text())["image"] == "../val2017/000001.jpg"
    (r,) = read_records(out, check_images=True)
    assert len(r.regions) == 3


# --------------------------------------------------------------------------- reports, malformed files


def test_report_lists_only_reasons_that_occurred(tmp_path) -> None:
    report = SkipReport()
    convert_coco_instances(coco_instances(tmp_path), "images", report=report)
    # Annotation 10 has a finite 4-number polygon dropped as too short; no polygon is non-finite,
    # so non_finite_polygon (dropped with n=0 by coco_polygons) must not be listed.
    assert "non_finite_polygon" not in report.dropped and ": 0" not in str(report)
    assert report.records == 1 and str(report) == (
        "dropped 4 (box_without_area: 1, crowd_region: 1, image_without_regions: 1, polygon_under_3_points: 1)"
    )


def test_every_registered_converter_is_schema_checked() -> None:
    assert all(hasattr(c.convert, "__wrapped__") for c in CONVERTERS.values())


def test_schema_invalid_records_are_counted_not_returned() -> None:
    good = Record(image="a.jpg", width=10, height=10, regions=[Region(box=[0, 0, 5, 5])])
    outside = Record(image="b.jpg", width=10, height=10, regions=[Region(box=[0, 0, 20, 5])])

    @checked_records
    def convert(*, report: SkipReport) -> list[Record]:
        return [good, outside]

    report = SkipReport()
    assert convert(report=report) == [good]
    assert report.records == 1 and report.dropped == {"invalid_record_box_outside_image": 1}
    (example,) = report.examples["invalid_record_box_outside_image"]
    assert example.startswith("b.jpg: regions[0].box")
    assert inspect.signature(convert).parameters["report"].default is None
    assert convert() == [good]  # the Python API without a report


def coco_file(categories: bool = True) -> dict:
    """A valid COCO instances file: one image, one good annotation (id 1)."""
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 64, "height": 48}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "bbox": [1, 1, 10, 10],
                "segmentation": [],
            }
        ],
    }
    if categories:
        data["categories"] = [{"id": 3, "name": "cat"}]
    return data


def bad_annotation(**fields) -> Callable[[dict], None]:
    """Adds annotation 2 (a copy of the good one with ``fields`` changed; None removes a field)."""

    def mutate(data: dict) -> None:
        ann = {**data["annotations"][0], "id": 2}
        for key, value in fields.items():
            if value is None:
                ann.pop(key)
            else:
                ann[key] = value
        data["annotations"].append(ann)

    return mutate


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def setter(path: str, value) -> Callable[[dict], None]:
    """Sets ``data[path]`` where path is e.g. ``images.0.width`` (a value of REMOVE deletes the key)."""

    def mutate(data: dict) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = data
        for key in parents:
            target = target[key]
        if value is REMOVE:
            del target[last]
        else:
            target[last] = value

    return mutate


REMOVE = object()
DUPLICATE_IMAGE = {"id": 1, "file_name": "again.jpg", "width": 64, "height": 48}

# Files that are not COCO instances: (what the message must say, change to the valid file).
MALFORMED_COCO = {
    "top-level list": ("the top level must be a JSON object, got a list", None),
    "missing images": ("the top level has no 'images'", setter("images", REMOVE)),
    "missing annotations": ("the top level has no 'annotations'", setter("annotations", REMOVE)),
    "missing categories": ("the top level has no 'categories'", setter("categories", REMOVE)),
    "images an object": ("images must be a list, got a object", setter("images", {"1": {}})),
    "image a number": ("images[0] must be a JSON object, got a number", setter("images.0", 7)),
    "image without id": ("images[0] has no 'id'", setter("images.0.id", REMOVE)),
    "image id a list": ("images[0].id must be an integer or a string", setter("images.0.id", [1])),
    "image without file_name": ("images[0] has no 'file_name'", setter("images.0.file_name", REMOVE)),
    "file_name a number": ("images[0].file_name must be a non-empty string", setter("images.0.file_name", 1)),
    "image without width": ("images[0] has no 'width'", setter("images.0.width", REMOVE)),
    "width a string": (
        "images[0].width must be a positive integer, got '64'",
        setter("images.0.width", "64"),
    ),
    "height zero": ("images[0].height must be a positive integer, got 0", setter("images.0.height", 0)),
    "duplicate image id": ("images[1] repeats id 1", lambda d: d["images"].append(DUPLICATE_IMAGE)),
    "category without name": ("categories[0] has no 'name'", setter("categories.0.name", REMOVE)),
    "category name null": (
        "categories[0].name must be a non-empty string",
        setter("categories.0.name", None),
    ),
    "annotation a list": ("annotations[0] must be a JSON object, got a list", setter("annotations.0", [1])),
    "annotation without image_id": (
        "annotations[0] has no 'image_id'",
        setter("annotations.0.image_id", REMOVE),
    ),
    "image_id an object": (
        "annotations[0].image_id must be an integer",
        setter("annotations.0.image_id", {}),
    ),
    "duplicate annotation id": (
        "annotations[1] repeats id 1",
        lambda d: d["annotations"].append(d["annotations"][0]),
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_COCO))
def test_malformed_coco_instances_is_an_error_naming_the_file(tmp_path, case) -> None:
    message, mutate = MALFORMED_COCO[case]
    data = coco_file()
    if mutate is None:
        data = [data]
    else:
        mutate(data)
    path = dump(tmp_path / "instances_bad.json", data)
    with pytest.raises(ConversionError, match=re.escape(message)) as error:
        convert_coco_instances(path, "images")
    assert str(error.value).startswith(f"{path}: ") and error.value.path == path


@pytest.mark.parametrize(
    "content",
    [b"", b'{"images": [', b"\xff\xfe{}", b'"just a string"'],
    ids=["empty", "cut", "utf16", "string"],
)
def test_coco_file_that_is_not_json_is_an_error_naming_the_file(tmp_path, content) -> None:
    path = tmp_path / "instances.json"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=f"^{re.escape(str(path))}: "):
        convert_coco_instances(path, "images")
    with pytest.raises(ConversionError, match=r"absent\.json: cannot be read as JSON"):
        convert_coco_instances(tmp_path / "absent.json", "images")


square = np.zeros((48, 64), dtype=bool)
square[10:20, 10:20] = True
tiny_rle = rle_of(np.ones((10, 10), dtype=bool))

# One bad annotation among good ones: (reason it is counted under, the bad annotation).
BAD_ANNOTATIONS = {
    "bbox missing": ("bad_bbox", bad_annotation(bbox=None)),
    "bbox a string": ("bad_bbox", bad_annotation(bbox="1,1,10,10")),
    "bbox of 3 numbers": ("bad_bbox", bad_annotation(bbox=[1, 1, 10])),
    "bbox with null": ("bad_bbox", bad_annotation(bbox=[1, None, 10, 10])),
    "bbox with a string": ("bad_bbox", bad_annotation(bbox=[1, "1", 10, 10])),
    "bbox NaN": ("bad_bbox", bad_annotation(bbox=[1, float("nan"), 10, 10])),
    "bbox of no area": ("box_without_area", bad_annotation(bbox=[1, 1, 0, 10])),
    "unknown category_id": ("unknown_category", bad_annotation(category_id=99)),
    "category_id missing": ("unknown_category", bad_annotation(category_id=None)),
    "category_id a list": ("unknown_category", bad_annotation(category_id=[3])),
    "iscrowd a string": ("bad_iscrowd", bad_annotation(iscrowd="1")),
    "segmentation a string": ("bad_segmentation", bad_annotation(segmentation="polygon")),
    "flat polygon list": ("bad_segmentation", bad_annotation(segmentation=[1, 1, 10, 1, 10, 10])),
    "polygon with a string": ("bad_segmentation", bad_annotation(segmentation=[[1, 1, "10", 1, 10, 10]])),
    "RLE without counts": ("bad_segmentation", bad_annotation(segmentation={"size": [48, 64]})),
    "RLE counts a number": ("bad_segmentation", bad_annotation(segmentation={"size": [48, 64], "counts": 5})),
    # 2 + 3 pixels of a 48 x 64 image: pycocotools would decode uninitialised memory.
    "RLE runs too short": (
        "bad_segmentation",
        bad_annotation(segmentation={"size": [48, 64], "counts": [2, 3]}),
    ),
    "RLE negative run": (
        "bad_segmentation",
        bad_annotation(segmentation={"size": [48, 64], "counts": [-1, 3073]}),
    ),
    "RLE string garbage": (
        "bad_segmentation",
        bad_annotation(segmentation={"size": [48, 64], "counts": "abc"}),
    ),
    "RLE string of another size": (
        "bad_segmentation",
        bad_annotation(segmentation={**tiny_rle, "size": [48, 64]}),
    ),
    "RLE size not the image's": ("bad_segmentation", bad_annotation(segmentation=tiny_rle)),
    "image_id not in images": ("annotation_without_image", bad_annotation(image_id=5)),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_one_bad_coco_annotation_is_a_counted_drop(tmp_path, case) -> None:
    reason, mutate = BAD_ANNOTATIONS[case]
    data = coco_file()
    mutate(data)
    report = SkipReport()
    (r,) = convert_coco_instances(
        dump(tmp_path / "instances.json", data), "images", crowd="keep", report=report
    )
    assert [g.box for g in r.regions] == [[1, 1, 11, 11]]  # only the good annotation 1
    assert report.dropped == {reason: 1} and report.records == 1
    assert report.examples[reason][0].startswith("annotation 2")


def test_valid_rle_strings_decode_to_the_masks_runs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((48, 64)) < rng.uniform(0.01, 0.99)
        flat = mask.flatten(order="F")  # COCO's runs: column-major, starting with a run of 0s
        changes = np.flatnonzero(np.diff(flat.astype(int))) + 1
        runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
        expected = runs if not flat[0] else [0, *runs]
        assert rle_string_counts(rle_of(mask)["counts"]) == expected
    (polygon,) = coco_polygons(rle_of(square), 64, 48, SkipReport())
    assert polygon == [10, 10, 20, 10, 20, 20, 10, 20]


def test_coco_captions_drops_and_errors(tmp_path) -> None:
    data = {
        "images": [{"id": 5, "file_name": "5.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 5, "caption": "A dog."},
            {"id": 2, "image_id": 5, "caption": 7},  # bad_caption
            {"id": 3, "image_id": 5},  # bad_caption
            {"id": 4, "image_id": 9, "caption": "No such image."},  # annotation_without_image
        ],
    }
    report = SkipReport()
    (r,) = convert_coco_captions(dump(tmp_path / "captions.json", data), "coco", report=report)
    assert r.texts == {"brief": ["A dog."]}
    assert report.dropped == {"bad_caption": 2, "annotation_without_image": 1}
    assert report.examples["annotation_without_image"] == ["annotation 4: image_id 9"]
    data["annotations"].append({"id": 1, "image_id": 5, "caption": "Twice."})
    with pytest.raises(ConversionError, match=r"captions\.json: annotations\[4\] repeats id 1"):
        convert_coco_captions(dump(tmp_path / "captions.json", data), "coco")
    with pytest.raises(ConversionError, match="the top level must be a JSON object, got a list"):
        convert_coco_captions(dump(tmp_path / "captions.json", [data]), "coco")


def convert_args(tmp_path, fmt: str) -> list[str]:
    """Command-line inputs of each converter, all pointing at one file that is not in any format."""
    bad = dump(tmp_path / "bad.json", [1, 2])
    (tmp_path / "bad.p").write_bytes(pickle.dumps({"not": "refs"}, protocol=2))
    folder = tmp_path / "folder"
    folder.mkdir(exist_ok=True)
    return {
        "coco-instances": [bad, "--image-dir", "x"],
        "coco-captions": [bad, "--image-dir", "x"],
        "karpathy": [bad, "--image-dir", "x"],
        "vqav2": [bad, bad, "--image-dir", "x"],
        "textvqa": [bad, "--image-dir", "x"],
        "textcaps": [bad, "--image-dir", "x"],
        "vizwiz": [bad, "--image-dir", "x"],
        "refcoco": [str(tmp_path / "bad.p"), bad, "--image-dir", "x"],
        "flickr30k-entities": [
            str(folder),
            str(folder),
            "--image-dir",
            "x",
            "--ids",
            str(tmp_path / "no_ids.txt"),
        ],
        "icdar2015": [str(folder), "--image-dir", "x"],
        "maestro": [str(folder)],
        "yolo": [bad],
        "roboflow-coco": ["--root", str(folder)],
        "hf-parquet": [bad, "--question-column", "question"],
    }[fmt]


@pytest.mark.parametrize("fmt", sorted(CONVERTERS))
def test_convert_cli_fails_with_one_line_naming_the_file(tmp_path, capsys, fmt) -> None:
    out = tmp_path / "out.jsonl"
    status = main(["convert", fmt, *convert_args(tmp_path, fmt), "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 2 and not out.exists()
    (line,) = captured.err.strip().splitlines()
    assert (
        line.startswith(f"f2lightning convert {fmt}: error: {tmp_path}") and "Traceback" not in captured.err
    )


# One file of each other format that is not that format, and the message it must give.
def not_the_format(tmp_path) -> dict[str, tuple[Callable[[], object], str]]:
    top_list = dump(tmp_path / "list.json", [])
    no_data = dump(tmp_path / "nodata.json", {"dataset_name": "textvqa"})
    questions = dump(tmp_path / "q.json", {"questions": [{"question_id": 1, "question": "Why?"}]})
    answers = dump(tmp_path / "a.json", {"annotations": [{"question_id": 1, "answers": []}]})
    width = {
        "data": [{"image_id": "a", "image_width": "64", "image_height": 48, "question": "q", "answers": []}]
    }
    karpathy = dump(tmp_path / "karpathy.json", {"images": [{"filename": "a.jpg", "sentences": "A cat."}]})
    return {
        "karpathy top-level list": (lambda: convert_karpathy(top_list, "x"), "got a list"),
        "karpathy sentences a string": (
            lambda: convert_karpathy(karpathy, "x"),
            "images[0].sentences must be a list",
        ),
        "vqav2 questions without image_id": (
            lambda: convert_vqav2(questions, answers, "x"),
            "q.json: questions[0] has no 'image_id'",
        ),
        "vqav2 annotations a list": (
            lambda: convert_vqav2(questions, top_list, "x"),
            "list.json: the top level",
        ),
        "textvqa without data": (
            lambda: convert_textvqa(no_data, "x"),
            "nodata.json: the top level has no 'data'",
        ),
        "textvqa width a string": (
            lambda: convert_textvqa(dump(tmp_path / "w.json", width), "x"),
            "data[0].image_width must be a positive integer",
        ),
        "textcaps top-level list": (lambda: convert_textcaps(top_list, "x"), "list.json: the top level"),
        "icdar folder missing": (lambda: convert_icdar2015(tmp_path / "gone", "x"), "gone: is not a folder"),
    }


OTHER_FORMAT_CASES = [
    "karpathy top-level list",
    "karpathy sentences a string",
    "vqav2 questions without image_id",
    "vqav2 annotations a list",
    "textvqa without data",
    "textvqa width a string",
    "textcaps top-level list",
    "icdar folder missing",
]


@pytest.mark.parametrize("case", OTHER_FORMAT_CASES)
def test_other_formats_not_in_their_format_are_errors_naming_the_file(tmp_path, case) -> None:
    cases = not_the_format(tmp_path)
    assert sorted(cases) == sorted(OTHER_FORMAT_CASES)
    convert, message = cases[case]
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert()


def test_karpathy_sentence_without_text_is_counted(tmp_path) -> None:
    image(tmp_path / "coco" / "a.jpg")
    sentences = [{"raw": "A cat."}, {"raw": None}, {"tokens": ["a"]}]
    path = dump(tmp_path / "dataset_coco.json", {"images": [{"filename": "a.jpg", "sentences": sentences}]})
    report = SkipReport()
    (r,) = convert_karpathy(path, tmp_path / "coco", report=report)
    assert r.texts == {"brief": ["A cat."]} and report.dropped == {"bad_caption": 2}


def test_convert_cli_logs_named_examples_of_drops(tmp_path, capsys, caplog) -> None:
    data = coco_file()
    bad_annotation(image_id=5)(data)
    out = tmp_path / "out.jsonl"
    with caplog.at_level("WARNING"):
        status = main(
            ["convert", "coco-instances", dump(tmp_path / "i.json", data), "--image-dir", "x", "-o", str(out)]
        )
    assert status == 0 and len(read_records(out)) == 1
    assert "1 record(s); dropped 1 (annotation_without_image: 1)" in capsys.readouterr().out
    assert "dropped 1 annotation_without_image, e.g. annotation 2: image_id 5" in caplog.text


def test_vqa_questions_that_cannot_be_used_are_counted(tmp_path) -> None:
    image(tmp_path / "img" / "COCO_val2014_000000000001.jpg")
    questions = [
        {"question_id": i, "image_id": 1, "question": q} for i, q in enumerate(["Why?", "  ", 5, "Who?"])
    ]
    answer = [{"answer": "yes", "answer_id": 1}]
    answers = [{"question_id": i, "answers": answer} for i in range(3)] + [
        {"question_id": 3, "answers": "yes"}
    ]
    report = SkipReport()
    (r,) = convert_vqav2(
        dump(tmp_path / "q.json", {"data_subtype": "val2014", "questions": questions}),
        dump(tmp_path / "a.json", {"annotations": answers}),
        tmp_path / "img",
        report=report,
    )
    assert [q.question for q in r.vqa] == ["Why?"]
    # question 1 is blank, 2 is a number, 3's answers are a string instead of a list: one reason each
    assert report.dropped == {"empty_question": 1, "bad_question": 1, "bad_answers": 1}


def test_icdar_bad_lines_and_files_name_the_file(tmp_path) -> None:
    image(tmp_path / "images" / "img_1.jpg", (100, 80))
    (tmp_path / "gt").mkdir()
    with pytest.raises(ConversionError, match="holds no gt_"):
        convert_icdar2015(tmp_path / "gt", tmp_path / "images")
    gt = tmp_path / "gt" / "gt_img_1.txt"
    gt.write_text("10,10,50,10,50,20,10,20,ok\n1,1,nan,1,5,5,1,5,NaN corner\n", encoding="utf-8")
    with pytest.raises(ConversionError, match=re.escape(f"{gt}:2: coordinates must be finite")):
        convert_icdar2015(tmp_path / "gt", tmp_path / "images")
    gt.write_bytes(b"10,10,50,10,50,20,10,20,caf\xe9\n")  # latin-1, not UTF-8
    with pytest.raises(ConversionError, match=re.escape(f"{gt}: cannot be read as utf-8-sig text")):
        convert_icdar2015(tmp_path / "gt", tmp_path / "images")


def test_flickr30k_missing_files_are_counted_per_image_and_named(tmp_path) -> None:
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "1000.xml").write_text(FLICKR_XML)
    (tmp_path / "Sentences" / "1000.txt").write_text("[/EN#18/people Two men] walk .\n")
    (tmp_path / "Sentences" / "2000.txt").write_text("[/EN#1/people A man] .\n")  # its XML is missing
    (tmp_path / "Annotations" / "3000.xml").write_text(FLICKR_XML)  # its sentences are missing
    report = SkipReport()
    ids = ["1000", "2000", "3000"]
    (r,) = convert_flickr30k_entities(
        tmp_path / "Sentences", tmp_path / "Annotations", "img", ids=ids, report=report
    )
    assert r.id == "1000"
    assert report.dropped == {"missing_annotation_file": 2}
    assert report.examples["missing_annotation_file"] == [
        str(tmp_path / "Annotations" / "2000.xml"),
        str(tmp_path / "Sentences" / "3000.txt"),
    ]


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><size><width>64</width>", "is not well-formed XML"),
        ("<annotation><filename>a.jpg</filename></annotation>", "<size/width> must be a number, got None"),
        (FLICKR_XML.replace("<xmin>1</xmin>", "<xmin>left</xmin>"), "<xmin> must be a number, got 'left'"),
        (
            FLICKR_XML.replace("<height>48</height>", "<height>0</height>"),
            "<size> must hold positive integers",
        ),
    ],
    ids=["cut", "no-size", "xmin-word", "zero-height"],
)
def test_flickr30k_malformed_xml_is_an_error_naming_it(tmp_path, xml, message) -> None:
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "1000.xml").write_text(xml)
    (tmp_path / "Sentences" / "1000.txt").write_text("[/EN#18/people Two men] walk .\n")
    with pytest.raises(
        ConversionError, match=f"^{re.escape(str(tmp_path / 'Annotations' / '1000.xml'))}: "
    ) as e:
        convert_flickr30k_entities(tmp_path / "Sentences", tmp_path / "Annotations", "img")
    assert message in str(e.value)


# --------------------------------------------------------------------------- RefCOCO's pickles


class Payload:
    """Unpickling this calls ``exec``, which creates ``marker``: a pickle that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def refcoco_instances(tmp_path) -> str:
    return dump(
        tmp_path / "instances.json",
        {
            "images": [{"id": 7, "file_name": "7.jpg", "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [
                {"id": 70, "image_id": 7, "category_id": 1, "bbox": [1, 2, 10, 20], "segmentation": []}
            ],
        },
    )


def test_refcoco_pickle_with_code_does_not_run_it(tmp_path) -> None:
    live = tmp_path / "ran_when_loaded_plainly"
    pickle.loads(pickle.dumps([Payload(live)], protocol=2))  # the payload is real: plain pickle runs it
    assert live.exists()

    marker = tmp_path / "marker"
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps([{"ann_id": 70, "image_id": 7, "sentences": Payload(marker)}], protocol=2))
    with pytest.raises(
        ConversionError, match=rf"^{re.escape(str(refs))}: .*refuses to load (__builtin__|builtins)\.exec"
    ):
        convert_refcoco(refs, refcoco_instances(tmp_path), "img")
    assert not marker.exists()


def test_refcoco_pickles_that_are_not_refs_are_errors_naming_the_file(tmp_path) -> None:
    instances = refcoco_instances(tmp_path)
    refs = tmp_path / "refs.p"
    cases = {
        pickle.dumps([{"ann_id": 70, "image_id": 7}], protocol=2)[:-5]: "is not a readable pickle",
        b"not a pickle at all": "is not a plain-data RefCOCO refs pickle (invalid load key",
        pickle.dumps({"refs": []}, protocol=2): "must hold a list of refs",
        pickle.dumps([{"image_id": 7, "sentences": []}], protocol=2): "refs[0] needs an integer ann_id",
        pickle.dumps([{"ann_id": 70, "image_id": 7, "sentences": "man"}], protocol=2): "refs[0].sentences",
    }
    for data, message in cases.items():
        refs.write_bytes(data)
        with pytest.raises(ConversionError, match=f"^{re.escape(str(refs))}: .*{re.escape(message)}"):
            convert_refcoco(refs, instances, "img")


class Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` the way Python 2 wrote its ``str``: SHORT_BINSTRING / BINSTRING opcodes
    (Python 3 would write a call to ``_codecs.encode`` instead)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_bytes(value):
    """Every ``str`` as UTF-8 bytes, as Python 2 code holding UTF-8 text in ``str`` had it."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [py2_bytes(v) for v in value]
    if isinstance(value, dict):
        return {py2_bytes(k): py2_bytes(v) for k, v in value.items()}
    return value


def test_refcoco_python2_pickle_decodes_utf8_text(tmp_path) -> None:
    long_raw = "the man in the café " * 20  # over 255 bytes: BINSTRING rather than SHORT_BINSTRING
    sentences = [
        {"tokens": ["café", "left"], "raw": long_raw, "sent_id": 0, "sent": "man in the café"},
        {"tokens": ["crème"], "raw": "Crème brûlée", "sent_id": 1, "sent": "crème brûlée"},
    ]
    refs = py2_bytes([{"ref_id": 0, "ann_id": 70, "image_id": 7, "split": "train", "category_id": 1,
                       "sentences": sentences, "sent_ids": [0, 1]}])  # fmt: skip
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(refs)
    data = buffer.getvalue()
    opcodes = {op.name for op, _, _ in pickletools.genops(data)}
    assert {"PROTO", "SHORT_BINSTRING", "BINSTRING"} <= opcodes
    assert not opcodes & {"BINUNICODE", "SHORT_BINUNICODE", "GLOBAL", "STACK_GLOBAL", "REDUCE"}
    # The bug this reproduces: reading Python 2 str as latin-1 turns UTF-8 'é' into 'Ã©'.
    assert pickle.loads(data, encoding="latin1")[0]["sentences"][0]["sent"] == "man in the cafÃ©"

    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    (r,) = convert_refcoco(path, refcoco_instances(tmp_path), "img", splits=["train"])
    assert r.regions[0].referring == ["man in the café", "crème brûlée"]

    # A Python 2 str that is not UTF-8 (latin-1 bytes) still decodes, byte for byte.
    refs[0][b"sentences"][0][b"sent"] = "naïve".encode("latin-1")
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(refs)
    path.write_bytes(buffer.getvalue())
    (r,) = convert_refcoco(path, refcoco_instances(tmp_path), "img")
    assert r.regions[0].referring == ["naïve", "crème brûlée"]


def test_duplicate_annotation_ids_are_an_error_because_pycocotools_keeps_one(tmp_path) -> None:
    from pycocotools.coco import COCO

    data = coco_file()
    data["annotations"].append({**data["annotations"][0], "bbox": [30, 30, 5, 5]})
    path = dump(tmp_path / "instances.json", data)
    coco = COCO(path)  # the reason for the error: its id index silently keeps only the second copy
    assert len(coco.anns) == 1 and len(coco.imgToAnns[1]) == 2 and coco.anns[1]["bbox"] == [30, 30, 5, 5]
    with pytest.raises(ConversionError, match=re.escape(f"{path}: annotations[1] repeats id 1")):
        convert_coco_instances(path, "images")


def test_each_converter_declares_its_files_and_folders_by_annotation():
    import argparse

    from f2lightning.data.converters import CONVERTERS, path_parameters

    assert path_parameters(get_converter("coco-instances").convert) == {"annotations", "image_dir"}
    assert path_parameters(get_converter("flickr30k-entities").convert) == {
        "sentences_dir",
        "annotations_dir",
        "image_dir",
        "ids",
    }
    for name, converter in CONVERTERS.items():
        parser = argparse.ArgumentParser()
        converter.add_arguments(parser)
        dests = {action.dest for action in parser._actions}
        # Every path parameter is also a command-line argument, and `splits` is declared where it exists.
        assert path_parameters(converter.convert) <= dests, name
        assert converter.splits == ("splits" in dests), name


def test_the_readme_names_every_registered_format():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [name for name in CONVERTERS if f"`{name}`" not in readme] == []


def test_maestro_jsonl_becomes_records_with_pixel_boxes_and_counted_clamps(tmp_path) -> None:
    from f2lightning.data.converters.maestro import convert_maestro

    for split in ("train", "valid"):
        (tmp_path / split).mkdir()
        Image.new("RGB", (200, 100)).save(tmp_path / split / "a.jpg")
    lines = [
        {"image": "a.jpg", "prefix": "<OD>", "suffix": "car<loc_100><loc_200><loc_500><loc_1000>dog<loc_0><loc_0><loc_10><loc_10>"},
        {"image": "a.jpg", "prefix": "<CAPTION>", "suffix": "A car and a dog."},
        {"image": "a.jpg", "prefix": "<DocVQA>What is written?", "suffix": "nothing"},
        {"image": "gone.jpg", "prefix": "<CAPTION>", "suffix": "A lost image."},
    ]  # fmt: skip
    (tmp_path / "train" / "annotations.jsonl").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\n"
    )
    (tmp_path / "valid" / "annotations.jsonl").write_text(json.dumps(lines[1]) + "\n")
    report = SkipReport()
    records = convert_maestro(tmp_path, report=report)
    assert [r.source for r in records] == ["maestro-train", "maestro-valid"]
    train = records[0]
    assert train.texts == {"brief": ["A car and a dog."]}
    assert [r.category for r in train.regions] == ["car", "dog"]
    # Bin centres in pixels of the 200x100 image; <loc_1000> (the bottom edge) is clamped onto the border.
    assert train.regions[0].box == pytest.approx([20.1, 20.05, 100.1, 100.0])
    assert train.regions[1].box == pytest.approx([0.1, 0.05, 2.1, 1.05])
    assert report.dropped == {"location_clamped": 1, "unsupported_prefix_DocVQA": 1, "missing_image": 1}
    assert len(convert_maestro(tmp_path, splits=["valid"], report=SkipReport())) == 1
    (tmp_path / "train" / "annotations.jsonl").write_text('{"image": "a.jpg", "prefix": "<OD>"}\n')
    with pytest.raises(
        ConversionError, match=r"annotations\.jsonl: line 1 must be an object with string image"
    ):
        convert_maestro(tmp_path, report=SkipReport())


def test_yolo_folders_become_pixel_boxes_and_polygons_with_counted_drops(tmp_path) -> None:
    from f2lightning.data.converters.yolo import convert_yolo

    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(tmp_path / "images/train/a.jpg")
    Image.new("RGB", (200, 100)).save(tmp_path / "images/train/empty.jpg")
    Image.new("RGB", (50, 50)).save(tmp_path / "images/val/b.png")
    (tmp_path / "labels/train/a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.3\n7 0.5 0.5 0.1 0.1\n"
    )
    (tmp_path / "labels/val/b.txt").write_text("1 0.5 0.5 1.2 0.2\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    report = SkipReport()
    records = convert_yolo(tmp_path / "data.yaml", report=report)
    assert [(r.id, r.source) for r in records] == [("a", "yolo-train"), ("b", "yolo-val")]
    cat, dog = records[0].regions
    assert (cat.category, cat.box) == ("cat", pytest.approx([80.0, 30.0, 120.0, 70.0]))
    assert dog.category == "dog" and dog.polygons == [pytest.approx([20.0, 10.0, 60.0, 10.0, 60.0, 30.0])]
    assert dog.box == pytest.approx([20.0, 10.0, 60.0, 30.0])
    assert records[1].regions[0].box == pytest.approx(
        [0.0, 20.0, 50.0, 30.0]
    )  # 1.2 wide: clipped to the image
    assert report.dropped == {"bad_label_line": 1, "image_without_objects": 1, "location_clamped": 1}
    assert [r.id for r in convert_yolo(tmp_path / "data.yaml", splits=["val"], report=SkipReport())] == ["b"]
    (tmp_path / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(ConversionError, match=r"data\.yaml: has no `names`"):
        convert_yolo(tmp_path / "data.yaml", report=SkipReport())


# --------------------------------------------------------------------------- Roboflow COCO: negatives kept
def test_coco_instances_keeps_unannotated_images_as_negatives_only_when_asked(tmp_path) -> None:
    report = SkipReport()
    positive, negative = convert_coco_instances(
        coco_instances(tmp_path), "images", keep_negatives=True, report=report
    )
    assert (negative.id, negative.no_objects, negative.regions) == ("2", True, [])
    assert not positive.no_objects and "image_without_regions" not in report.dropped
    valid([positive, negative])
    assert [r.id for r in convert_coco_instances(coco_instances(tmp_path), "images")] == [
        "1"
    ]  # COCO's default


def roboflow_export(root: Path) -> Path:
    """A Roboflow "COCO JSON" export as its zip unpacks: a folder per split holding the images and
    `_annotations.coco.json`, category 0 the project's superclass that no annotation uses."""
    categories = [
        {"id": 0, "name": "cells", "supercategory": "none"},
        {"id": 1, "name": "Platelets", "supercategory": "cells"},
        {"id": 2, "name": "RBC", "supercategory": "cells"},
    ]
    splits = {
        "train": (["a_jpg.rf.1f.jpg", "b_jpg.rf.2e.jpg"], [
            {"id": 0, "image_id": 0, "category_id": 1, "bbox": [2, 3, 20, 10], "area": 200, "segmentation": [],
             "iscrowd": 0},
            {"id": 1, "image_id": 0, "category_id": 2, "bbox": [30, 20, 10, 10], "area": 100,
             "segmentation": [], "iscrowd": 0},
        ]),
        "valid": (["c_jpg.rf.3d.jpg"], []),  # labelled "null" in Roboflow: checked, nothing there
        # its only box has no area: the image had an object, so it is no negative
        "test": (["d_jpg.rf.4c.jpg"], [
            {"id": 0, "image_id": 0, "category_id": 2, "bbox": [5, 5, 0, 3], "area": 0, "segmentation": [],
             "iscrowd": 0},
        ]),
    }  # fmt: skip
    for split, (names, anns) in splits.items():
        for name in names:
            image(root / split / name)
        dump(root / split / "_annotations.coco.json", {
            "info": {"year": "2024", "version": "3", "description": "Exported from roboflow.com"},
            "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}],
            "categories": categories,
            "images": [{"id": i, "license": 1, "file_name": name, "height": 48, "width": 64,
                        "date_captured": "2024-01-01T00:00:00+00:00"} for i, name in enumerate(names)],
            "annotations": anns,
        })  # fmt: skip
    return root


def test_roboflow_coco_reads_every_split_and_keeps_its_negatives(tmp_path) -> None:
    from f2lightning.data.converters.coco import convert_roboflow_coco

    root = roboflow_export(tmp_path / "export")
    report = SkipReport()
    records = convert_roboflow_coco(root, report=report)
    valid(records)
    assert [(r.source, Path(r.image).name, r.no_objects) for r in records] == [
        ("roboflow-coco-train", "a_jpg.rf.1f.jpg", False),
        ("roboflow-coco-train", "b_jpg.rf.2e.jpg", True),
        ("roboflow-coco-valid", "c_jpg.rf.3d.jpg", True),
    ]
    assert [r.category for r in records[0].regions] == ["Platelets", "RBC"]  # the superclass labels nothing
    assert report.dropped == {"box_without_area": 1, "image_without_regions": 1}
    targets = {s.task: s.target for s in expand(records[2])}
    assert targets == {"<OD>": "", "<REGION_PROPOSAL>": ""}
    assert [r.source for r in convert_roboflow_coco(root, splits=["valid"])] == ["roboflow-coco-valid"]
    with pytest.raises(ConversionError, match=r"export: has no missing/_annotations\.coco\.json"):
        convert_roboflow_coco(root, splits=["missing"])


def test_roboflow_coco_command_writes_negatives_that_read_back_with_their_flag(tmp_path, capsys) -> None:
    root = roboflow_export(tmp_path / "export")
    out = tmp_path / "out" / "train.jsonl"
    assert main(["convert", "roboflow-coco", "--root", str(root), "-o", str(out)]) == 0
    assert "3 record(s)" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line.get("no_objects", False) for line in lines] == [False, True, True]
    assert lines[2]["image"] == "../export/valid/c_jpg.rf.3d.jpg"
    negatives = [r for r in read_records(out, check_images=True) if r.no_objects]
    assert [a.annotation for r in negatives for a in task_annotations(r, ["<OD>"])] == [
        {"bboxes": [], "labels": []}
    ] * 2


# --------------------------------------------------------------------------- Hugging Face parquet / arrow
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # what datasets.Image() stores


def png(size=(64, 48), colour=(9, 9, 9)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def docvqa_parquet(path: Path) -> Path:
    """DocVQA as the Hub serves it: a row per question, the page's image repeated in each."""
    page, other = png(), png((32, 40), (200, 0, 0))
    table = pa.table({
        "questionId": [1, 2, 3, 4, 5],
        "question": ["What is the total?", "What is the date?", "Who signed?", "What is it?", "Why?"],
        "answers": [["12.50", "$12.50"], ["2024-03-01"], ["J. Doe"], [], ["no reason"]],
        "image": [{"bytes": page, "path": "p1.png"}, {"bytes": page, "path": "p1.png"},
                  {"bytes": other, "path": "p2.png"}, {"bytes": other, "path": "p2.png"},
                  {"bytes": b"\x89PNG broken", "path": "p3.png"}],
    }, schema=pa.schema([("questionId", pa.int64()), ("question", pa.string()),
                         ("answers", pa.list_(pa.string())), ("image", IMAGE_TYPE)]))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_hf_parquet_questions_become_one_record_per_page_with_the_images_written_out(tmp_path) -> None:
    from f2lightning.data.converters.hf_parquet import convert_hf_parquet

    data = docvqa_parquet(tmp_path / "docvqa" / "validation-00000-of-00001.parquet")
    report = SkipReport()
    records = convert_hf_parquet(
        [data], tmp_path / "out" / "images", question_column="question", report=report
    )
    valid(records)
    page, other = records
    assert [(q.question, q.answers) for q in page.vqa] == [
        ("What is the total?", ["12.50", "$12.50"]),
        ("What is the date?", ["2024-03-01"]),
    ]
    assert [q.question for q in other.vqa] == ["Who signed?"] and (other.width, other.height) == (32, 40)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(
        [Path(page.image).name, Path(other.image).name]
    )  # one file per distinct image, its bytes unchanged
    assert Path(page.image).read_bytes() == png() and Path(page.image).suffix == ".png"
    assert report.dropped == {
        "question_without_answers": 1,
        "row_without_annotations": 1,
        "undecodable_image": 1,
    }
    (example,) = report.examples["undecodable_image"]
    assert example.startswith(f"{data}: row 4: cannot decode image")
    assert report.examples["question_without_answers"] == [f"{data}: row 3"]


def test_hf_parquet_command_puts_the_images_beside_the_output(tmp_path, capsys) -> None:
    data = docvqa_parquet(tmp_path / "docvqa" / "val.parquet")
    out = tmp_path / "out" / "docvqa_val.jsonl"
    status = main(
        ["convert", "hf-parquet", str(tmp_path / "docvqa"), "--question-column", "question", "-o", str(out)]
    )
    assert status == 0 and "2 record(s)" in capsys.readouterr().out
    records = read_records(out, check_images=True)
    assert all(Path(r.image).parent == tmp_path / "out" / "images" for r in records)
    assert json.loads(out.read_text().splitlines()[0])["image"].startswith("images/")
    assert data.is_file()


def detection_schema(objects: pa.DataType, names: list[str] | None) -> pa.Schema:
    schema = pa.schema([("image", IMAGE_TYPE), ("objects", objects)])
    if names is None:
        return schema
    # What datasets writes for
    # Features({"image": Image(), "objects": Sequence({"bbox": ..., "category": ClassLabel(names=...)})})
    features = {"image": {"_type": "Image"}, "objects": {"_type": "Sequence", "feature": {
        "bbox": {"_type": "Sequence", "feature": {"dtype": "float32", "_type": "Value"}, "length": 4},
        "category": {"names": names, "_type": "ClassLabel"},
    }}}  # fmt: skip
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def test_hf_arrow_stream_objects_become_exhaustive_regions_and_empty_lists_negatives(tmp_path) -> None:
    from f2lightning.data.converters.hf_parquet import convert_hf_parquet

    # datasets' Sequence of {bbox, category} is stored as a struct of lists; categories are ClassLabel ids.
    objects = pa.struct([("bbox", pa.list_(pa.list_(pa.float32(), 4))), ("category", pa.list_(pa.int64()))])
    rows = {
        "image": [{"bytes": png(), "path": None}, {"bytes": png(colour=(1, 2, 3)), "path": None},
                  {"bytes": png(colour=(4, 5, 6)), "path": None}, {"bytes": None, "path": "gone.png"},
                  {"bytes": png(), "path": None}],
        "objects": [{"bbox": [[2, 3, 20, 10], [50, 40, 20, 20]], "category": [0, 1]},
                    {"bbox": [], "category": []},
                    {"bbox": [[1, 1, 5, 5], [1, 1, 0, 4]], "category": [7, 0]},
                    {"bbox": [], "category": []},
                    {"bbox": [[1, 1, 5, 5]], "category": [0]}],
    }  # fmt: skip
    path, plain = tmp_path / "cache-0123.arrow", tmp_path / "plain" / "data-00000-of-00001.arrow"
    plain.parent.mkdir()
    for file, names in ((path, ["person", "car"]), (plain, None)):
        schema = detection_schema(objects, names)
        with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:  # datasets' cache
            writer.write_table(pa.table(rows, schema=schema))
    report = SkipReport()
    records = convert_hf_parquet(
        path,
        tmp_path / "images",
        objects_column="objects",
        bbox_format="xywh",
        keep_negatives=True,
        report=report,
    )
    valid(records)
    first, negative = records  # the third image lost its two boxes: it has objects, so it is no negative
    assert [(r.category, r.box) for r in first.regions] == [
        ("person", [2, 3, 22, 13]), ("car", [50, 40, 64, 48]),  # clamped onto the 64x48 border
    ]  # fmt: skip
    assert first.exhaustive and negative.no_objects and negative.regions == []
    assert report.dropped == {
        "location_clamped": 1, "unknown_category": 1, "box_without_area": 1, "missing_image": 1,
        "repeated_image_objects": 1, "row_without_annotations": 2,  # rows 2 and 4 are left with nothing
    }  # fmt: skip
    assert report.examples["missing_image"] == [f"{path}: row 3: {tmp_path / 'gone.png'} not found"]
    assert report.examples["unknown_category"] == [f"{path}: row 2, object 0"]
    without_names = convert_hf_parquet(
        plain.parent, tmp_path / "images", objects_column="objects", bbox_format="xywh"
    )
    assert [r.category for r in without_names[0].regions] == ["0", "1"]  # no ClassLabel names in the file
    assert not any(r.no_objects for r in without_names)  # empty lists are negatives only when asked


def test_hf_parquet_lists_of_objects_captions_and_image_paths(tmp_path) -> None:
    from f2lightning.data.converters.hf_parquet import convert_hf_parquet

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "local.png").write_bytes(png((20, 10)))
    objects = pa.list_(pa.struct([("bbox", pa.list_(pa.float64())), ("category", pa.string())]))
    table = pa.table({
        # The second image (bytes null, a path relative to the file) is what datasets caches for a local folder.
        "image": [{"bytes": png(), "path": None}, {"bytes": None, "path": "photos/local.png"}],
        "caption": [["A dog.", " "], ["A tiny photo."]],
        "objects": [[{"bbox": [2, 3, 22, 13], "category": "dog"}, {"bbox": [1, 2, 3], "category": "x"},
                     {"bbox": [2, 2, 9, 9], "category": "a<b"}], None],
    }, schema=pa.schema([("image", IMAGE_TYPE), ("caption", pa.list_(pa.string())),
                         ("objects", objects)]))  # fmt: skip
    path = tmp_path / "train.arrow"
    with (
        pa.OSFile(str(path), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):  # Arrow's file format
        writer.write_table(table)
    report = SkipReport()
    dog, local = convert_hf_parquet(
        path, tmp_path / "images", caption_column="caption", objects_column="objects", report=report
    )
    assert dog.texts == {"brief": ["A dog."]} and [(r.category, r.box) for r in dog.regions] == [
        ("dog", [2, 3, 22, 13])
    ]
    assert local.texts == {"brief": ["A tiny photo."]} and (local.width, local.height) == (20, 10)
    assert not local.regions and not local.no_objects  # a null objects value says nothing
    assert report.dropped == {"empty_caption": 1, "bad_bbox": 1, "bad_category": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"question_column": "query"}, "has no column 'query' (--question-column); its columns: questionId, "
         "question, answers, image"),
        ({"question_column": "question", "answers_column": "answer"},
         "has no column 'answer' (--answers-column)"),
        ({"question_column": "question", "image_column": "questionId"},
         "column 'questionId' holds int64, not images"),
        ({}, "name the columns that hold annotations (--question-column, --caption-column, --objects-column); "
         "its columns: questionId"),
    ],
    ids=["question", "answers", "image-type", "no-annotations"],
)  # fmt: skip
def test_hf_parquet_columns_that_do_not_fit_are_errors_listing_the_files_columns(tmp_path, options, message):
    from f2lightning.data.converters.hf_parquet import convert_hf_parquet

    data = docvqa_parquet(tmp_path / "d.parquet")
    with pytest.raises(ConversionError) as info:
        convert_hf_parquet(data, tmp_path / "images", **options)
    assert str(info.value).startswith(f"{data}: {message}")
    assert not (tmp_path / "images").exists()


def test_hf_files_that_are_not_parquet_or_arrow_are_errors_naming_them(tmp_path) -> None:
    from f2lightning.data.converters.hf_parquet import convert_hf_parquet

    (tmp_path / "x.arrow").write_bytes(b"not arrow")
    with pytest.raises(ConversionError, match=r"x\.arrow: cannot be read as Arrow"):
        convert_hf_parquet(tmp_path / "x.arrow", tmp_path / "images", caption_column="c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"empty: holds no \.parquet or \.arrow file"):
        convert_hf_parquet(tmp_path / "empty", tmp_path / "images", caption_column="c")
