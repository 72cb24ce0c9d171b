"""``--cpu N``: a broker's and a worker's own threads stay on CPU N, the worker's engines
keep every CPU the worker had, and the grid serves as before. Real processes; each
thread's CPUs are read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from grid_support import SIMPLE_JS, Spawner, scaled, wait_for_workers

from madrpc import Client
from madrpc.affinity import supported

pytestmark = pytest.mark.skipif(not supported(), reason="needs sched_setaffinity")


def thread_cpus(pid: int) -> dict[int, frozenset[int]]:
    """The CPUs each thread of ``pid`` may run on (its ``Cpus_allowed_list``)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found[int(task.name)] = parse_ranges(line.split(":", 1)[1].strip())
    return found


def parse_ranges(text: str) -> frozenset[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def test_broker_and_worker_keep_their_threads_on_one_cpu_and_engines_keep_all(
        spawn: Spawner) -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    cpu = str(min(allowed))
    endpoints = spawn.endpoints()
    broker = spawn.broker(endpoints, "--cpu", cpu)
    worker = spawn.worker(endpoints, SIMPLE_JS, 2, "--cpu", cpu)
    wait_for_workers(endpoints.frontend, 1)
    with Client(endpoints.frontend, timeout=scaled(10)) as client:
        assert client.call("add", [2, 3]) == 5
    for proc in (broker, worker):
        threads = thread_cpus(proc.pid)
        assert len(threads) >= 2   # its loop and ZeroMQ's I/O thread at least
        assert set(threads.values()) == {frozenset({int(cpu)})}, proc.name
    engines = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert len(engines) == 2
    for engine in engines:
        assert set(thread_cpus(int(engine)).values()) == {allowed}


def test_a_cpu_the_process_may_not_use_is_refused_in_one_line(tmp_path: Path) -> None:
    outside = str(max(os.sched_getaffinity(0)) + 1)
    done = subprocess.run(
        [sys.executable, "-m", "madrpc.cli", "broker", "--frontend", f"ipc://{tmp_path}/f",
         "--backend", f"ipc://{tmp_path}/b", "--cpu", outside],
        capture_output=True, text=True, timeout=scaled(30), stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert f"--cpu {outside}: this process may only use CPUs" in done.stderr
