"""Every converter on a small file written here in its public format, and the convert CLI."""

from __future__ import annotations

import argparse
import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from f2lightning.data.commands import register_cli
from f2lightning.data.converters import CONVERTERS, ConversionReport, get_converter
from f2lightning.data.converters.coco import convert_coco_captions, convert_coco_instances, convert_karpathy
from f2lightning.data.converters.flickr30k import convert_flickr30k_entities, parse_sentence
from f2lightning.data.converters.icdar import convert_icdar2015
from f2lightning.data.converters.refcoco import convert_refcoco
from f2lightning.data.converters.vqa import convert_textcaps, convert_textvqa, convert_vqav2
from f2lightning.data.expand import task_annotations
from f2lightning.data.geometry import signed_area
from f2lightning.data.records import read_records
from f2lightning.data.schema import Record


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
    report = ConversionReport()
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
    from f2lightning.data.converters.coco import coco_polygons

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
    (polygon,) = coco_polygons({"size": [40, 50], "counts": counts}, 50, 40, ConversionReport())
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
    report = ConversionReport()
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
    report = ConversionReport()
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
    report = ConversionReport()
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
    report = ConversionReport()
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
    report = ConversionReport()
    (r,) = convert_textcaps(textcaps, "textcaps", report=report)
    valid([r])
    assert r.image == "textcaps/train/abc.jpg" and r.texts == {
        "brief": ["A sign that says STOP.", "A red sign."]
    }
    assert report.dropped == {"entry_without_caption": 1}


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
    report = ConversionReport()
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
