"""`f2lightning refine`: rounds train, annotate with the previous round's model, filter, merge and test, each in
its own folder; a finished run re-run does nothing and an interrupted round continues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from f2lightning.cli import main
from f2lightning.data.records import read_records, write_records
from f2lightning.data.schema import source_of
from f2lightning.engine.refine import RefineConfig, refine
from tests.helpers import training as helpers


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    helpers.datamodule(path).prepare_data()
    return path


def _config(synthetic: Path, tmp_path: Path) -> Path:
    records = read_records(synthetic / "train.jsonl")
    write_records(records[:8], tmp_path / "labelled.jsonl")
    train = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 2, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "limit_test_batches": 2, "enable_progress_bar": False},
        "model": {"preset": "tiny", "config_overrides": {"text": {"max_position_embeddings": 512}},
                  "val_max_new_tokens": 8, "num_beams": 1, "warmup_steps": 1, "log_predictions": 0},
        "data": {"synthetic_dir": str(synthetic), "image_size": 64, "batch_size": 2, "num_workers": 0,
                 "tasks": ["<CAPTION>", "<OD>"], "max_target_length": 256, "val_batch_size": 2},
    }  # fmt: skip
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    config = {
        "work_dir": str(tmp_path / "refine"),
        "rounds": 2,
        "labelled": [str(tmp_path / "labelled.jsonl")],
        "unlabelled": [r.image for r in records[8:12]],
        "train": {"config": str(tmp_path / "train.yaml"), "continue": True},
        "annotate": {"tasks": ["<OD>", "<CAPTION>"],
                     "generation": {"batch_size": 4, "num_beams": 1, "max_new_tokens": 16, "num_workers": 0,
                                    "progress": False}},
        "filter": {"regions": {"min_score": 0.0, "nms_iou": 0.7}},
    }  # fmt: skip
    (tmp_path / "refine.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "refine.yaml"


def test_rounds_train_annotate_filter_merge_and_resume(synthetic, tmp_path, capsys) -> None:
    path = _config(synthetic, tmp_path)
    assert main(["refine", "-c", str(path)]) == 0
    assert "round 1: " in capsys.readouterr().out
    work = tmp_path / "refine"
    for k in (0, 1):
        folder = work / f"round_{k}"
        assert (folder / "model" / "model.safetensors").is_file()
        assert "test/loss" in json.loads((folder / "metrics.json").read_text())
    assert not (work / "round_0" / "annotated.jsonl").exists()  # round 0 trains on the labelled records only
    records = read_records(work / "round_1" / "records.jsonl")
    labelled = read_records(tmp_path / "labelled.jsonl")
    assert len(records) == len(labelled) + 4
    for human, kept in zip(labelled, records, strict=False):  # the labelled records first, untouched
        assert kept.to_json() | {"image": ""} == human.to_json() | {"image": ""}
    # Round 0's model (2 steps) answers, if at all, briefly: whatever it wrote is round 0's, and every unlabelled
    # image was asked both tasks; empty answers are counted, not silently lost.
    generated = [t for r in records[8:] for texts in r.texts.values() for t in texts]
    generated += [region for r in records[8:] for region in r.regions]
    assert all(source_of(a) == "round0" for a in generated)
    parts = work / "round_1" / "annotated.jsonl.parts"
    assert [len(p.read_text().splitlines()) for p in sorted(parts.iterdir())] == [4, 4]
    report = json.loads((work / "round_1" / "filter_report.json").read_text())
    assert set(report) == {"filtered", "skipped_images", "dropped_answers"}
    empty = [
        line for line in (parts / "round0_caption.jsonl").read_text().splitlines() if '"text": "</s>"' in line
    ]
    assert report["dropped_answers"]["dropped"].get("empty_answer", 0) == len(empty)

    # A finished run re-run trains nothing; a round cut short before its test continues from its checkpoint.
    stamp = (work / "round_0" / "metrics.json").stat().st_mtime_ns
    (work / "round_1" / "metrics.json").unlink()
    metrics = refine(RefineConfig.load(path))
    assert (work / "round_0" / "metrics.json").stat().st_mtime_ns == stamp and len(metrics) == 2
    assert (work / "round_1" / "metrics.json").is_file()


def test_a_bad_refine_config_is_refused_before_any_training(tmp_path, capsys) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"work_dir": "w", "labelled": [], "unlabelled": [],
                                                       "train": {"config": "t.yaml"},
                                                       "annotate": {"tasks": ["<VQA>"]}}))  # fmt: skip
    assert main(["refine", "-c", str(tmp_path / "bad.yaml")]) == 2
    assert "cannot choose the input of" in capsys.readouterr().err
    (tmp_path / "typo.yaml").write_text("work_dir: w\nround: 2\n")
    assert main(["refine", "-c", str(tmp_path / "typo.yaml")]) == 2
    assert "unknown keys ['round']" in capsys.readouterr().err
