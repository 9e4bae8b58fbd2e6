"""``f2lightning convert``, ``f2lightning make-synthetic`` and ``f2lightning shard``."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from f2lightning.data.converters import CONVERTERS, ConversionError, get_converter
from f2lightning.data.records import write_records
from f2lightning.data.skips import SkipReport
from f2lightning.data.synthetic import SyntheticConfig, make_synthetic

log = logging.getLogger(__name__)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser("convert", help="convert a public dataset format into record JSONL")
    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, converter in sorted(CONVERTERS.items()):
        parser = formats.add_parser(name, help=converter.help)
        converter.add_arguments(parser)
        parser.add_argument("-o", "--output", required=True, help="output .jsonl")
        parser.set_defaults(func=run_convert)

    synthetic = subparsers.add_parser("make-synthetic", help="write the synthetic multitask dataset")
    synthetic.add_argument("-o", "--output", required=True, help="output folder")
    synthetic.add_argument("--images", type=int, default=1000, help="number of images")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--difficulty", choices=["easy", "medium", "hard"], default="easy")
    synthetic.add_argument("--image-size", type=int, default=None, help="side in pixels (default 256)")
    synthetic.add_argument("--format", choices=["png", "jpeg"], default="png")
    synthetic.add_argument("--val-fraction", type=float, default=0.1)
    synthetic.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    synthetic.set_defaults(func=run_make_synthetic)

    shard = subparsers.add_parser(
        "shard", help="write litdata shards (per task, or --by-image) for streaming training"
    )
    shard.add_argument("records", nargs="+", help="record JSONL files")
    shard.add_argument("-o", "--output", required=True, help="output folder or object-store URL (s3://...)")
    shard.add_argument("--tasks", nargs="+", default=None, help="task tokens or names (default: every task)")
    shard.add_argument("--chunk-bytes", default="64MB", help="target size of one shard chunk")
    shard.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    shard.add_argument("--on-bad-sample", choices=["skip", "raise"], default="skip")
    shard.add_argument("--overwrite", action="store_true", help="replace shards already in the output")
    shard.add_argument(
        "--by-image",
        action="store_true",
        help="one item per image with all its samples (for data.tasks_per_image > 1)",
    )
    shard.add_argument("--report", default=None, help="write the skip report (JSON) here")
    shard.set_defaults(func=run_shard)


def run_convert(args: argparse.Namespace) -> int:
    """Exit status 2 with a one-line message when an input file is not in its format, as for a
    wrong command line: the message names the file, and a traceback would only bury it."""
    converter = get_converter(args.format)
    accepted = inspect.signature(converter.convert).parameters
    report = SkipReport()
    try:
        records = converter.convert(**{k: v for k, v in vars(args).items() if k in accepted}, report=report)
    except ConversionError as error:
        print(f"f2lightning convert {args.format}: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for record in records:  # image paths relative to the JSONL, so the pair can move together
        record.image = os.path.relpath(os.path.abspath(record.image), out.parent.resolve())
    write_records(records, out)
    for reason, examples in sorted(report.examples.items()):
        log.warning("dropped %d %s, e.g. %s", report.dropped[reason], reason, "; ".join(examples))
    print(f"{args.format}: wrote {out}: {report.records} record(s); {report}")
    return 0


def run_make_synthetic(args: argparse.Namespace) -> int:
    config = SyntheticConfig.preset(args.difficulty)
    try:  # the scene rules live in SyntheticConfig; a value they refuse is a usage error, not a traceback
        config = replace(config, image_format=args.format, image_size=args.image_size or config.image_size)
    except ValueError as error:
        print(f"f2lightning make-synthetic: error: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    paths = make_synthetic(
        args.output,
        args.images,
        seed=args.seed,
        config=config,
        val_fraction=args.val_fraction,
        workers=args.workers,
    )
    seconds = time.perf_counter() - start
    print(
        f"wrote {args.images} images to {args.output} in {seconds:.1f}s "
        f"({args.images / seconds:.0f} images/s): {paths['train']}, {paths['val']}"
    )
    return 0


def run_shard(args: argparse.Namespace) -> None:
    from f2lightning.data.streaming import write_shards  # litdata is needed only for streaming

    report = SkipReport()
    counts = write_shards(
        args.records,
        args.output,
        tasks=args.tasks,
        chunk_bytes=args.chunk_bytes,
        num_workers=args.workers,
        on_bad_sample=args.on_bad_sample,
        report=report,
        overwrite=args.overwrite,
        by_image=args.by_image,
    )
    if args.report:
        report.write(args.report)
    per_task = ", ".join(f"{task} {n}" for task, n in counts.items())
    print(f"wrote {sum(counts.values())} samples to {args.output} ({per_task}); {report}")
