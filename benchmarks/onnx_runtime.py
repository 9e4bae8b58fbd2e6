"""onnxruntime vs PyTorch on CPU: images/s of `OnnxFlorence2.generations` against `generation.generate`, what
`f2lightning predict` runs, on the same images, weights and per-task settings, greedy and beam search.

Both sides start from image files and end with decoded text and per-token log-probabilities (predict always asks
for them: they give the scores), and both run on `--threads` intra-op threads. The model is exported once with
`f2lightning.inference.onnx_export.export_model` (the export's seconds are reported, not timed against anything).
A fresh init would end most answers after one token, so the end token's logit bias is set to -1e4 in the shared
weights: every answer then runs to exactly `--max-new-tokens` on both sides. `same_output` checks the tokens are
identical.

    python -m benchmarks.onnx_runtime --preset tiny
    python -m benchmarks.onnx_runtime --preset base --batch-size 2 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch

from benchmarks.common import (
    Side,
    build_ours,
    environment,
    interleave,
    print_json,
    print_table,
    synthetic_datamodule,
)
from f2lightning.data.records import read_records
from f2lightning.inference.generation import GenerationSettings, generate
from f2lightning.inference.onnx_export import export_model
from f2lightning.inference.onnx_runtime import OnnxFlorence2
from f2lightning.inference.predict import Request


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4, help="images per call (and per batch)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per setting")
    parser.add_argument("--num-beams", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--task", default="<CAPTION>")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens each answer decodes")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="intra-op threads per side"
    )
    return parser.parse_args(argv)


def _unpadded(ids: list[int], pad: int) -> list[int]:
    ids = list(ids)
    while ids and ids[-1] == pad:
        ids.pop()
    return ids


def bench(
    beams: int, model, processor, runner: OnnxFlorence2, requests: list[Request], args: argparse.Namespace
) -> dict[str, Any]:
    """Both sides on the same images with `beams` beams: a table row each and the JSON entry."""
    settings = GenerationSettings(
        batch_size=len(requests), num_beams=beams, max_new_tokens=args.max_new_tokens, num_workers=0,
        progress=False,
    )  # fmt: skip
    paths, pad = [request.image for request in requests], processor.tokenizer.pad_token_id
    outputs: dict[str, list[list[int]]] = {}

    def pytorch(_: object) -> None:
        answers = generate(model, processor, args.task, requests, settings, with_logprobs=True)
        outputs["pytorch"] = [_unpadded(a.token_ids, pad) for a in answers]

    def onnxruntime(_: object) -> None:
        answers = runner.generations(
            paths, args.task, num_beams=beams, max_new_tokens=args.max_new_tokens, batch_size=len(paths)
        )
        outputs["onnxruntime"] = [a.token_ids for a in answers]

    sides = [Side("pytorch (predict's generate)", pytorch), Side("onnxruntime", onnxruntime)]
    interleave(sides, list(range(args.repeats + 1)), torch.device("cpu"), warmup=1)
    same = outputs["pytorch"] == outputs["onnxruntime"]
    tokens = sum(map(len, outputs["onnxruntime"])) / len(paths)
    print_table(
        f"{args.task} {'greedy' if beams == 1 else f'beam-{beams}'} on CPU ({args.preset}, {args.image_size}px, "
        f"batch {len(paths)}, {tokens:.0f} tokens per answer, {args.threads} thread(s), same output: {same})",
        ["side", "images/s", "vs pytorch"],
        [[side.name, len(paths) / side.median, sides[0].median / side.median] for side in sides],
    )
    return {
        "pytorch_images_per_s": len(paths) / sides[0].median,
        "onnxruntime_images_per_s": len(paths) / sides[1].median,
        "speedup": sides[0].median / sides[1].median,
        "tokens_per_answer": tokens,
        "same_output": same,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = environment(torch.device("cpu"), bf16=False)  # first: it sets the process up as our entry points do
    torch.set_num_threads(args.threads)
    datamodule = synthetic_datamodule(args.image_size, args.batch_size)
    processor = datamodule.processor
    model = build_ours(args.preset, args.image_size, datamodule.tokenizer, args.vocab_size).model.eval()
    with torch.no_grad():
        model.language_model.final_logits_bias[0, processor.tokenizer.eos_token_id] = -1e4
    records = [record for file in datamodule.train_files for record in read_records(file)]
    requests = [Request(r.image, r.image_size, args.task) for r in records[: args.batch_size]]
    result: dict[str, Any] = {
        "benchmark": "onnx_runtime",
        "preset": args.preset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "task": args.task,
        "max_new_tokens": args.max_new_tokens,
        **env,
        "threads": args.threads,
    }
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_model(model, processor, folder)
        result["export_s"] = time.perf_counter() - start
        runner = OnnxFlorence2(folder, threads=args.threads)
        result["num_beams"] = {
            str(beams): bench(beams, model, processor, runner, requests, args) for beams in args.num_beams
        }
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
