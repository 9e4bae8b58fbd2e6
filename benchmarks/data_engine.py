"""The data engine's claim at small scale (paper §4.2.3): a model trained on its own filtered annotations of
unlabelled images beats the model that wrote them, and filtering beats keeping every annotation.

    python -m benchmarks.data_engine [--images 1000 --labelled 150 --steps 1000 --round-steps 200 --min-score 0.5]

On the synthetic multitask set (`f2lightning.data.synthetic`; `--images` of which a tenth is held out for testing),
the demo's tiny model (`f2lightning/configs/demo.yaml`, caption and OD only) is trained in four arms that share
round 0, each tested on the held-out images:

  round 0        trained `--steps` on the `--labelled` first training images only;
  more steps     round 0 trained `--round-steps` more on the same labelled images (round 1's compute, no new data);
  round 1 raw    round 0 annotates the other training images (their annotations hidden) with captions and OD,
                 every annotation is kept and merged with the labelled records, and round 0 trains `--round-steps`
                 more on them;
  round 1        the same, with the region filter (score >= `--min-score`, NMS) applied before the merge.

Every arm runs through `f2lightning refine` (`f2lightning/engine/refine.py`), so this is also what the command
does. Prints a table and a `BENCHMARK_JSON` line; `--work-dir` keeps every round's records, models and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import print_json
from f2lightning.allocator import keep_freed_cpu_memory
from f2lightning.data.records import read_records, write_records
from f2lightning.demo import CONFIG as DEMO_CONFIG
from f2lightning.engine.refine import RefineConfig, refine

TASKS = ["<CAPTION>", "<OD>"]
METRICS = {"OD recall": "test/OD/box_recall@0.5", "caption exact match": "test/CAPTION/exact_match",
           "caption BLEU-4": "test/CAPTION/bleu4", "loss": "test/loss"}  # fmt: skip


def _train_args(args: argparse.Namespace, synthetic: Path) -> list[str]:
    return [
        f"--data.synthetic_dir={synthetic}", f"--data.synthetic_images={args.images}",
        f"--data.tasks=[{', '.join(TASKS)}]", "--data.task_weights={<CAPTION>: 1, <OD>: 1}",
        f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0", f"--seed_everything={args.seed}",
        f"--model.hold_encoders_steps={min(300, args.steps // 5)}", f"--model.warmup_steps={min(50, args.steps // 5)}",
        f"--data.test_files=[{synthetic / 'val.jsonl'}]",
    ]  # fmt: skip


def _arm(name: str, args, work: Path, synthetic: Path, unlabelled: list[str], filtering: dict | None) -> dict:
    config = RefineConfig(
        work_dir=str(work / name),
        rounds=2,
        labelled=[str(work / "labelled.jsonl")],
        unlabelled=unlabelled,
        train={
            "config": str(DEMO_CONFIG),
            "args": _train_args(args, synthetic),
            "continue": True,
            "continue_args": [
                f"--trainer.max_steps={args.round_steps}",
                f"--model.warmup_steps={min(50, args.round_steps // 5)}",
                f"--model.lr={args.round_lr}",
            ],
        },
        annotate={
            "tasks": TASKS,
            "generation": {"batch_size": 16, "num_beams": 1, "num_workers": 1, "max_new_tokens": 256},
        },
        filter=filtering,
    )
    shared, answers = work / "round_0", work / "answers.parts"
    if shared.exists() and not (work / name / "round_0").exists():  # every arm starts from the same round 0
        (work / name).mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared, work / name / "round_0")
    parts = work / name / "round_1" / "annotated.jsonl.parts"
    if unlabelled and answers.exists() and not parts.exists():  # round 0's answers are the same for every arm
        shutil.copytree(answers, parts)
    start = time.perf_counter()
    metrics = refine(config)
    if not shared.exists():
        shutil.copytree(work / name / "round_0", shared)
    if unlabelled and not answers.exists():
        shutil.copytree(parts, answers)
    return {"round0": metrics[0], "round1": metrics[1], "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000, help="synthetic images (a tenth held out)")
    parser.add_argument(
        "--labelled", type=int, default=150, help="training images whose annotations round 0 sees"
    )
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps of round 0")
    parser.add_argument("--round-steps", type=int, default=500, help="optimizer steps of each round 1 arm")
    parser.add_argument("--round-lr", type=float, default=1e-4, help="learning rate of the round 1 arms")
    parser.add_argument(
        "--unlabelled", type=int, default=None, help="how many of the other images round 0 annotates"
    )
    parser.add_argument("--min-score", type=float, default=0.5, help="the filter's least region score")
    parser.add_argument("--nms-iou", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args(argv)
    keep_freed_cpu_memory()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="f2l_data_engine_"))
    synthetic = work / "synthetic"
    if not (synthetic / "train.jsonl").exists():
        from f2lightning.data.datamodule import Florence2DataModule

        Florence2DataModule(synthetic_dir=str(synthetic), synthetic_images=args.images,
                            tokenizer_vocab_size=1024).prepare_data()  # fmt: skip
    train = read_records(synthetic / "train.jsonl")
    write_records([_relative(r, work) for r in train[: args.labelled]], work / "labelled.jsonl")
    # The specialists see these images, not their annotations.
    hidden = [r.image for r in train[args.labelled :]][: args.unlabelled]

    regions = {"min_score": args.min_score, "nms_iou": args.nms_iou}
    arms = {
        "more steps": _arm("more_steps", args, work, synthetic, [], None),
        "round 1 raw": _arm("raw", args, work, synthetic, hidden, None),
        "round 1": _arm("filtered", args, work, synthetic, hidden, {"regions": regions}),
    }
    rows = {"round 0": arms["more steps"]["round0"], **{name: arm["round1"] for name, arm in arms.items()}}
    filtered = json.loads((work / "filtered" / "round_1" / "filter_report.json").read_text())["filtered"]
    print(f"\n{args.images} synthetic images: {len(train)} for training ({args.labelled} labelled, {len(hidden)} "
          f"annotated by round 0), the rest held out; {args.steps} steps for round 0, {args.round_steps} more per "
          f"arm; filter {regions}")  # fmt: skip
    print("\n| arm | " + " | ".join(METRICS) + " |\n|---|" + "---:|" * len(METRICS))
    for name, metrics in rows.items():
        print(
            f"| {name} | "
            + " | ".join(f"{metrics.get(key, float('nan')):.3f}" for key in METRICS.values())
            + " |"
        )
    print(f"\nthe filter dropped {filtered['total']} generated annotations: {filtered['dropped']}")
    print_json({"benchmark": "data_engine", "images": args.images, "labelled": args.labelled, "steps": args.steps,
                "round_steps": args.round_steps,
                "filter": regions, "dropped": filtered["dropped"],
                "arms": {name: {label: metrics.get(key) for label, key in METRICS.items()}
                         for name, metrics in rows.items()}})  # fmt: skip
    print(f"work dir: {work}")
    return 0


def _relative(record, folder: Path):
    from dataclasses import replace

    return replace(record, image=os.path.relpath(os.path.abspath(record.image), folder.resolve()))


if __name__ == "__main__":
    raise SystemExit(main())
