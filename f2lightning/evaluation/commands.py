"""``f2lightning evaluate``: score a checkpoint on the paper's benchmarks and print the paper-style table."""

from __future__ import annotations

import argparse
from pathlib import Path

from f2lightning.inference.commands import add_engine_argument


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on benchmark configs (configs/eval/*.yaml) against the paper's numbers",
        description="Evaluate a Florence-2 checkpoint on one or more benchmarks (Tables 4-6 of the paper).",
    )
    parser.add_argument(
        "-c", "--config", action="append", required=True, help="benchmark config; repeat for several"
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="transformers / Microsoft Florence-2 directory, or an f2lightning .ckpt",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--data-root", default=".", help="folder the configs' data paths are relative to")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on CUDA"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="input resolution (default: the checkpoint's)"
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-beams", type=int, default=None, help="default 3")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on every task's output length")
    parser.add_argument("--num-workers", type=int, default=None, help="image decoding processes (default 2)")
    parser.add_argument(
        "--limit", type=int, default=None, help="score only the first N samples of each split"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the image encoder (pays off on long runs)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_engine_argument(parser, default=None)  # None: the config's generation block, else continuous
    parser.add_argument(
        "-o",
        "--output",
        default=None,
        help="folder for results.md, results.json, predictions/ and answers/ (splits with private answers)",
    )
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> None:
    from f2lightning.evaluation.report import to_markdown
    from f2lightning.evaluation.runner import evaluate

    overrides = {
        name: value
        for name, value in [
            ("batch_size", args.batch_size),
            ("num_beams", args.num_beams),
            ("max_new_tokens", args.max_new_tokens),
            ("num_workers", args.num_workers),
            ("engine", args.engine),
        ]
        if value is not None
    }
    if args.compile:
        overrides["compile_image_encoder"] = True
    if args.no_progress:
        overrides["progress"] = False
    results = evaluate(
        args.config,
        args.checkpoint,
        tokenizer=args.tokenizer,
        data_root=args.data_root,
        device=args.device,
        precision=args.precision,
        image_size=args.image_size,
        overrides=overrides,
        limit=args.limit,
        out_dir=args.output,
    )
    print(to_markdown(results, ours=f"ours ({Path(args.checkpoint).name})"))
    if args.output:
        print(f"wrote {Path(args.output) / 'results.md'}, {Path(args.output) / 'results.json'}")
        for split in (split for result in results for split in result.splits if split.answers_file):
            print(f"wrote {split.answers_file}: submit it to the benchmark's evaluation server (EvalAI)")
