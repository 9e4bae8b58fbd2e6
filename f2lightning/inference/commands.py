"""``f2lightning predict``: a checkpoint's answers for images, as JSONL with scores and records."""

from __future__ import annotations

import argparse


def add_generation_arguments(parser: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    """The options every command that runs a checkpoint shares (predict, annotate)."""
    parser.add_argument(
        "--checkpoint",
        required=checkpoint_required,
        help="transformers / Microsoft Florence-2 directory, or an f2lightning .ckpt",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on CUDA"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="input resolution (default: the checkpoint's)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on every task's output length")
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def generation_settings(args: argparse.Namespace):
    """The `GenerationSettings` that `add_generation_arguments` describe."""
    from f2lightning.inference.generation import GenerationSettings
    from f2lightning.inference.loading import resolve_device, use_bf16

    device = resolve_device(args.device)
    return GenerationSettings(
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        num_workers=args.num_workers,
        device=device,
        bf16=use_bf16(device, args.precision),
        progress=not args.no_progress,
    )


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="run a checkpoint on images: JSONL with parsed results, per-box scores and records",
        description="Answer every image with every --task. Re-running the same command continues where it stopped.",
    )
    parser.add_argument("images", nargs="+", help="image files, folders, glob patterns or record JSONL files")
    parser.add_argument(
        "--task",
        action="append",
        required=True,
        help="task token or name (<OD>, caption, ...); repeat for several",
    )
    parser.add_argument(
        "--text", default=None, help="text input of the tasks that take one (grounding, VQA, ...)"
    )
    parser.add_argument(
        "--region", type=float, nargs=4, default=None, metavar=("X0", "Y0", "X1", "Y1"),
        help="region input (pixels) of the region tasks",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="JSONL file to append the predictions to")
    parser.add_argument(
        "--pictures", default=None, help="folder for pictures of the results drawn on the images"
    )
    parser.add_argument(
        "--source", default=None, help="provenance name of the annotations (default: checkpoint)"
    )
    add_generation_arguments(parser)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Exit status 2 with a one-line message for inputs that name nothing and tasks without their input."""
    import sys
    from pathlib import Path

    from f2lightning.data.skips import SkipReport
    from f2lightning.inference.predict import build_requests, collect_images, predict

    skipped = SkipReport()
    try:  # inputs and tasks are checked before the model loads: a typo should not cost a checkpoint read
        requests = build_requests(collect_images(args.images, skipped), args.task, args.text, args.region)
    except (FileNotFoundError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) else error  # KeyError quotes its message
        print(f"f2lightning predict: error: {message}", file=sys.stderr)
        return 2
    from f2lightning.inference.loading import load_model

    settings = generation_settings(args)
    model, processor = load_model(args.checkpoint, args.tokenizer, settings.device, args.image_size)
    source = args.source or Path(args.checkpoint).name
    summary = predict(
        model,
        processor,
        requests,
        args.output,
        settings,
        source=source,
        pictures=args.pictures,
        skipped=skipped,
    )
    print(f"{args.output}: {summary}")
    return 0
