"""The demo's results table reads every metric validation logs, per-task or not, with the image-blind prior beside each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from f2lightning.demo import results_table


def test_results_table_keeps_task_metrics_and_leaves_out_run_wide_counts():
    before = {"val/OD/box_recall@0.5": 0.0, "val/loss": 7.0, "val/skipped_images": 0.0}
    after = {"val/OD/box_recall@0.5": 0.25, "val/loss": 1.5, "val/skipped_images": 2.0}
    prior = {"OD/box_recall@0.5": 0.05}
    rows = results_table(before, after, prior).splitlines()
    assert "| OD | box_recall@0.5 | 0.000 | 0.050 | 0.250 |" in rows
    assert rows[-1] == "| all | loss | 7.000 | | 1.500 |"
    assert not [row for row in rows if "skipped" in row]


def test_the_demo_config_ships_in_the_wheel(tmp_path):
    # `python -m f2lightning.demo` from an installed wheel: the config must come from the package, not the checkout.
    repo, source = (
        Path(__file__).resolve().parents[1],
        tmp_path / "source",
    )  # built from a copy: no build/ here
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source)
    for name in ("f2lightning", "downstream"):
        shutil.copytree(repo / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("f2lightning-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    script = (
        "from f2lightning.demo import CONFIG; from f2lightning.training.cli import main; "
        "cli = main(['-c', str(CONFIG)], run=False); print(CONFIG, cli.trainer.max_steps)"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    config, max_steps = out.stdout.split()[-2:]
    assert Path(config).is_relative_to(tmp_path / "site") and int(max_steps) > 0


def test_the_demo_runs_end_to_end_on_a_small_budget(tmp_path, monkeypatch):
    # `make demo` as written, with the data, steps and validation shrunk: every file it promises is written.
    from f2lightning.demo import main

    monkeypatch.chdir(tmp_path)  # the config's relative runs/demo and data/synthetic land here
    small = ["--data.synthetic_images=40", "--trainer.max_steps=3", "--model.hold_encoders_steps=1",
             "--data.val_samples_per_task=2", "--trainer.val_check_interval=3", "--data.num_workers=0"]  # fmt: skip
    assert main(small) == 0
    run = tmp_path / "runs/demo"
    rows = (run / "results.md").read_text().splitlines()
    assert rows[0] == "| task | metric | untrained | image-blind prior | trained |"
    assert any(row.startswith("| OD | box_recall@0.5 |") for row in rows)
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"untrained", "image_blind_prior", "trained"}
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json"} <= {
        p.name for p in (run / "model").iterdir()
    }
    assert list(run.glob("logs/version_*/predictions/step000003/od_*.png"))
