"""Pieces for the kill-and-restart tests: a run config for `train.py fit -c`, and a callback that leaves a trail.

The trail survives SIGKILL: each finished batch appends one flushed line to `seen.rank<r>.jsonl`, and the
`step` marker file is replaced atomically, so the test knows how far the victim got before it was killed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
import yaml

from tests.helpers.training import MICRO, TASKS


class RecordBatches(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = json.dumps(
            {"step": trainer.global_step, "epoch": trainer.current_epoch, "index": batch.get("index", [])}
        )
        with open(self.out_dir / f"seen.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(line + "\n")
        if trainer.is_global_zero:
            marker = self.out_dir / "step"
            marker.with_suffix(".tmp").write_text(str(trainer.global_step))
            os.replace(marker.with_suffix(".tmp"), marker)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save(pl_module.model.state_dict(), self.out_dir / "final.pt")


def write_config(
    run: Path, data: Path, devices: int = 1, max_steps: int = 12, every: int = 3, epoch_length: int = 64
) -> Path:
    """A tiny CPU run whose checkpoints and trail all live in `run`; DDP halves the per-rank batch."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto",
            "max_steps": max_steps,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
            "deterministic": True,
            "default_root_dir": str(run),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run / "checkpoints"),
                        "every_n_train_steps": every,
                        "save_last": True,
                        "save_top_k": -1,
                    },
                },
                {"class_path": "tests.helpers.crash_train.RecordBatches", "init_args": {"out_dir": str(run)}},
            ],
        },
        "model": {
            "preset": "tiny",
            "config_overrides": json.loads(json.dumps(MICRO)),
            "lr": 2e-3,
            "warmup_steps": 2,
            "num_beams": 1,
            "log_predictions": 0,
        },
        "data": {
            "synthetic_dir": str(data),
            "synthetic_images": 40,
            "tokenizer_vocab_size": 600,
            "image_size": 64,
            "batch_size": 4 // devices,
            "epoch_length": epoch_length,
            "num_workers": 0,
            "tasks": TASKS,
            "val_samples_per_task": 4,
            "max_target_length": 512,
        },
    }
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_trail(path: Path) -> list[dict]:
    """The trail's entries; a last line cut by the kill is dropped."""
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries
