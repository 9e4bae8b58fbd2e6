"""`f2lightning refine -c CONFIG`: rounds of iterative data refinement (paper §4.2.3).

Round 0 trains on the labelled records. Round k > 0 annotates the unlabelled images with round k-1's model,
filters what it wrote, merges it with the labelled records and trains again (from round k-1's weights with
`train.continue: true`, else from the training config's own start). Every round is tested on the training
config's validation files. Each round lives in `work_dir/round_<k>/`:

    annotated.jsonl (+ .parts/)  what the previous model wrote about the unlabelled images
    records.jsonl                the round's training records: labelled + filtered annotations
    filter_report.json           what the filters dropped, by reason
    train/                       the LightningCLI run (checkpoints; an interrupted round resumes from them)
    model/                       the trained model, transformers-native, for the next round's annotation
    metrics.json                 the round's test metrics

A round with `metrics.json` is done and is skipped when the command runs again; an interrupted round continues:
annotation from its parts, training from its newest checkpoint.

The config (YAML)::

    work_dir: runs/refine
    rounds: 2
    labelled: [data/labelled.jsonl]            # human records
    unlabelled: [data/unlabelled.jsonl]        # images, folders, globs or records for the specialists
    train:
      config: configs/demo.yaml                # LightningCLI config of every round's training
      args: [--trainer.max_steps=1500]         # more LightningCLI arguments
      continue: true                           # round k starts from round k-1's weights (no encoder hold)
      continue_args: [--trainer.max_steps=500] # more arguments for those rounds (a shorter schedule, say)
    annotate:
      tasks: [<CAPTION>, <OD>]
      generation: {batch_size: 16, num_beams: 1, max_new_tokens: 256}   # GenerationSettings fields
      backend: local                           # or ray (workers: N)
    filter:                                    # null: keep everything the model wrote
      text: false                              # the spaCy text filter (needs its English pipeline)
      regions: {min_score: 0.3, nms_iou: 0.7}  # RegionFilter fields
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from f2lightning.data.records import read_records, write_records
from f2lightning.data.skips import SkipReport
from f2lightning.engine.annotate import Florence2Specialist, annotate, input_records
from f2lightning.engine.filters import RegionFilter, TextFilter, filter_records
from f2lightning.inference.generation import GenerationSettings

# The round's checkpoints live in its own folder (whatever the training config names) and nothing else is logged:
# the round's metrics come from its test run.
ROUND_TRAINER_ARGS = [
    "--trainer.logger=false",
    "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
    "init_args: {save_last: true, every_n_train_steps: 500}}]",
]


@dataclass(frozen=True)
class RefineConfig:
    work_dir: str
    labelled: list[str]
    unlabelled: list[str]
    train: dict[str, Any]
    annotate: dict[str, Any]
    rounds: int = 2
    filter: dict[str, Any] | None = field(default_factory=dict)
    path: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike) -> RefineConfig:
        """Read and check a refine config; paths are relative to the current folder, as on the command line."""
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)} - {"path"}
        if unknown := set(raw) - known:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; a refine config has {sorted(known)}")
        if missing := {"work_dir", "labelled", "unlabelled", "train", "annotate"} - set(raw):
            raise ValueError(f"{path}: missing {sorted(missing)}")
        if not isinstance(raw.get("rounds", 2), int) or raw.get("rounds", 2) < 1:
            raise ValueError(f"{path}: rounds must be a whole number >= 1, got {raw.get('rounds')!r}")
        if "config" not in (raw["train"] or {}):
            raise ValueError(
                f"{path}: train.config must name the LightningCLI config of each round's training"
            )
        if not (raw["annotate"] or {}).get("tasks"):
            raise ValueError(
                f"{path}: annotate.tasks must name the tasks the previous round's model annotates"
            )
        config = cls(**{k: raw[k] for k in raw}, path=str(path))
        config.specialist(
            "check"
        )  # unknown tasks / generation settings fail now, not after round 0's training
        config.filters()
        return config

    def round_dir(self, k: int) -> Path:
        return Path(self.work_dir) / f"round_{k}"

    def specialist(self, checkpoint: str) -> Florence2Specialist:
        options = dict(self.annotate)
        generation = GenerationSettings(**(options.pop("generation", None) or {}))
        tasks = options.pop("tasks")
        return Florence2Specialist(checkpoint, tasks, generation, **options)

    def filters(self) -> tuple[TextFilter | None, RegionFilter | None]:
        if self.filter is None:
            return None, None
        options = dict(self.filter)
        text = options.pop("text", False)
        regions = RegionFilter(**(options.pop("regions", None) or {}))
        if options:
            raise ValueError(f"{self.path}: filter accepts text and regions, got {sorted(options)}")
        return (TextFilter(**text) if isinstance(text, dict) else TextFilter() if text else None), regions


def refine(config: RefineConfig) -> list[dict[str, float]]:
    """Run (or continue) every round; returns each round's test metrics."""
    metrics = []
    for k in range(config.rounds):
        done = config.round_dir(k) / "metrics.json"
        if not done.exists():
            _run_round(config, k)
        metrics.append(json.loads(done.read_text()))
    return metrics


def _run_round(config: RefineConfig, k: int) -> None:
    from f2lightning.training.cli import main as lightning_cli

    folder = config.round_dir(k)
    folder.mkdir(parents=True, exist_ok=True)
    report = SkipReport()
    records = [r for path in config.labelled for r in read_records(path, "skip", report=report)]
    start: list[str] = []
    if k > 0:
        previous = config.round_dir(k - 1) / "model"
        specialist = config.specialist(str(previous))
        specialist.source = f"round{k - 1}"
        annotated, skipped, dropped = annotate(
            input_records(config.unlabelled, report), [specialist], folder / "annotated.jsonl"
        )
        text_filter, region_filter = config.filters()
        filtered = filter_records(annotated, text_filter, region_filter, report)
        records += filtered
        reports = {"filtered": report, "skipped_images": skipped, "dropped_answers": dropped}
        (folder / "filter_report.json").write_text(
            json.dumps({k: v.to_json() for k, v in reports.items()}, indent=2)
        )
        if config.train.get("continue", False):
            # Trained encoders already read the image: nothing to hold still while the decoder catches up.
            start = [f"--model.pretrained={previous}", "--model.hold_encoders_steps=0",
                     *map(str, config.train.get("continue_args") or [])]  # fmt: skip
    write_records(_relative(records, folder), folder / "records.jsonl")
    args = ["fit", "-c", str(config.train["config"]), *map(str, config.train.get("args") or []), *start,
            *ROUND_TRAINER_ARGS, f"--trainer.default_root_dir={folder / 'train'}",
            f"--data.train_files=[{folder / 'records.jsonl'}]"]  # fmt: skip
    cli = lightning_cli(args)
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    cli.model.export(folder / "model")
    (folder / "metrics.json").write_text(json.dumps({k: float(v) for k, v in tested.items()}, indent=2))


def _relative(records: list, folder: Path) -> list:
    from dataclasses import replace

    return [replace(r, image=os.path.relpath(os.path.abspath(r.image), folder.resolve())) for r in records]
