"""Generation: images/s of beam-3 generation for <OD> and <CAPTION>, ours vs transformers' `generate`.

Three contestants on the same images, prompts, weights and generation settings (our processor's per-task
kwargs, `max_new_tokens` capped so random weights do not make the run long):

* ours, batched (`Florence2.generate`: the image + prompt are encoded once, beams reuse the encoder output);
* reference, batched (`Florence2ForConditionalGeneration.generate` on the same batch);
* reference one image at a time, as the public inference examples do.

The outputs are checked to be token-identical (`same_output` in the JSON).

    python -m benchmarks.generation --preset tiny
    python -m benchmarks.generation --preset base --batch-size 4 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.common import (
    Side,
    autocast,
    build_ours,
    environment,
    interleave,
    print_json,
    print_table,
    reference_from,
    reference_inputs,
    synthetic_datamodule,
)
from f2lightning.images import load_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per task")
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--tasks", nargs="+", default=["<OD>", "<CAPTION>"])
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true", help="ours only: torch.compile the image encoder")
    return parser.parse_args(argv)


def bench_task(task: str, model, reference, processor, images: list, args: argparse.Namespace,
               device: torch.device) -> dict[str, Any]:
    config = model.config
    batch = processor(images, [task] * len(images))
    pixels = batch["pixel_values"].to(device)
    input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    kwargs = processor.generation_kwargs(task, args.num_beams)
    kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], args.max_new_tokens)
    ref_inputs = reference_inputs(input_ids, mask, config.num_image_tokens, config.image_token_id)
    outputs: dict[str, Any] = {}

    def ours(_: object) -> None:
        with torch.inference_mode(), autocast(device, args.bf16):
            outputs["ours"] = model.generate(pixels, input_ids, mask, **kwargs)

    def reference_batched(_: object) -> None:
        with torch.inference_mode(), autocast(device, args.bf16):
            outputs["reference"] = reference.generate(**ref_inputs, pixel_values=pixels, **kwargs)

    def reference_one_by_one(_: object) -> None:
        # Public examples: one image, unpadded prompt, one generate call each.
        with torch.inference_mode(), autocast(device, args.bf16):
            for i in range(len(images)):
                length = int(mask[i].sum())
                single = reference_inputs(input_ids[i : i + 1, :length], mask[i : i + 1, :length],
                                          config.num_image_tokens, config.image_token_id)
                reference.generate(**single, pixel_values=pixels[i : i + 1], **kwargs)

    sides = [Side("ours, batched", ours), Side("reference, batched", reference_batched),
             Side("reference, one by one", reference_one_by_one)]
    interleave(sides, list(range(args.repeats + 1)), device, warmup=1)
    same = torch.equal(outputs["ours"], outputs["reference"])
    rows = [[s.name, len(images) / s.median, s.median / sides[0].median]
            for s in sides]
    print_table(
        f"{task} beam-{args.num_beams} generation ({args.preset}, {args.image_size}px, batch {len(images)}, "
        f"<= {kwargs['max_new_tokens']} new tokens, same output: {same})",
        ["side", "images/s", "ours is faster by"], rows,
    )
    return {
        "ours_images_per_s": len(images) / sides[0].median,
        "reference_batched_images_per_s": len(images) / sides[1].median,
        "reference_one_by_one_images_per_s": len(images) / sides[2].median,
        "speedup_vs_reference_batched": sides[1].median / sides[0].median,
        "speedup_vs_reference_one_by_one": sides[2].median / sides[0].median,
        "same_output": same,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    datamodule = synthetic_datamodule(args.image_size, args.batch_size)
    model = build_ours(args.preset, args.image_size, datamodule.tokenizer, args.vocab_size).model.to(device).eval()
    reference = reference_from(model, device).eval()
    if args.compile:
        model.compile_image_encoder()
    processor = datamodule.processor
    records = datamodule.train_dataset.flat[: args.batch_size]
    images = [load_image(sample.image_path) for sample in records]
    result: dict[str, Any] = {
        "benchmark": "generation", "preset": args.preset, "image_size": args.image_size,
        "batch_size": args.batch_size, "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
        "compile": args.compile,
        **environment(device, args.bf16), "tasks": {},
    }
    for task in args.tasks:
        result["tasks"][task] = bench_task(task, model, reference, processor, images, args, device)
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
