"""Fine-tuning variants side by side: full, frozen vision, LoRA; peak training memory and samples/s on one batch.

The variants are the recipes' (`configs/finetune/variants/*.yaml`, read here). Each is built by the training
module from the same random weights (made in this process and written once to a temporary checkpoint standing in
for released Florence-2 weights) and trains on the same padded random batches: a warm-up step, then `--steps`
timed steps of forward + backward + AdamW (our `build_optimizer`, as training uses).

Each variant runs in a process of its own, so that one variant's peak cannot hide in another's, and the processes
take turns step by step (the order flipping every round), so that load from other processes on a shared machine
hits every variant alike. The peak is what training adds on top of the resident weights and batches, over all
steps including the warm-up (the step that allocates AdamW's moments): gradients + optimizer state + activations
+ temporaries. CUDA: `torch.cuda.max_memory_allocated` minus the allocation before the first step; CPU: the
kernel's peak RSS (`VmHWM`, reset before the first step) minus the RSS then (`benchmarks.common.PeakMemory`).
Ratios are against full fine-tuning in the same run.

    python -m benchmarks.finetune_memory --preset base --image-size 384 --batch-size 2 --steps 3
    python -m benchmarks.finetune_memory --preset base --image-size 768 --batch-size 8 --device cuda --bf16
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import (
    PeakMemory,
    autocast,
    build_ours,
    environment,
    print_json,
    print_table,
    synchronize,
    synthetic_tokenizer,
)
from benchmarks.train_step import identical_batches, to_device
from f2lightning.training.module import Florence2LitModule
from f2lightning.training.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
VARIANT_FILES = ROOT / "configs" / "finetune" / "variants"
# Full fine-tuning is the task file alone; the others layer a variant file's model settings over it.
VARIANTS = ("full", "frozen_vision", "lora")
# Imported once by the server that forks each variant's process (peft: the LoRA variant; skipped where missing).
# Not this module itself: run with `-m`, each process runs it again as its main module, and runpy warns when
# the module is already imported.
PRELOAD = ["benchmarks.common", "benchmarks.train_step", "f2lightning.training.module", "peft"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=24, help="padded prompt tokens")
    parser.add_argument("--target-length", type=int, default=48, help="padded target tokens")
    parser.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    return parser.parse_args(argv)


def variant_settings(variant: str) -> dict[str, Any]:
    """The `Florence2LitModule` arguments the variant's recipe file sets (`model:` section)."""
    if variant == "full":
        return {}
    return yaml.safe_load((VARIANT_FILES / f"{variant}.yaml").read_text())["model"]


def write_base(args: argparse.Namespace, path: Path) -> Path:
    """Random weights of the preset (its real vocabulary, so the LM head costs what it does), saved with their
    tokenizer in the released layout that `model.pretrained` reads."""
    module = build_ours(args.preset, args.image_size, synthetic_tokenizer())
    module.processor.save_pretrained(module.model.save_pretrained(path))
    del module
    gc.collect()
    return path


def serve(
    connection: Connection, args: argparse.Namespace, variant: str, checkpoint: str, device_name: str
) -> None:
    """One variant's process: build it from `checkpoint`, then run one training step each time `connection` says
    so, answering with the step's seconds; after the last step send its peak memory."""
    device = torch.device(device_name)
    environment(device, args.bf16)  # the allocator setting our entry points use
    module = Florence2LitModule(
        pretrained=checkpoint, image_size=args.image_size, **variant_settings(variant)
    )
    module._build(None)  # the module's own path: freezing, LoRA injection
    module.to(device).train()  # `train` keeps frozen parts in eval mode, as in a fit
    hp = module.hparams
    optimizer = build_optimizer(module.model, hp.lr, hp.weight_decay, tuple(hp.betas), hp.vision_lr_scale)
    config = module.model.config
    batches = [
        to_device(batch, device)
        for batch in identical_batches(args, config, config.text.vocab_size, args.warmup + args.steps)
    ]
    parameters = list(module.model.parameters())
    connection.send(
        {
            "trainable_params": sum(p.numel() for p in parameters if p.requires_grad),
            "total_params": sum(p.numel() for p in parameters),
        }
    )
    with PeakMemory(device) as memory:  # from before the first step, which allocates AdamW's moments
        for batch in batches:
            connection.recv()
            synchronize(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, args.bf16):
                loss = module(batch)[0]
            loss.backward()
            optimizer.step()
            synchronize(device)
            connection.send(time.perf_counter() - start)
    connection.send({"peak_mib": memory.peak_mib, "loss": loss.item()})


def measure(args: argparse.Namespace, checkpoint: Path, device: torch.device) -> dict[str, dict[str, Any]]:
    """Every variant in a process of its own, the processes taking turns step by step (order flipped each round,
    as `common.interleave` alternates sides), so that load from other processes hits all variants alike.

    The processes are forked from multiprocessing's forkserver, which has only imported `PRELOAD`: none starts
    with another's memory, thread pool or CUDA context, or pays for importing torch and Lightning again (8 s on
    2 busy cores).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    connections, processes = {}, []
    for variant in VARIANTS:
        ours, theirs = context.Pipe()
        process = context.Process(target=serve, args=(theirs, args, variant, str(checkpoint), str(device)))
        process.start()
        theirs.close()  # ours alone stays open here: a process that dies makes `recv` fail instead of waiting
        connections[variant] = ours
        processes.append(process)
    try:
        results = {variant: connection.recv() for variant, connection in connections.items()}
        seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for index in range(args.warmup + args.steps):
            for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
                connections[variant].send(True)
                elapsed = connections[variant].recv()
                if index >= args.warmup:
                    seconds[variant].append(elapsed)
        for variant, connection in connections.items():
            results[variant] |= connection.recv() | {
                "samples_per_s": args.batch_size / statistics.median(seconds[variant]),
                "step_seconds": seconds[variant],
            }
    except BaseException as error:
        for process in processes:  # the others wait for their next turn, which will not come
            process.kill()
        if isinstance(error, EOFError):
            raise RuntimeError("a variant's process died; its traceback is above") from None
        raise
    for process in processes:
        process.join()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    env = environment(device, args.bf16)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_base(args, Path(tmp))
        results = measure(args, checkpoint, device)
    full = results["full"]
    rows = [
        [
            variant,
            f"{r['trainable_params'] / 1e6:.2f}M ({r['trainable_params'] / r['total_params']:.2%})",
            r["peak_mib"],
            r["samples_per_s"],
            r["peak_mib"] / full["peak_mib"],
            r["samples_per_s"] / full["samples_per_s"],
        ]
        for variant, r in results.items()
    ]
    print_table(
        f"fine-tuning variants ({args.preset}, {args.image_size}px, batch {args.batch_size}, {args.warmup} warm-up + "
        f"{args.steps} steps, {device}{', bf16' if args.bf16 else ''}; peak = memory on top of the weights: "
        "gradients + AdamW state + activations)",
        ["variant", "trainable params", "peak MiB", "samples/s", "memory / full", "speed / full"],
        rows,
    )
    lora = results["lora"]
    print(
        f"LoRA / full: peak memory {lora['peak_mib'] / full['peak_mib']:.3f}x, "
        f"samples/s {lora['samples_per_s'] / full['samples_per_s']:.3f}x"
    )
    result = {
        "benchmark": "finetune_memory",
        "preset": args.preset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "variants": results,
        **env,
    }
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
