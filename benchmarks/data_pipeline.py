"""Data pipeline: samples/s of one datamodule worker (decode, transform, tokenize, collate) vs train consumption.

Runs the datamodule's own `Dataset.__getitems__` + `Collator` in this process (= one DataLoader worker), with a
per-stage breakdown, then times our train step on the same batches (interleaved with the pipeline) and
reports how many train steps one worker can keep fed: `worker samples/s ÷ train samples/s`.

    python -m benchmarks.data_pipeline --preset tiny
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import build_ours, environment, print_json, print_table, synthetic_datamodule
from benchmarks.train_step import make_ours_step
from f2lightning.data.dataset import Collator
from f2lightning.images import load_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=6, help="timed batches")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    env = environment(device, False)  # first: it sets the process up as our entry points do
    datamodule = synthetic_datamodule(args.image_size, args.batch_size, bucket_batches=8)
    dataset, processor = datamodule.train_dataset, datamodule.processor
    collate = Collator(processor)
    plan = iter(datamodule.train_dataloader().batch_sampler)
    module = build_ours(args.preset, args.image_size, datamodule.tokenizer)
    step = make_ours_step(module, device, argparse.Namespace(channels_last=False, bf16=False))

    stages = {"decode": 0.0, "transform": 0.0, "tokenize + collate": 0.0, "worker total": 0.0}
    train_seconds, samples = 0.0, 0
    for index in range(args.batches + 1):
        indices = next(plan)
        # Stage breakdown, measured separately (decode, then resize + normalize, then the collator).
        start = time.perf_counter()
        images = [load_image(dataset.flat[i].image_path) for i in indices]
        decoded = time.perf_counter()
        [processor.preprocess_image(image) for image in images]
        transformed = time.perf_counter()
        # The worker's real path, end to end: __getitems__ (decode + transform each image once) then collate.
        items = dataset.__getitems__(indices)
        collate_start = time.perf_counter()
        batch = collate(items)
        collated = time.perf_counter()
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        train_start = time.perf_counter()
        step(batch)
        train_end = time.perf_counter()
        if index == 0:
            continue  # warm-up
        stages["decode"] += decoded - start
        stages["transform"] += transformed - decoded
        stages["tokenize + collate"] += collated - collate_start
        stages["worker total"] += collated - transformed
        train_seconds += train_end - train_start
        samples += len(indices)

    worker_rate = samples / stages["worker total"]
    train_rate = samples / train_seconds
    rows = [[name, samples / seconds, 1e3 * seconds / samples] for name, seconds in stages.items()]
    rows.append(["train step consumes", train_rate, 1e3 * train_seconds / samples])
    print_table(
        f"data pipeline, one worker ({args.preset}, {args.image_size}px, batch {args.batch_size})",
        ["stage", "samples/s", "ms/sample"],
        rows,
    )
    print(f"one worker feeds {worker_rate / train_rate:.1f}x what one train step consumes")
    result = {
        "benchmark": "data_pipeline",
        "preset": args.preset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        **env,
        "worker_samples_per_s": worker_rate,
        "train_samples_per_s": train_rate,
        "worker_over_train": worker_rate / train_rate,
        "stage_ms_per_sample": {name: 1e3 * seconds / samples for name, seconds in stages.items()},
    }
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
