"""How many copies of a large payload the broker and a worker hold at once (issue 13,
goal 4: no more than two of any payload in one process). Measured as each process's peak
resident memory above what it held before the call (Linux: VmHWM, reset through
/proc/PID/clear_refs), with glibc told to map every buffer over 128 KiB on its own, so
that a freed buffer leaves at once and the peak counts only what was alive together."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from grid_support import Grid, Proc

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                       reason="needs Linux's resettable peak RSS"),
]

MIB = 1024 * 1024
PAYLOAD_BYTES = 8 * MIB
ECHO_JS = "madrpc.register('echo', (x) => x);\n"


def resident(pid: int) -> dict[str, int]:
    sizes = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                sizes[name] = int(value.split()[0]) * 1024
    return sizes


def peak_copies(procs: list[Proc], run: Callable[[], None]) -> list[float]:
    """Each process's peak above its resident memory before ``run``, in payloads."""
    before = []
    for proc in procs:
        with open(f"/proc/{proc.pid}/clear_refs", "w") as refs:
            refs.write("5")   # VmHWM := VmRSS
        before.append(resident(proc.pid)["VmRSS"])
    run()
    return [(resident(proc.pid)["VmHWM"] - base) / PAYLOAD_BYTES
            for proc, base in zip(procs, before, strict=True)]


def test_a_large_round_trip_holds_one_copy_of_the_params_and_two_of_the_result(
    start_grid: Callable[..., Grid], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))   # for the processes started
    script = tmp_path / "echo.js"
    script.write_text(ECHO_JS)
    grid = start_grid(script)
    payload = "ab" * (PAYLOAD_BYTES // 2)
    with grid.client(timeout=60) as client:
        assert client.call("echo", [payload]) == payload   # warm: buffers, V8's heap

        broker, worker = peak_copies([grid.broker, grid.workers[0]],
                                     lambda: client.call("echo", [payload]))

    print(f"peak copies of an {PAYLOAD_BYTES // MIB} MiB payload: broker {broker:.2f}, "
          f"worker {worker:.2f}")
    # The params stay held until the answer (a request is re-sent if its worker dies), and
    # the result may exist twice for a moment (read off the link, then cut out of it).
    assert broker < 3.5
    assert worker < 3.5
