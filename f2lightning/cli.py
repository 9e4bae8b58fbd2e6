"""The `f2lightning` command: data conversion, synthetic data, tokenizers, the data engine (annotate, refine,
filter, stats), evaluation, prediction and serving, ONNX and backbone export.

Training itself runs through LightningCLI: `python train.py fit -c configs/<x>.yaml` (or `f2lightning fit ...`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from f2lightning.allocator import keep_freed_cpu_memory

# Areas that add subcommands; an import error in one of them is a bug and surfaces. None needs the OpenMMLab
# stack: `export-backbone` writes a plain file that MMDetection / MMSegmentation read.
COMMAND_MODULES = [
    "f2lightning.data.commands",
    "f2lightning.engine.commands",
    "f2lightning.evaluation.commands",
    "f2lightning.inference.commands",
    "f2lightning.model.commands",
]
LIGHTNING_SUBCOMMANDS = {"fit", "validate", "test"}


def train_tokenizer_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from f2lightning.data.datamodule import train_tokenizer_on_records

    out = train_tokenizer_on_records(args.records, Path(args.output), args.vocab_size)
    print(f"tokenizer written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="f2lightning", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tokenizer = subparsers.add_parser(
        "train-tokenizer", help="train a byte-level BPE on record files (offline)"
    )
    tokenizer.add_argument("records", nargs="+", help="record JSONL files")
    tokenizer.add_argument("-o", "--output", required=True, help="tokenizer directory to write")
    tokenizer.add_argument("--vocab-size", type=int, default=2048)
    tokenizer.set_defaults(func=train_tokenizer_command)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(subparsers)
    for name in sorted(LIGHTNING_SUBCOMMANDS):
        subparsers.add_parser(
            name, help=f"LightningCLI `{name}` (same as `python train.py {name} ...`)", add_help=False
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from f2lightning.training.cli import main as lightning_main

        lightning_main(argv)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_cpu_memory()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
