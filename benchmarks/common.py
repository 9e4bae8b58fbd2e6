"""Shared helpers: paired models with identical weights, interleaved timing, peak memory, result printing.

Every benchmark builds *our* `Florence2` and transformers' `Florence2ForConditionalGeneration` from the same
weights (ours → `save_pretrained` → transformers' `from_pretrained`), then times both in the same process,
alternating between them, so that load from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Florence2ForConditionalGeneration

from f2lightning.allocator import keep_freed_cpu_memory
from f2lightning.model import Florence2, Florence2Config


# ---------------------------------------------------------------------------------------------- models
def build_ours(
    preset: str,
    image_size: int,
    tokenizer,
    vocab_size: int | None = None,
    activation_checkpointing: bool = False,
    seed: int = 0,
    compile: bool = False,
):
    """`Florence2LitModule` with its model built by the module's own code path (vocab padding, checkpointing,
    compilation).

    `vocab_size` defaults to the preset's (51289 for base, i.e. the real Florence-2 LM head); it only grows to
    fit the tokenizer, so the small offline tokenizer does not make the LM head unrealistically cheap.
    """
    from f2lightning.training.module import Florence2LitModule

    torch.manual_seed(seed)
    config = Florence2Config.preset(preset, image_size=image_size)
    vocab = max(vocab_size or config.text.vocab_size, len(tokenizer))
    config = config.replace(
        text={"vocab_size": -(-vocab // 64) * 64}, image_token_id=tokenizer.convert_tokens_to_ids("<image>")
    )
    module = Florence2LitModule(
        preset=preset, activation_checkpointing=activation_checkpointing, compile=compile
    )
    module._build(tokenizer, config)
    return module


def reference_from(ours: Florence2, device: torch.device) -> Florence2ForConditionalGeneration:
    """transformers' Florence-2 with bit-identical weights: ours → `save_pretrained` → `from_pretrained`."""
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        reference = Florence2ForConditionalGeneration.from_pretrained(
            tmp, attn_implementation="sdpa", dtype=torch.float32
        )
    return reference.to(device)


def reference_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, num_image_tokens: int, image_token_id: int
) -> dict[str, torch.Tensor]:
    """transformers' Florence-2 wants `<image>` placeholders in `input_ids` where the image tokens go."""
    image_ids = input_ids.new_full((input_ids.shape[0], num_image_tokens), image_token_id)
    return {
        "input_ids": torch.cat([image_ids, input_ids], dim=1),
        "attention_mask": torch.cat([torch.ones_like(image_ids), attention_mask], dim=1),
    }


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- memory
def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


class PeakMemory:
    """Peak extra memory of a region, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` over the region minus what was allocated on entry.
    CPU: tracemalloc does not see torch's allocations, so we use the kernel's own peak resident set size
    (`VmHWM`), reset on entry by writing 5 to `/proc/self/clear_refs` after `malloc_trim` hands freed heap
    pages back; the result is the peak RSS during the region minus the RSS on entry. It is exact (no sampling
    gap) but counts every allocation in the process, so nothing else may run during the region.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = float("nan")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self._base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_kib("VmHWM") * 1024
        self.peak_mib = (peak - self._base) / 2**20


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Side:
    """One contestant: a name and a callable running one unit of work (a step, a generate call) on an input."""

    name: str
    run: Callable[[Any], Any]
    seconds: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def total(self) -> float:
        return sum(self.seconds)


def interleave(
    sides: list[Side],
    inputs: list[Any],
    device: torch.device,
    warmup: int = 1,
    measure_memory: bool = False,
) -> None:
    """Run every input on every side, alternating sides and flipping the order each input.

    `warmup` first inputs are run untimed (lazy init, optimizer state allocation, allocator warm-up).
    """
    for index, item in enumerate(inputs):
        order = sides if index % 2 == 0 else sides[::-1]
        for side in order:
            memory = PeakMemory(device) if measure_memory and index >= warmup else contextlib.nullcontext()
            synchronize(device)
            with memory:
                start = time.perf_counter()
                side.run(item)
                synchronize(device)
                elapsed = time.perf_counter() - start
            if index >= warmup:
                side.seconds.append(elapsed)
                if measure_memory:
                    side.peak_mib.append(memory.peak_mib)


def repeat(items: list[Any], count: int) -> Iterator[Any]:
    for index in range(count):
        yield items[index % len(items)]


# ---------------------------------------------------------------------------------------------- output
def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[_fmt(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for number, row in enumerate(cells):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_json(record: dict[str, Any]) -> None:
    """One machine-readable line, prefixed so tooling can grep it out of the human-readable output."""
    print("BENCHMARK_JSON " + json.dumps(record, sort_keys=True))


def environment(device: torch.device, bf16: bool) -> dict[str, Any]:
    """Set the process up as our entry points do (`keep_freed_cpu_memory`) and describe it for the JSON line.

    Both contestants share the process, so both get the same allocator: the ratios compare the models' work.
    """
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bf16": bf16,
        "freed_cpu_memory_kept": keep_freed_cpu_memory(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# ---------------------------------------------------------------------------------------------- data
def synthetic_datamodule(
    image_size: int,
    batch_size: int,
    num_images: int = 64,
    bucket_batches: int = 0,
    num_workers: int = 0,
    cache_dir: str | None = None,
    tasks_per_image: int = 1,
):
    """Our datamodule over the synthetic multitask set (all tasks mixed), created once and cached on disk.

    Images, records and the offline tokenizer are written by the datamodule's own `prepare_data`; nothing is
    downloaded.
    """
    from pathlib import Path

    from f2lightning.data.datamodule import Florence2DataModule

    root = Path(cache_dir or tempfile.gettempdir()) / f"f2lightning_bench_synthetic_{num_images}"
    datamodule = Florence2DataModule(
        synthetic_dir=str(root),
        synthetic_images=num_images,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        bucket_batches=bucket_batches,
        tasks_per_image=tasks_per_image,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def synthetic_tokenizer():
    """The offline BPE tokenizer of the cached synthetic set (trained in seconds on first use)."""
    return synthetic_datamodule(image_size=64, batch_size=1).tokenizer
