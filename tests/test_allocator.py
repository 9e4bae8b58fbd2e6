"""`keep_freed_cpu_memory`: freed tensor memory is reused instead of re-faulted from the kernel.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from f2lightning.allocator import DISABLE_VARIABLE, keep_freed_cpu_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")

# Page faults of a forward-like step (three live 64 MiB tensors, then freed), summed over its last 8 of 24 runs: the
# heap takes a varying number of steps to hold blocks that fit, as a model's first iterations do. Over 100 fresh
# processes of 48 steps the last step that faulted was step 12 at the latest (0-based 11; measured), and a CI run
# that read steps 9-12 failed on it, so the window starts well after that.
PROBE = """
import resource, torch
from f2lightning.allocator import keep_freed_cpu_memory
kept = keep_freed_cpu_memory()
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16 * 2**20); b = a + 1; c = a * b; del a, b, c
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, sum([faults() for _ in range(24)][-8:]))
"""


def run_probe(**environment: str) -> tuple[bool, int]:
    env = {**os.environ, **environment}
    if "GLIBC_TUNABLES" not in environment:
        env.pop("GLIBC_TUNABLES", None)
    output = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    kept, faults = output.stdout.split()
    return kept == "True", int(faults)


def test_freed_memory_is_reused_without_page_faults():
    kept, kept_faults = run_probe()
    off, default_faults = run_probe(**{DISABLE_VARIABLE: "0"})
    assert kept and not off
    # 4 KiB pages: 8 x 49152 faults by default (fewer with transparent huge pages always on); none when reused.
    assert default_faults >= 100
    assert kept_faults < default_faults / 10


def test_malloc_settings_of_the_user_are_left_alone():
    kept, faults = run_probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")
    assert not kept
    assert faults >= 100  # their setting (trim everything) stands: the freed tensor went back to the kernel


def test_limit_must_fit_mallopt():
    with pytest.raises(ValueError, match="limit_bytes"):
        keep_freed_cpu_memory(2**31)
