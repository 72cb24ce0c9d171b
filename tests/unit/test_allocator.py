"""glibc's thresholds fixed for a server role's process (madrpc/allocator.py): freed large
buffers are kept for the next message instead of being faulted in again. Each case runs in
a process of its own, since the allocator's settings are the whole process's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt"),
]

CHURN = """
import resource, sys
from madrpc.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
def message_round():   # a few 1 MiB buffers alive together, then all freed
    held = [b"m" * (1 << 20) for _ in range(3)]
    del held
for _ in range(3):
    message_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    message_round()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(tuned, faults / 20)
"""


def churn(mode: str, **environment: str) -> tuple[bool, float]:
    """(whether the thresholds were set, page faults per round of 3 x 1 MiB buffers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], env={**env, **environment},
                         capture_output=True, text=True, check=True, timeout=30).stdout
    tuned, faults = out.split()
    return tuned == "True", float(faults)


def test_fixed_thresholds_keep_freed_megabyte_buffers_for_reuse() -> None:
    tuned, tuned_faults = churn("tuned")
    _, default_faults = churn("default")

    assert tuned
    assert tuned_faults < 16, f"{tuned_faults} page faults per round with the thresholds set"
    assert default_faults > 4 * max(tuned_faults, 16), (
        f"glibc's defaults faulted only {default_faults} per round: the case shows nothing")


@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_glibc_environment_variables_take_precedence(variable: str) -> None:
    tuned, _ = churn("tuned", **{variable: str(128 * 1024)})

    assert not tuned
