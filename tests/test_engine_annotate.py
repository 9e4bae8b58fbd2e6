"""`f2lightning annotate`: specialists add annotations with provenance, every human annotation survives the
merge, an interrupted run resumes to the same records, and the Ray backend gives the local backend's answers."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from f2lightning.cli import main
from f2lightning.data.records import read_records, write_records
from f2lightning.data.schema import Record, Region, source_of
from f2lightning.data.skips import SkipReport
from f2lightning.engine.annotate import Florence2Specialist, annotate, input_records, requests_for
from f2lightning.engine.merge import merge
from f2lightning.inference.generation import GenerationSettings
from tests.helpers.weights import tiny_checkpoint

FAST = GenerationSettings(batch_size=4, num_beams=1, max_new_tokens=24, num_workers=0, progress=False)
TASKS = ["<CAPTION>", "<OD>", "<CAPTION_TO_PHRASE_GROUNDING>", "<REGION_TO_SEGMENTATION>"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture
def human(tmp_path) -> Path:
    """Three labelled images (a caption, two boxes each) and two bare ones, as a record file."""
    records = []
    for i in range(5):
        Image.new("RGB", (64, 48), (40 * i, 200 - 30 * i, 90)).save(tmp_path / f"{i}.png")
        record = Record(f"{i}.png", 64, 48)
        if i < 3:
            record.texts = {"brief": ["a red car near a man"]}
            record.regions = [Region([2, 3, 30, 40], category="car"), Region([31, 4, 60, 44], category="man")]
        records.append(record)
    write_records(records, tmp_path / "human.jsonl")
    return tmp_path / "human.jsonl"


def _human_parts(record: Record) -> dict:
    """What a human wrote in a record: texts and regions without provenance (polygons may be added to boxes)."""
    return {
        "texts": {
            k: kept for k, v in record.texts.items() if (kept := [str(t) for t in v if source_of(t) is None])
        },
        "regions": [(r.box, r.category) for r in record.regions if source_of(r) is None],
    }


def test_specialists_add_sourced_annotations_and_keep_every_human_one(checkpoint, human, tmp_path) -> None:
    records = input_records([human], SkipReport())
    before = {r.image: _human_parts(r) for r in records}
    specialist = Florence2Specialist(str(checkpoint), TASKS, FAST, source="round0", image_size=64)
    _, skipped, _ = annotate(records, [specialist], tmp_path / "out.jsonl")
    written = read_records(tmp_path / "out.jsonl")
    assert len(written) == 5
    for record in written:
        assert _human_parts(record) == before[str(tmp_path / Path(record.image).name)]
        generated = [t for v in record.texts.values() for t in v if source_of(t)] + [
            r for r in record.regions if source_of(r)
        ]
        assert generated and all(source_of(a) == "round0" and 0 < a.score <= 1 for a in generated)
        for region in record.regions:  # every box was asked for its polygons; their provenance is their own
            assert not region.polygons or region.polygons_source == "round0"
    parts = sorted(p.name for p in (tmp_path / "out.jsonl.parts").iterdir())
    assert parts == ["round0_caption.jsonl", "round0_caption_to_phrase_grounding.jsonl", "round0_object_detection.jsonl",
                     "round0_region_to_segmentation.jsonl"]  # fmt: skip
    # Grounding asked each brief caption, the human one and the generated one; segmentation asked every box.
    grounding = (
        (tmp_path / "out.jsonl.parts" / "round0_caption_to_phrase_grounding.jsonl").read_text().splitlines()
    )
    assert len(grounding) == 3 + 5
    assert skipped.total == 0


def test_an_interrupted_annotation_resumes_to_the_same_records(checkpoint, human, tmp_path) -> None:
    specialist = Florence2Specialist(str(checkpoint), TASKS, FAST, source="round0", image_size=64)
    annotate(input_records([human], SkipReport()), [specialist], tmp_path / "whole.jsonl")
    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    # A run killed during OD: captions done, two OD answers and half a third written, nothing after.
    (parts / "round0_caption.jsonl").write_bytes(
        (tmp_path / "whole.jsonl.parts" / "round0_caption.jsonl").read_bytes()
    )
    od = (tmp_path / "whole.jsonl.parts" / "round0_object_detection.jsonl").read_text().splitlines()
    (parts / "round0_object_detection.jsonl").write_text("\n".join(od[:2]) + "\n" + od[2][:40])
    annotate(input_records([human], SkipReport()), [specialist], out)
    assert len((parts / "round0_object_detection.jsonl").read_text().splitlines()) == 5
    whole = [r.to_json() for r in read_records(tmp_path / "whole.jsonl")]
    resumed = [r.to_json() for r in read_records(out)]
    assert _without_scores(resumed) == _without_scores(whole)


def _without_scores(value):
    if isinstance(value, list):
        return [_without_scores(v) for v in value]
    if isinstance(value, dict):
        return {k: None if k.endswith("score") else _without_scores(v) for k, v in value.items()}
    return value


def test_merge_segments_a_region_once_and_extends_without_replacing() -> None:
    record = Record(
        "a.png", 64, 48, texts={"brief": ["a car"]}, regions=[Region([1, 1, 20, 20], category="car")]
    )
    generated = Record("a.png", 64, 48, regions=[Region([1, 1, 20, 20], polygons=[[1, 1, 20, 1, 20, 20]],
                                                        source="s", score=0.5)])  # fmt: skip
    report = SkipReport()
    merge(record, generated, "<REGION_TO_SEGMENTATION>", [1, 1, 20, 20], report)
    assert record.regions[0].polygons == [[1, 1, 20, 1, 20, 20]] and record.regions[0].source is None
    assert (record.regions[0].polygons_source, record.regions[0].polygons_score) == ("s", 0.5)
    merge(record, generated, "<REGION_TO_SEGMENTATION>", [1, 1, 20, 20], report)
    assert report.dropped["region_already_segmented"] == 1
    od = Record("a.png", 64, 48, regions=[Region([5, 5, 9, 9], category="man", source="s", score=0.9)])
    merge(record, od, "<OD>")
    assert [r.category for r in record.regions] == ["car", "man"] and record.texts == {"brief": ["a car"]}


def test_annotate_refuses_a_task_it_cannot_give_an_input() -> None:
    with pytest.raises(ValueError, match="cannot choose the input of"):
        requests_for("<VQA>", [Record("a.png", 4, 4)])


@pytest.mark.slow  # ~50 s: starting a Ray cluster and two actors on 2 cores
def test_the_ray_backend_gives_the_local_backends_answers(checkpoint, human, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    local = Florence2Specialist(str(checkpoint), ["<OD>", "<CAPTION>"], FAST, source="s", image_size=64)
    annotate(input_records([human], SkipReport()), [local], tmp_path / "local.jsonl")
    # One logical CPU more than the two actors take: Ray Data's read tasks need one too.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = replace(local, backend="ray", workers=2)
        annotate(input_records([human], SkipReport()), [remote], tmp_path / "ray.jsonl")
    finally:
        ray.shutdown()
    for name in ("s_object_detection.jsonl", "s_caption.jsonl"):
        lines = {}
        for run in ("local", "ray"):
            part = tmp_path / f"{run}.jsonl.parts" / name
            lines[run] = {json.loads(line)["key"]: json.loads(line) for line in part.read_text().splitlines()}
        assert lines["local"].keys() == lines["ray"].keys() and len(lines["local"]) == 5
        for key, line in lines["local"].items():
            assert _without_scores(line) == _without_scores(lines["ray"][key])
            assert line["score"] == pytest.approx(lines["ray"][key]["score"], rel=1e-5)
    local_records = _without_scores([r.to_json() for r in read_records(tmp_path / "local.jsonl")])
    assert local_records == _without_scores([r.to_json() for r in read_records(tmp_path / "ray.jsonl")])


def test_the_cli_annotates_images_and_records(checkpoint, human, tmp_path, capsys) -> None:
    out = tmp_path / "cli" / "out.jsonl"
    args = ["annotate", str(human), str(tmp_path / "4.png"), "-o", str(out), "--checkpoint", str(checkpoint),
            "--task", "caption", "--task", "<OD>", "--image-size", "64", "--num-beams", "1", "--max-new-tokens",
            "16", "--num-workers", "0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "annotate: wrote" in capsys.readouterr().out
    records = read_records(out)
    assert len(records) == 6 and all(Path(r.image).is_file() for r in records)  # paths relative to the output
    assert main(["annotate", str(human), "-o", str(out)]) == 2
    assert "no specialist" in capsys.readouterr().err
    assert (
        main(["annotate", str(human), "-o", str(out), "--checkpoint", str(checkpoint), "--task", "<VQA>"])
        == 2
    )
    assert "cannot choose the input of" in capsys.readouterr().err


@pytest.mark.slow  # ~50 s: building and running Mask R-CNN twice on 2 cores
@pytest.mark.downstream
def test_an_mmdetection_detector_annotates_through_mmdets_own_inference(human, tmp_path) -> None:
    """A (tiny, randomly initialised) Mask R-CNN of our MMDetection configs as the region specialist: its regions
    are mmdet's own detections above the threshold, named by the checkpoint's classes, with mask polygons."""
    pytest.importorskip("mmdet")
    from mmdet.apis import inference_detector, init_detector

    from f2lightning.engine.annotate import MMDetSpecialist
    from f2lightning.images import load_image
    from tests.test_downstream_configs import CONFIG_DIR, tiny_config

    cfg = tiny_config(CONFIG_DIR / "mmdet" / "mask-rcnn_florence2-davit-b_fpn_ms-1x_coco.py")
    cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=5)  # a random detector's scores are low
    cfg.dump(tmp_path / "detector.py")
    torch.manual_seed(0)
    detector = init_detector(str(tmp_path / "detector.py"), device="cpu")
    classes = [f"class{i}" for i in range(80)]
    torch.save({"state_dict": detector.state_dict(), "meta": {"dataset_meta": {"classes": classes}}},
               tmp_path / "detector.pth")  # fmt: skip
    specialist = MMDetSpecialist(
        str(tmp_path / "detector.py"), str(tmp_path / "detector.pth"), 0.0, source="dino"
    )
    records, skipped, _ = annotate(input_records([human], SkipReport()), [specialist], tmp_path / "out.jsonl")
    assert skipped.total == 0
    reference = init_detector(str(tmp_path / "detector.py"), str(tmp_path / "detector.pth"), device="cpu")
    for record in records:
        image = np.ascontiguousarray(np.asarray(load_image(record.image))[:, :, ::-1])
        expected = inference_detector(reference, image).pred_instances
        found = [r for r in record.regions if source_of(r) == "dino"]
        boxes = torch.tensor([r.box for r in found]).reshape(-1, 4)
        assert torch.allclose(boxes, expected.bboxes.clamp(min=0), atol=1e-4)
        assert [r.score for r in found] == pytest.approx(expected.scores.tolist(), abs=1e-6)
        assert [r.category for r in found] == [classes[i] for i in expected.labels.tolist()]
        assert all(len(p) >= 6 for r in found for p in r.polygons)
    for record in read_records(tmp_path / "out.jsonl"):  # what was written is a valid record file
        assert record.exhaustive
