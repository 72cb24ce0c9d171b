"""Large payloads in the broker and a worker (issue 13, goal 4).

How many copies of a payload they hold at once (no more than two of any payload in one
process): each process's peak resident memory above what it held before the call (Linux:
VmHWM, reset through /proc/PID/clear_refs), with glibc told to map every buffer over
128 KiB on its own, so that a freed buffer leaves at once and the peak counts only what was
alive together. And whether they reuse the memory of one large message for the next
(madrpc/allocator.py) instead of faulting its pages in again."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from grid_support import Grid

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from bench_payload import MMAP_THRESHOLD_BYTES, peak_copies  # noqa: E402

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                       reason="needs Linux's resettable peak RSS"),
]

MIB = 1024 * 1024
PAYLOAD_BYTES = 8 * MIB
REUSE_CALLS = 10
ECHO_JS = "madrpc.register('echo', (x) => x);\n"


def test_a_large_round_trip_holds_one_copy_of_the_params_and_two_of_the_result(
    start_grid: Callable[..., Grid], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD_BYTES))   # for those started
    script = tmp_path / "echo.js"
    script.write_text(ECHO_JS)
    grid = start_grid(script)
    payload = "ab" * (PAYLOAD_BYTES // 2)
    with grid.client(timeout=60) as client:
        assert client.call("echo", [payload]) == payload   # warm: buffers, V8's heap

        copies = peak_copies({"broker": grid.broker.pid, "worker": grid.workers[0].pid},
                             lambda: client.call("echo", [payload]), PAYLOAD_BYTES)
    broker, worker = copies["broker"], copies["worker"]

    print(f"peak copies of an {PAYLOAD_BYTES // MIB} MiB payload: broker {broker:.2f}, "
          f"worker {worker:.2f}")
    # The params stay held until the answer (a request is re-sent if its worker dies), and
    # the result may exist twice for a moment (read off the link, then cut out of it).
    assert broker < 3.5
    assert worker < 3.5


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[7])


def test_large_round_trips_reuse_the_broker_and_workers_memory(
    start_grid: Callable[..., Grid], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    for variable in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(variable, raising=False)
    script = tmp_path / "echo.js"
    script.write_text(ECHO_JS)
    grid = start_grid(script)
    pids = {"broker": grid.broker.pid, "worker": grid.workers[0].pid}
    payload = "ab" * (MIB // 2)
    with grid.client(timeout=60) as client:
        for _ in range(3):
            assert client.call("echo", [payload]) == payload   # warm: buffers, V8's heap
        before = {name: minor_faults(pid) for name, pid in pids.items()}
        for _ in range(REUSE_CALLS):
            assert client.call("echo", [payload]) == payload
        per_call = {name: (minor_faults(pid) - before[name]) / REUSE_CALLS
                    for name, pid in pids.items()}

    print(f"page faults per 1 MiB round trip: {per_call}")
    # glibc's defaults fault each call's buffers in again: ~740 in the broker, ~480 here.
    assert per_call["broker"] < 128
    assert per_call["worker"] < 128
