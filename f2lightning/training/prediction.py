"""`python train.py predict -c CONFIG --ckpt_path=...`: the Lightning loop's answers, written as `f2lightning
predict` writes them (docs/inference.md), one JSONL file per rank in the run's log folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from f2lightning.data.skips import SkipReport


class PredictionWriter(BasePredictionWriter):
    """Appends each predict batch's lines (`Florence2LitModule.predict_step`) to `predictions.jsonl`
    (`predictions_rank<r>.jsonl` under DDP) as the batch finishes, and reports the images that could not be
    decoded and the result parts a record cannot hold (`predictions_report.json`)."""

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.skipped, self.dropped = SkipReport(), SkipReport()
        self.written = 0
        self.path: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = (
            "predictions.jsonl" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.jsonl"
        )
        self.path = folder / name
        self.path.write_text("")
        self.skipped, self.dropped, self.written = SkipReport(), SkipReport(), 0

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, batch_indices: Any,
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:  # fmt: skip
        with open(self.path, "a", encoding="utf-8") as f:
            for line in prediction["lines"]:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.written += len(prediction["lines"])
        for _, reason, message in prediction["skipped"]:
            self.skipped.drop(reason, example=message)
        for reason, count in prediction["dropped"].dropped.items():
            self.dropped.drop(
                reason, count, example=(prediction["dropped"].examples.get(reason) or [None])[0]
            )

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = {"written": self.written, "skipped_images": self.skipped.to_json(),
                  "dropped_annotations": self.dropped.to_json()}  # fmt: skip
        (self.path.parent / self.path.name.replace(".jsonl", "_report.json")).write_text(
            json.dumps(report, indent=2)
        )
        print(f"{self.path}: wrote {self.written} prediction(s); images: {self.skipped}; "
              f"record annotations: {self.dropped}")  # fmt: skip
