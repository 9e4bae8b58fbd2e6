"""The main job on one CPU: synthetic data → tiny Florence-2 → evaluation table and prediction pictures.

    python -m f2lightning.demo [--steps N] [extra LightningCLI arguments such as --trainer.max_steps=...]

1. writes the synthetic multitask dataset and trains its tokenizer (first run only, `data/synthetic`),
2. validates the untrained model (the baseline column) and scores the image-blind prior (the most frequent
   training answer to each prompt: what ignoring the image scores),
3. trains with `f2lightning/configs/demo.yaml` (package data; `configs/demo.yaml` links to it),
4. validates again and writes `runs/demo/results.md` / `results.json`, the prediction pictures under
   `runs/demo/logs/version_*/predictions/`, and the model in the transformers-native layout (`runs/demo/model`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from f2lightning.training.cli import main as lightning_cli
from f2lightning.training.quality import image_blind_prior

CONFIG = (
    Path(__file__).resolve().parent / "configs" / "demo.yaml"
)  # package data: found in an installed wheel too


def results_table(before: dict[str, float], after: dict[str, float], prior: dict[str, float]) -> str:
    """Markdown table, one row per validation metric: untrained, image-blind prior (`image_blind_prior`, keys
    without the `val/` prefix) and trained."""
    rows = ["| task | metric | untrained | image-blind prior | trained |", "|---|---|---:|---:|---:|"]
    for name in sorted(after):
        task, _, metric = name.removeprefix("val/").partition("/")
        if not name.startswith("val/") or not metric:  # the loss and the skipped-image count are not per task
            continue
        blind = prior.get(name.removeprefix("val/"), float("nan"))
        rows.append(
            f"| {task} | {metric} | {before.get(name, float('nan')):.3f} | {blind:.3f} | {after[name]:.3f} |"
        )
    rows.append(
        f"| all | loss | {before.get('val/loss', float('nan')):.3f} | | {after.get('val/loss', float('nan')):.3f} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cli = lightning_cli(["-c", str(CONFIG), *argv], run=False)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    # Re-running after a crash continues from the run's newest good checkpoint; "untrained" stays the fresh model's.
    ckpt_path = cli.prepare_fit(None, cli.config.get("resume", "auto"))
    start = time.perf_counter()
    before = trainer.validate(model, data, verbose=False)[0]
    trainer.fit(model, data, ckpt_path=ckpt_path)
    after = trainer.validate(model, data, verbose=False)[0]
    out = Path(trainer.default_root_dir)
    out.mkdir(parents=True, exist_ok=True)
    prior = image_blind_prior(data.train_dataset.samples_by_task, data.val_dataset.samples_by_task)
    table = results_table(before, after, prior)
    (out / "results.md").write_text(table + "\n")
    results = {"untrained": before, "image_blind_prior": prior, "trained": after}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    model.export(out / "model")
    print(f"\n{table}\n")
    print(
        f"done in {time.perf_counter() - start:.0f} s: {out / 'results.md'}, prediction pictures in "
        f"{Path(trainer.log_dir) / 'predictions'}, transformers-format model in {out / 'model'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
