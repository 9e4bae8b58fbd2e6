"""The synthetic dataset: deterministic, geometrically right, and covering every task."""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from f2lightning.data.commands import register_cli
from f2lightning.data.expand import ALL_TASKS, expand
from f2lightning.data.records import read_records
from f2lightning.data.synthetic import MIN_IMAGE_SIZE, PALETTE, SyntheticConfig, make_synthetic, render_scene
from f2lightning.geometry import bounding_box, signed_area

# Every task of the paper; free-form instructions are the user's own prompts, which synthetic scenes do not invent.
SCENE_TASKS = set(ALL_TASKS) - {"<INSTRUCTION>"}


def digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_whatever_the_workers(tmp_path) -> None:
    make_synthetic(tmp_path / "a", 12, seed=3, workers=1)
    make_synthetic(tmp_path / "b", 12, seed=3, workers=2)
    make_synthetic(tmp_path / "c", 12, seed=4, workers=1)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    assert len(a) == 12 + 2


def test_splits_and_files(tmp_path) -> None:
    paths = make_synthetic(tmp_path, 20, seed=0, val_fraction=0.25)
    train, val = (
        read_records(paths["train"], check_images=True),
        read_records(paths["val"], check_images=True),
    )
    assert (len(train), len(val)) == (15, 5)
    assert {r.id for r in train}.isdisjoint(r.id for r in val)
    with Image.open(train[0].image) as image:
        assert image.size == (256, 256) and image.mode == "RGB"


@pytest.mark.parametrize(
    ("difficulty", "size"), [("easy", 256), ("hard", 256), ("easy", 64), ("hard", MIN_IMAGE_SIZE)]
)
def test_annotations_are_geometrically_right(difficulty: str, size: int) -> None:
    config = replace(SyntheticConfig.preset(difficulty), image_size=size)
    for index in range(30):
        image, record = render_scene(index, 0, config)
        pixels = np.asarray(image)
        assert record.regions, "every scene has a shape"
        for region in record.regions:
            x0, y0, x1, y1 = region.box
            assert 0 <= x0 < x1 <= record.width and 0 <= y0 < y1 <= record.height
            (polygon,) = region.polygons
            assert signed_area(polygon) > 0, "clockwise on screen"
            assert bounding_box(polygon) == region.box
            # the shape's colour is drawn at its centre
            color = region.phrase.split()[0]
            cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
            assert tuple(pixels[cy, cx]) == PALETTE[color]
        for line in record.ocr:
            q = line.quad
            assert all(0 <= v <= size for v in q)
            assert q[0] == min(q[0::2]) and q[1] == min(q[1::2]), "starts at the top-left"
            assert signed_area(q) > 0, "clockwise"
        for grounding in record.groundings:
            for phrase in grounding.phrases:
                assert grounding.phrase_text(phrase).lower().split()[-1] in {
                    "square",
                    "circle",
                    "triangle",
                    "rectangle",
                    "ellipse",
                }


def test_every_task_is_present() -> None:
    tasks = set()
    for index in range(10):
        tasks |= {s.task for s in expand(render_scene(index, 0)[1])}
    assert tasks == SCENE_TASKS


def test_answers_match_the_scene() -> None:
    _, record = render_scene(7, 1)
    answers = {q.question: q.answers[0] for q in record.vqa}
    assert answers["how many shapes are there?"] == str(len(record.regions))
    for kind in ("square", "circle", "triangle"):
        assert answers[f"how many {kind}s are there?"] == str(sum(r.category == kind for r in record.regions))


def make_synthetic_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["make-synthetic", *argv])
    return args.func(args)


def test_cli(tmp_path, capsys) -> None:
    make_synthetic_command(
        "-o",
        str(tmp_path),
        "--images",
        "6",
        "--seed",
        "2",
        "--format",
        "jpeg",
        "--image-size",
        "128",
        "--workers",
        "1",
    )
    assert "images/s" in capsys.readouterr().out
    records = read_records(tmp_path / "train.jsonl", check_images=True) + read_records(tmp_path / "val.jsonl")
    assert len(records) == 6 and records[0].image.endswith(".jpg") and records[0].width == 128


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown"):
        SyntheticConfig(shapes=("hexagon",))


def test_small_images_scale_the_text_down_and_keep_every_task(tmp_path) -> None:
    # 64 px used to fail inside numpy: a 22 px text line did not fit. Lines now use a smaller font (OCR
    # samples are among the tasks).
    make_synthetic_command("-o", str(tmp_path), "--images", "20", "--image-size", "64", "--workers", "1")
    records = read_records(tmp_path / "train.jsonl", check_images=True) + read_records(tmp_path / "val.jsonl")
    assert len(records) == 20 and {(r.width, r.height) for r in records} == {(64, 64)}
    with Image.open(records[0].image) as image:
        assert image.size == (64, 64)
    assert {s.task for r in records for s in expand(r)} == SCENE_TASKS


def test_image_size_below_the_minimum_is_refused_naming_the_option(tmp_path, capsys) -> None:
    assert (
        make_synthetic_command("-o", str(tmp_path), "--images", "2", "--image-size", "16", "--workers", "1")
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("f2lightning make-synthetic: error:") and "\n" not in error
    )  # one line, no traceback
    assert f"--image-size) must be at least {MIN_IMAGE_SIZE} pixels, got 16" in error
    assert not (tmp_path / "train.jsonl").exists()
    with pytest.raises(ValueError, match=rf"must be at least {MIN_IMAGE_SIZE} pixels"):
        SyntheticConfig(image_size=16)  # the Python API raises
