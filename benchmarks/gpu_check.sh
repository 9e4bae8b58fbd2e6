#!/usr/bin/env bash
# GPU check (no downloads, synthetic inputs): base preset train step in bf16 autocast on CUDA (< 5 minutes),
# then batched generation (< 3.5 minutes more).
# Prints each benchmark's table and a `BENCHMARK_JSON {...}` line: samples/s ours vs transformers, peak
# memory (torch.cuda.max_memory_allocated), and MFU against the H200 bf16 dense spec (989 TFLOP/s) and a
# measured 8192^2 bf16 matmul.   Usage: bash benchmarks/gpu_check.sh [python]
# On an offline GPU machine whose image has PyTorch but not all of our requirements, carry the wheels that
# scripts/download_wheels.sh fetches and put them first on PYTHONPATH (the command is in that script's header).
set -u
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1
status=0
# Efficiency first: it is the number the check is for. Each step is time-boxed so one hang cannot eat the budget.
timeout 110 "$PY" -m benchmarks.efficiency --preset base --device cuda --bf16 --batch-size 32 --steps 10 \
    --warmup 3 --matmul-size 8192 --peak-tflops 989 || status=1
timeout 130 "$PY" -m benchmarks.train_step --preset base --device cuda --bf16 --batch-size 32 --steps 10 \
    --warmup 3 --synthetic-images 256 || status=1
# The same stream with two tasks per image: what sharing the image encoding gives on a GPU.
timeout 60 "$PY" -m benchmarks.train_step --preset base --device cuda --bf16 --batch-size 32 --steps 10 \
    --warmup 3 --synthetic-images 256 --workload stream --tasks-per-image 2 --no-reference-dynamic || status=1
# After the 5-minute train-step check: batched beam-3 generation, where a CPU cannot tell what kernel fusion and
# launch overhead change on a GPU. Eager first (with the floor of the model's own passes: on a GPU the Python of
# transformers' beam search may weigh more than on a CPU), then the compiled image encoder (compile time untimed).
timeout 90 "$PY" -m benchmarks.generation --preset base --device cuda --bf16 --batch-size 16 --repeats 3 \
    --breakdown || status=1
timeout 120 "$PY" -m benchmarks.generation --preset base --device cuda --bf16 --batch-size 16 --repeats 3 \
    --compile || status=1
exit $status
