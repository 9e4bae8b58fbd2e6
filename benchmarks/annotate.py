"""Throughput of `f2lightning annotate`: images/s of a Florence-2 specialist, locally and on Ray actor pools.

    python -m benchmarks.annotate --preset tiny --images 32
    python -m benchmarks.annotate --preset base --image-size 384 --images 16 --workers 1 2

A random model of the preset (no download) saved like an export, synthetic images, the tasks `<CAPTION>` and
`<OD>` with every answer capped at `--max-new-tokens`; greedy. Each backend annotates the same images into a fresh
output (nothing resumed). Ray runs start their cluster once, before timing, and each actor loads the model inside
the timed region, as a real run pays it. Prints a table (images/s, ratio to local) and a `BENCHMARK_JSON` line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import print_json
from f2lightning.allocator import keep_freed_cpu_memory
from f2lightning.data.skips import SkipReport
from f2lightning.engine.annotate import Florence2Specialist, annotate, input_records
from f2lightning.inference.generation import GenerationSettings

TASKS = ["<CAPTION>", "<OD>"]


def _checkpoint(preset: str, image_size: int, folder: Path) -> Path:
    """A random model of `preset` with the preset's vocabulary (a real LM head's cost), saved like an export."""
    from f2lightning.model import Florence2, Florence2Config
    from f2lightning.processor import Florence2Processor
    from f2lightning.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["What does the image describe? a red circle"] * 50, vocab_size=400)
    config = Florence2Config.preset(preset, image_size=image_size).replace(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>")
    )
    torch.manual_seed(0)
    path = Florence2(config).save_pretrained(folder)
    Florence2Processor.for_model(config, tokenizer).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=None, help="default: 128 for tiny, 384 otherwise")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray actor pool sizes")
    args = parser.parse_args(argv)
    keep_freed_cpu_memory()
    image_size = args.image_size or (128 if args.preset == "tiny" else 384)
    work = Path(tempfile.mkdtemp(prefix="f2l_annotate_bench_"))
    from f2lightning.data.synthetic import make_synthetic

    make_synthetic(work / "data", args.images, seed=0, val_fraction=0.0)
    checkpoint = _checkpoint(args.preset, image_size, work / "model")
    images = sorted(str(p) for p in (work / "data" / "images").glob("*.png"))[: args.images]
    settings = GenerationSettings(batch_size=args.batch_size, num_beams=1, max_new_tokens=args.max_new_tokens,
                                  num_workers=1, progress=False)  # fmt: skip
    threads = torch.get_num_threads()

    def run(backend: str, workers: int = 1) -> float:
        specialist = Florence2Specialist(
            str(checkpoint), TASKS, settings, "bench", backend=backend, workers=workers
        )
        start = time.perf_counter()
        annotate(
            input_records(images, SkipReport()), [specialist], work / f"{backend}{workers}" / "out.jsonl"
        )
        return len(images) / (time.perf_counter() - start)

    rows = {"local": run("local")}
    if args.workers:
        import ray

        ray.init(num_cpus=max(args.workers) + 1, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
        try:
            for workers in args.workers:
                rows[f"ray x{workers}"] = run("ray", workers)
        finally:
            ray.shutdown()
    print(f"\n{args.preset} preset, {image_size} px, {len(images)} images x {TASKS}, greedy, "
          f"<= {args.max_new_tokens} new tokens, batch {args.batch_size}, {threads} torch threads locally")  # fmt: skip
    print("\n| backend | images/s | vs local |\n|---|---:|---:|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:.2f} | {rate / rows['local']:.2f}x |")
    print_json({"benchmark": "annotate", "preset": args.preset, "image_size": image_size, "images": len(images),
                "images_per_s": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
