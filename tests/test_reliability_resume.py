"""Crashes and restarts lose nothing: SIGKILL mid-epoch, re-run the same command, end bit-for-bit where an
uninterrupted run ends (float tolerance), every batch of the epoch trained exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import training as helpers
from tests.helpers.crash_train import read_trail, write_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    helpers.datamodule(path).prepare_data()
    return path


def _command(config: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "fit", "-c", str(config)]


def _run(config: Path) -> None:
    subprocess.run(_command(config), cwd=ROOT, env=ENV, check=True, timeout=600, capture_output=True)


def _run_until_killed(config: Path, run: Path, kill_at: int) -> None:
    """Start the run in its own process group; SIGKILL the whole group (DDP children too) at step `kill_at`."""
    proc = subprocess.Popen(
        _command(config),
        cwd=ROOT,
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            marker = run / "step"
            if marker.exists() and int(marker.read_text() or 0) >= kill_at:
                os.killpg(proc.pid, signal.SIGKILL)
                assert proc.wait(timeout=60) == -signal.SIGKILL
                return
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        pytest.fail("the run never reached the kill step")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _step(path: Path) -> int:
    return int(re.search(r"step=(\d+)", path.name).group(1))


def _corrupt_newest(checkpoints: Path) -> int:
    """Truncate last.ckpt and the newest step checkpoint; return the step the restart must fall back to."""
    steps = sorted({_step(p) for p in checkpoints.glob("*step=*.ckpt")})
    assert len(steps) >= 2, steps
    for path in [*checkpoints.glob("last*.ckpt"), *checkpoints.glob(f"*step={steps[-1]}*.ckpt")]:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return steps[-2]


def _check_resumed(
    straight: Path, crashed: Path, devices: int, attempts: int, resume_step: int | None = None
) -> None:
    for rank in range(devices):
        reference = read_trail(straight / f"seen.rank{rank}.jsonl")
        trails = [read_trail(crashed / f"attempt{i}.rank{rank}.jsonl") for i in range(attempts)]
        trails.append(read_trail(crashed / f"seen.rank{rank}.jsonl"))
        effective = trails[0]
        for number, trail in enumerate(trails[1:]):
            first = trail[0]["step"] - 1  # the step of the checkpoint this restart loaded
            assert first > 0, "the restart did not resume"
            if number == 0 and resume_step is not None:
                assert first == resume_step
            # Batches done after that checkpoint were lost with the process and are replayed, not skipped.
            effective = [e for e in effective if e["step"] <= first] + trail
        assert [(e["epoch"], e["index"]) for e in effective] == [(e["epoch"], e["index"]) for e in reference]
    a, b = torch.load(straight / "final.pt"), torch.load(crashed / "final.pt")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def _crash_and_restart(
    tmp_path: Path, synthetic: Path, devices: int, kills: tuple[int, ...], corrupt: bool, **config
) -> None:
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _run(write_config(straight, synthetic, devices, **config))
    run_config = write_config(crashed, synthetic, devices, **config)
    resume_step = None
    for attempt, kill_at in enumerate(kills):
        _run_until_killed(run_config, crashed, kill_at)  # the very same command every time
        assert not (crashed / "final.pt").exists()
        for rank in range(devices):
            (crashed / f"seen.rank{rank}.jsonl").rename(crashed / f"attempt{attempt}.rank{rank}.jsonl")
        if corrupt and attempt == 0:
            resume_step = _corrupt_newest(crashed / "checkpoints")
    _run(run_config)
    _check_resumed(straight, crashed, devices, len(kills), resume_step)


@pytest.mark.slow
def test_sigkill_late_in_epochs_twice_then_same_command_resumes_exactly(synthetic, tmp_path):
    # Epochs of 8 batches, a checkpoint every 3 steps, 20 steps: killed one batch before the end of epoch 0 and
    # again one before the end of epoch 1, the run must still train 8-batch epochs and end where the uninterrupted
    # run ends. The first restart also finds its newest checkpoints truncated and falls back to the previous one.
    _crash_and_restart(
        tmp_path, synthetic, devices=1, kills=(7, 15), corrupt=True, max_steps=20, epoch_length=32
    )


@pytest.mark.slow
def test_sigkill_ddp_two_processes_then_same_command_resumes_exactly(synthetic, tmp_path):
    _crash_and_restart(tmp_path, synthetic, devices=2, kills=(5,), corrupt=False)
