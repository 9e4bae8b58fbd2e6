"""``f2lightning predict``: a checkpoint's answers for images, as JSONL with scores and records;
``f2lightning serve``: the same answers over HTTP, with a web playground."""

from __future__ import annotations

import argparse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """How a checkpoint is loaded and asked: what every command that runs one shares (predict, annotate, serve)."""
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on CUDA"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="input resolution (default: the checkpoint's)"
    )
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on every task's output length")


def add_generation_arguments(parser: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    """`add_model_arguments` plus what a command that answers a list of images adds (predict, annotate)."""
    parser.add_argument(
        "--checkpoint",
        required=checkpoint_required,
        help="transformers / Microsoft Florence-2 directory, or an f2lightning .ckpt",
    )
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_argument(parser, default="continuous")


def add_engine_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    """`--engine`: continuous batching (requests join and leave a running batch) or one `generate` per batch."""
    parser.add_argument(
        "--engine", choices=["continuous", "batched"], default=default,
        help="continuous: finished answers leave the running batch and queued ones join (default); "
        "batched: transformers' generate per batch, until its longest answer ends",
    )  # fmt: skip


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
        engine=args.engine,
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
    register_serve_cli(subparsers)
    register_export_onnx_cli(subparsers)


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


def register_serve_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="answer images over HTTP (LitServe): POST /predict, a web playground at /playground",
        description="Serve a checkpoint: POST /predict answers like a line of f2lightning predict; requests "
        "are batched. Needs the serve extra (pip install f2lightning[serve]). docs/serving.md has the API.",
    )
    parser.add_argument(
        "checkpoint", help="transformers / Microsoft Florence-2 directory, or an f2lightning .ckpt"
    )
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests answered together")
    parser.add_argument(
        "--batch-timeout", type=float, default=0.05, help="seconds to wait for a batch to fill up"
    )
    parser.add_argument(
        "--timeout", type=float, default=30, help="seconds a request may wait in the queue (then 504)"
    )
    parser.add_argument(
        "--max-image-bytes", type=int, default=20_000_000, help="largest image file accepted (then 413)"
    )
    parser.add_argument(
        "--source", default=None, help="provenance name of the answers' annotations (default: checkpoint)"
    )
    # Batches are --max-batch-size, images are decoded as they arrive, and there is no progress to show.
    add_model_arguments(parser)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Exit status 2 with a one-line message when LitServe is not installed or the device is not one."""
    import sys

    try:
        from f2lightning.inference.serve import Florence2API, build_server, litserve_devices
    except ModuleNotFoundError as error:
        if error.name != "litserve":
            raise
        print("f2lightning serve: error: needs LitServe: pip install 'f2lightning[serve]'", file=sys.stderr)
        return 2
    from f2lightning.inference.loading import resolve_device

    device = resolve_device(args.device)
    try:
        litserve_devices(device)
    except ValueError as error:
        print(f"f2lightning serve: error: {error}", file=sys.stderr)
        return 2
    api = Florence2API(
        args.checkpoint,
        tokenizer=args.tokenizer,
        image_size=args.image_size,
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        precision=args.precision,
        source=args.source,
        max_image_bytes=args.max_image_bytes,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    # LitServe would otherwise write a client.py into the working directory.
    build_server(api, device, args.timeout).run(host=args.host, port=args.port, generate_client_file=False)
    return 0


def register_export_onnx_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export a checkpoint as ONNX graphs for onnxruntime (image encoder, encoder, decoder)",
        description="Write image_encoder.onnx, encoder.onnx, decoder_first.onnx, decoder.onnx, the tokenizer "
        "files and onnx_config.json into a folder that f2lightning.inference.onnx_runtime.OnnxFlorence2 "
        'reads without a torch model. Needs the onnx extra (pip install "f2lightning[onnx]"); docs/inference.md.',
    )
    parser.add_argument(
        "checkpoint", help="transformers / Microsoft Florence-2 directory, or an f2lightning .ckpt"
    )
    parser.add_argument("-o", "--output", required=True, help="folder to write the graphs into")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="input resolution (default: the checkpoint's)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset of the graphs")
    parser.set_defaults(func=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> int:
    """Exit status 2 with a one-line message when the onnx package is missing."""
    import sys

    from f2lightning.inference.onnx_export import MissingOnnxExtra, export_onnx

    try:
        output = export_onnx(args.checkpoint, args.output, args.tokenizer, args.image_size, args.opset)
    except MissingOnnxExtra as error:
        print(f"f2lightning export-onnx: error: {error}", file=sys.stderr)
        return 2
    print(f"{output}: image_encoder.onnx, encoder.onnx, decoder_first.onnx, decoder.onnx, onnx_config.json")
    return 0
