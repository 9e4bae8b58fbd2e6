"""Efficiency: achieved FLOP/s of our train step ÷ this machine's measured dense matmul FLOP/s (same run).

FLOPs of one forward + backward are counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls,
convolutions and attention; elementwise work counts zero, so this is a model-FLOPs utilization). The matmul
peak is a large square matmul in the train step's dtype, timed interleaved with the train steps. On CUDA the
spec peak (`--peak-tflops`, H200 bf16 dense ≈ 989) is reported too.

    python -m benchmarks.efficiency --preset base --batch-size 2 --steps 3
    python -m benchmarks.efficiency --preset base --device cuda --bf16 --batch-size 32 --peak-tflops 989
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    Side,
    autocast,
    build_ours,
    environment,
    interleave,
    print_json,
    print_table,
    synthetic_tokenizer,
)
from benchmarks.train_step import identical_batches, make_ours_step, to_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=24)
    parser.add_argument("--target-length", type=int, default=48)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="spec dense peak for the dtype, if known"
    )
    return parser.parse_args(argv)


def train_step_flops(module, batch: dict[str, Any], device: torch.device, bf16: bool) -> int:
    """Forward + backward FLOPs of one step (the optimizer's elementwise update is not counted)."""
    with FlopCounterMode(display=False) as counter:
        with autocast(device, bf16):
            loss = module(batch)[0]
        loss.backward()
    module.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    env = environment(device, args.bf16)  # first: it sets the process up as our entry points do
    module = build_ours(
        args.preset, args.image_size, synthetic_tokenizer(), None, args.activation_checkpointing
    )
    config = module.model.config
    batches = [
        to_device(b, device)
        for b in identical_batches(args, config, config.text.vocab_size, args.steps + args.warmup)
    ]
    module.model.to(device).train()
    flops = train_step_flops(module, batches[0], device, args.bf16)
    step = make_ours_step(module, device, args)

    size = args.matmul_size
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    matmuls = 10 if device.type == "cuda" else 2

    def matmul(_: object) -> None:
        for _ in range(matmuls):
            torch.mm(a, b)

    sides = [Side("train step", step), Side("matmul", matmul)]
    interleave(sides, batches, device, args.warmup)
    achieved = flops / sides[0].median
    matmul_rate = matmuls * 2 * size**3 / sides[1].median
    rows = [
        ["train step (ours)", flops / 1e9, achieved / 1e9, achieved / matmul_rate],
        [
            f"{size}x{size} matmul ({str(dtype).removeprefix('torch.')})",
            matmuls * 2 * size**3 / 1e9,
            matmul_rate / 1e9,
            1.0,
        ],
    ]
    print_table(
        f"efficiency ({args.preset}, {args.image_size}px, batch {args.batch_size}, "
        f"prompt {args.prompt_length} + target {args.target_length} tokens)",
        ["work", "GFLOP", "GFLOP/s", "of matmul"],
        rows,
    )
    result = {
        "benchmark": "efficiency",
        "preset": args.preset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        **env,
        "step_gflop": flops / 1e9,
        "achieved_gflops": achieved / 1e9,
        "matmul_gflops": matmul_rate / 1e9,
        "fraction_of_matmul": achieved / matmul_rate,
        "samples_per_s": args.batch_size / sides[0].median,
    }
    if args.peak_tflops:
        result["mfu_vs_spec"] = achieved / (args.peak_tflops * 1e12)
        print(f"MFU vs spec peak {args.peak_tflops} TFLOP/s: {result['mfu_vs_spec']:.1%}")
    print(f"achieved / measured matmul: {achieved / matmul_rate:.1%}")
    print_json(result)
    return result


if __name__ == "__main__":
    run(parse_args())
