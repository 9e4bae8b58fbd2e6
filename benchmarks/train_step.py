"""Train step: ours (Florence2LitModule's model + loss, our AdamW) vs transformers' Florence-2 in a plain loop.

Two workloads, same weights, same process, interleaved step by step:

* `identical`: the same padded tensors go to both (measures the model + optimizer alone); also peak memory.
* `stream`: a realistic mixed-task stream from our datamodule (dynamic padding + length bucketing) against the
  reference fed the same samples padded to the dataset's longest prompt / target, as the public fine-tuning
  examples do (`padding="max_length"`). A third column feeds the reference our dynamically padded batches, to
  separate the model's speed from the padding saved. With `--tasks-per-image k` the stream asks k questions
  about each image in a row (the datamodule's `tasks_per_image`): ours encodes each image of a batch once, the
  reference gets one copy of the image per sample, as it needs.

    python -m benchmarks.train_step --preset tiny
    python -m benchmarks.train_step --preset base --batch-size 2 --steps 3
    python -m benchmarks.train_step --preset base --batch-size 4 --workload stream --tasks-per-image 2
    python -m benchmarks.train_step --preset base --device cuda --bf16 --batch-size 16
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
    repeat,
    synthetic_datamodule,
)
from f2lightning.training.optim import build_optimizer

Batch = dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side and workload")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--workload", default="both", choices=["identical", "stream", "both"])
    parser.add_argument(
        "--prompt-length", type=int, default=24, help="identical workload: padded prompt tokens"
    )
    parser.add_argument(
        "--target-length", type=int, default=48, help="identical workload: padded target tokens"
    )
    parser.add_argument(
        "--bucket-batches", type=int, default=8, help="stream: length-bucketing window (0 = off)"
    )
    parser.add_argument(
        "--tasks-per-image", type=int, default=1, help="stream: same-image run length (1 = off)"
    )
    parser.add_argument("--synthetic-images", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both sides")
    parser.add_argument("--activation-checkpointing", action="store_true", help="ours only")
    parser.add_argument(
        "--channels-last", action="store_true", help="ours only: vision tower in channels_last"
    )
    parser.add_argument("--compile", action="store_true", help="ours only: Florence2LitModule(compile=True)")
    parser.add_argument("--no-reference-dynamic", action="store_true", help="stream: skip the third column")
    return parser.parse_args(argv)


def make_ours_step(module, device: torch.device, args: argparse.Namespace):
    model = module.model.to(device).train()
    if args.channels_last:
        model.vision_tower.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, lr=1e-5, weight_decay=0.05)

    def step(batch: Batch) -> float:
        optimizer.zero_grad(set_to_none=True)
        pixels = batch["pixel_values"]
        if args.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with autocast(device, args.bf16):
            loss = module({**batch, "pixel_values": pixels})[0]  # = Florence2LitModule.forward
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def make_reference_step(reference, device: torch.device, args: argparse.Namespace):
    reference.train()
    # The public fine-tuning examples: plain AdamW over all parameters, loss from the model's own `labels` path.
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-5, weight_decay=0.05)

    def step(batch: Batch) -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.bf16):
            loss = reference(**batch["reference"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def with_reference_inputs(batch: Batch, config) -> Batch:
    """Add the reference's inputs: `<image>` placeholders in the prompt and one image per sample."""
    batch = dict(batch)
    pixels = batch["pixel_values"]
    if "image_index" in batch:
        pixels = pixels.index_select(0, batch["image_index"])
    batch["reference"] = {
        **reference_inputs(
            batch["input_ids"], batch["attention_mask"], config.num_image_tokens, config.image_token_id
        ),
        "pixel_values": pixels,
    }
    return batch


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {
        k: (
            to_device(v, device)
            if isinstance(v, dict)
            else v.to(device)
            if isinstance(v, torch.Tensor)
            else v
        )
        for k, v in batch.items()
    }


def identical_batches(args: argparse.Namespace, config, vocab: int, count: int) -> list[Batch]:
    """Random images and token ids; half the batch right-padded, as a padded batch of mixed lengths is."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        size = args.batch_size
        input_ids = torch.randint(5, vocab, (size, args.prompt_length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[size // 2 :, args.prompt_length // 2 :] = 0
        input_ids = input_ids.masked_fill(attention_mask == 0, 1)
        labels = torch.randint(5, vocab, (size, args.target_length), generator=generator)
        labels[size // 2 :, args.target_length // 2 :] = -100
        pixels = torch.randn(size, 3, config.image_size, config.image_size, generator=generator)
        batch = {
            "pixel_values": pixels,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
        }
        batches.append(with_reference_inputs(batch, config))
    return batches


def pad_to(batch: Batch, prompt_length: int, target_length: int, pad_id: int) -> Batch:
    """Re-pad a dynamically padded batch to fixed lengths (labels with -100, so the loss is unchanged)."""

    def right_pad(tensor: torch.Tensor, length: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=value)

    return {
        **batch,
        "input_ids": right_pad(batch["input_ids"], prompt_length, pad_id),
        "attention_mask": right_pad(batch["attention_mask"], prompt_length, 0),
        "labels": right_pad(batch["labels"], target_length, -100),
    }


def stream_batches(args: argparse.Namespace, datamodule, count: int) -> tuple[list[Batch], tuple[int, int]]:
    """`count` batches of our training stream, and the dataset's longest prompt / target in tokens."""
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(count)]
    dataset, processor = datamodule.train_dataset, datamodule.processor
    longest_prompt = processor.tokenize_prompts([s.prompt for s in dataset.flat])["input_ids"].shape[1]
    longest_target = processor.tokenize_targets([s.target for s in dataset.flat]).shape[1]
    return batches, (longest_prompt, longest_target)


def tokens(batch: Batch) -> int:
    """Prompt + target positions actually computed (padding included): what the step pays for."""
    return batch["input_ids"].numel() + batch["labels"].numel()


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    env = environment(device, args.bf16)  # first: it sets the process up as our entry points do
    datamodule = synthetic_datamodule(
        args.image_size,
        args.batch_size,
        args.synthetic_images,
        bucket_batches=args.bucket_batches,
        tasks_per_image=args.tasks_per_image,
    )
    module = build_ours(
        args.preset,
        args.image_size,
        datamodule.tokenizer,
        args.vocab_size,
        args.activation_checkpointing,
        compile=args.compile,
    )
    config = module.model.config
    reference = reference_from(module.model, device)
    ours_step = make_ours_step(module, device, args)
    reference_step = make_reference_step(reference, device, args)
    count = args.warmup + args.steps
    result: dict[str, Any] = {
        "benchmark": "train_step",
        "preset": args.preset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "vocab_size": config.text.vocab_size,
        "activation_checkpointing": args.activation_checkpointing,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "tasks_per_image": args.tasks_per_image,
        **env,
    }

    if args.workload in ("identical", "both"):
        batches = [
            to_device(b, device) for b in identical_batches(args, config, config.text.vocab_size, count)
        ]
        sides = [
            Side("ours", lambda b: ours_step(b)),
            Side("reference", lambda b: reference_step(b)),
        ]
        interleave(sides, batches, device, args.warmup, measure_memory=True)
        ours, ref = sides
        rows = [[s.name, args.batch_size / s.median, max(s.peak_mib)] for s in sides]
        print_table(
            f"train step, identical padded tensors ({args.preset}, {args.image_size}px, batch {args.batch_size}, "
            f"prompt {args.prompt_length} + target {args.target_length} tokens)",
            ["side", "samples/s", "peak step MiB"],
            rows,
        )
        speedup = ref.median / ours.median
        memory_ratio = max(ours.peak_mib) / max(ref.peak_mib)
        print(f"speed ours/reference = {speedup:.3f}x, peak memory ours/reference = {memory_ratio:.3f}")
        result["identical"] = {
            "ours_samples_per_s": args.batch_size / ours.median,
            "reference_samples_per_s": args.batch_size / ref.median,
            "speedup": speedup,
            "ours_peak_mib": max(ours.peak_mib),
            "reference_peak_mib": max(ref.peak_mib),
            "memory_ratio": memory_ratio,
        }

    if args.workload in ("stream", "both"):
        raw, (longest_prompt, longest_target) = stream_batches(args, datamodule, count)
        pad_id = datamodule.tokenizer.pad_token_id
        dynamic = [to_device(with_reference_inputs(b, config), device) for b in raw]
        fixed = [
            to_device(
                with_reference_inputs(pad_to(b, longest_prompt, longest_target, pad_id), config), device
            )
            for b in raw
        ]
        pairs = list(zip(dynamic, fixed, strict=True))
        sides = [
            Side("ours (dynamic padding + bucketing)", lambda p: ours_step(p[0])),
            Side("reference (padded to dataset max)", lambda p: reference_step(p[1])),
        ]
        if not args.no_reference_dynamic:
            sides.append(Side("reference (our dynamic batches)", lambda p: reference_step(p[0])))
        interleave(sides, list(repeat(pairs, count)), device, args.warmup)
        samples = sum(b["input_ids"].shape[0] for b in dynamic[args.warmup :])
        images = sum(b["pixel_values"].shape[0] for b in dynamic[args.warmup :])
        positions = [sum(tokens(p[i]) for p in pairs[args.warmup :]) for i in (0, 1, 0)]
        rows = [[s.name, samples / s.total, pos] for s, pos in zip(sides, positions, strict=False)]
        print_table(
            f"train step, mixed-task stream ({args.preset}, {args.image_size}px, batch {args.batch_size}, "
            f"bucket window {args.bucket_batches}, {samples / images:.2f} samples per image, "
            f"dataset max prompt {longest_prompt} / target {longest_target})",
            ["side", "samples/s", "text positions"],
            rows,
        )
        speedup = sides[1].total / sides[0].total
        print(f"speed ours/reference(padded to max) = {speedup:.3f}x", end="")
        result["stream"] = {
            "ours_samples_per_s": samples / sides[0].total,
            "reference_max_padding_samples_per_s": samples / sides[1].total,
            "speedup_vs_max_padding": speedup,
            "samples_per_image": samples / images,
            "longest_prompt": longest_prompt,
            "longest_target": longest_target,
        }
        if len(sides) > 2:
            same_batches = sides[2].total / sides[0].total
            print(f", ours/reference(same dynamic batches) = {same_batches:.3f}x", end="")
            result["stream"]["reference_dynamic_samples_per_s"] = samples / sides[2].total
            result["stream"]["speedup_vs_same_batches"] = same_batches
        print()

    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
