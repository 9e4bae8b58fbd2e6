"""``f2lightning convert`` and ``f2lightning make-synthetic``."""

from __future__ import annotations

import argparse
import inspect
import os
import time
from dataclasses import replace
from pathlib import Path

from f2lightning.data.converters import CONVERTERS, ConversionReport, get_converter
from f2lightning.data.records import write_records
from f2lightning.data.synthetic import SyntheticConfig, make_synthetic


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


def run_convert(args: argparse.Namespace) -> None:
    converter = get_converter(args.format)
    accepted = inspect.signature(converter.convert).parameters
    report = ConversionReport()
    records = converter.convert(**{k: v for k, v in vars(args).items() if k in accepted}, report=report)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for record in records:  # image paths relative to the JSONL, so the pair can move together
        record.image = os.path.relpath(os.path.abspath(record.image), out.parent.resolve())
    write_records(records, out)
    print(f"{args.format}: wrote {out}: {report}")


def run_make_synthetic(args: argparse.Namespace) -> None:
    config = SyntheticConfig.preset(args.difficulty)
    config = replace(config, image_format=args.format, image_size=args.image_size or config.image_size)
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
