"""Every benchmark script runs end to end at its smallest settings and prints its JSON line (no timing checks).

The scripts' `run(parse_args([...]))` is called in this process: starting an interpreter per script would spend
most of the time importing torch and transformers (`finetune_memory` still runs each variant in a process of its
own: that is its method).
"""

from __future__ import annotations

import importlib
import json

import pytest

SMALL = ["--preset", "tiny", "--image-size", "64", "--batch-size", "2", "--device", "cpu"]
SCRIPTS = {
    "train_step": [*SMALL, "--steps", "1", "--warmup", "0", "--prompt-length", "6", "--target-length", "6",
                   "--tasks-per-image", "2"],
    "generation": [*SMALL, "--repeats", "1", "--max-new-tokens", "2", "--tasks", "<CAPTION>", "--questions-per-image", "2",
                   "--breakdown"],
    "data_pipeline": [*SMALL, "--batches", "1"],
    "efficiency": [*SMALL, "--steps", "1", "--warmup", "0", "--matmul-size", "64"],
    "finetune_memory": [*SMALL, "--steps", "1", "--warmup", "0", "--prompt-length", "6", "--target-length", "6"],
    "parsing": ["--tokens", "64", "--long-chars", "2000", "--repeats", "1"],
    "onnx_runtime": ["--preset", "tiny", "--image-size", "64", "--batch-size", "2", "--repeats", "1",
                     "--max-new-tokens", "2", "--num-beams", "1", "2", "--threads", "1"],
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_prints_json(script, capsys):
    if script == "onnx_runtime":
        pytest.importorskip("onnxruntime")  # the onnx extra
    module = importlib.import_module(f"benchmarks.{script}")
    module.run(module.parse_args(SCRIPTS[script]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("BENCHMARK_JSON ")]
    assert len(lines) == 1
    result = json.loads(lines[0].removeprefix("BENCHMARK_JSON "))
    assert result["benchmark"] == script
    if script == "generation":  # --breakdown: the floor is the sum of the timed parts
        parts = result["tasks"]["<CAPTION>"]["breakdown_s"]
        assert parts.pop("floor") == pytest.approx(sum(parts.values()))
        assert set(parts) == {"image_encoder", "bart_encoder", "decoder_2_passes"}
    if script == "finetune_memory":  # each variant ran in its own subprocess and reported back
        trainable = {variant: r["trainable_params"] for variant, r in result["variants"].items()}
        assert trainable["lora"] < trainable["frozen_vision"] < trainable["full"]
    if script == "onnx_runtime":  # both runtimes answered with the same tokens
        assert all(setting["same_output"] for setting in result["num_beams"].values())
