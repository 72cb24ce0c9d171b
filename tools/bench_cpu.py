"""Where the CPU goes (issue 13, goal 2): CPU time per request of each process, trivial
calls at 64 in flight, the grid against the bare echo broker in the same run.

    python tools/bench_cpu.py              # about 30 s
    python tools/bench_cpu.py --in-flight 256 --runs 5 -- --prefetch 64   # after --: worker options

The grid is a broker and 1 worker with 2 contexts (tools/bench.py's ``grid``); the
baseline tools/echo_broker.py with 2 echo workers. Each process's user + system time
(psutil, all its threads, ZeroMQ's I/O threads included) over ``LOAD_S`` of load, divided
by the requests answered: the load generator (this process), then the broker, the worker
and its engine processes (or the echo broker with its echo workers). Two cores divided by
the sum is the rate the setup would reach if no process ever waited for another; the last
column is the share of the machine's CPU time left idle meanwhile (``/proc/stat``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BENCH_SCRIPT, echo_baseline, grid, load  # noqa: E402

IN_FLIGHT = 64
"""Requests kept outstanding (``--in-flight``)."""
LOAD_S = 3.0
WARMUP_S = 1.0


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def grid_roles() -> dict[str, list[psutil.Process]]:
    """This process's broker and worker (started by ``bench.grid``), the worker's engines."""
    roles: dict[str, list[psutil.Process]] = {"load": [psutil.Process()], "broker": [],
                                              "worker": [], "engines": []}
    for child in psutil.Process().children():
        command = child.cmdline()
        if "broker" in command:
            roles["broker"].append(child)
        elif "worker" in command:
            roles["worker"].append(child)
            roles["engines"] += child.children()
    return roles


def echo_roles() -> dict[str, list[psutil.Process]]:
    """This process and tools/echo_broker.py with its echo worker processes."""
    echo = [child for child in psutil.Process().children() if "echo_broker" in " ".join(
        child.cmdline())]
    return {"load": [psutil.Process()], "echo broker + workers":
            echo + [p for e in echo for p in e.children(recursive=True)]}


def machine_times() -> tuple[int, int]:
    """(idle, all) CPU time of the machine so far, in clock ticks (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks[:8])   # idle + iowait; user .. steal


def per_request_us(endpoint: str, roles: Callable[[], dict[str, list[psutil.Process]]],
                   in_flight: int = IN_FLIGHT) -> tuple[float, dict[str, float], float]:
    """(req/s, CPU µs per request by role, idle share of the machine) over one load run."""
    load(endpoint, in_flight, WARMUP_S)
    found = roles()
    before = {name: sum(_cpu_s(p) for p in procs) for name, procs in found.items()}
    idle_before, all_before = machine_times()
    result = load(endpoint, in_flight, LOAD_S, warmup_s=0)
    idle_after, all_after = machine_times()
    requests = result["req_s"] * LOAD_S
    return result["req_s"], {
        name: (sum(_cpu_s(p) for p in procs) - before[name]) / requests * 1e6
        for name, procs in found.items()
    }, (idle_after - idle_before) / max(1, all_after - all_before)


def show(label: str, rate: float, usage: dict[str, float], idle: float) -> str:
    total = sum(usage.values())
    parts = ", ".join(f"{name} {us:.1f}" for name, us in usage.items())
    ceiling = (os.cpu_count() or 1) / total * 1e6
    return (f"| {label} | {rate:,.0f} req/s | {parts} | **{total:.1f}** µs | "
            f"{ceiling:,.0f} req/s ({rate / ceiling:.0%}) | {idle:.0%} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("worker_args", nargs="*", help="options for madrpc-worker (after --)")
    args = parser.parse_args(argv)
    print(f"| setup, {args.in_flight} in flight | rate | CPU µs per request, by process | sum | "
          "rate if never waiting (share reached) | CPU idle |\n|---|---|---|---|---|---|")
    with grid(BENCH_SCRIPT, workers=1, contexts=2, worker_args=tuple(args.worker_args)) as front:
        for _ in range(args.runs):
            figures = per_request_us(front, grid_roles, args.in_flight)
            print(show("grid: broker, 1 worker, 2 engines", *figures), flush=True)
    with echo_baseline(2) as front:
        for _ in range(args.runs):
            figures = per_request_us(front, echo_roles, args.in_flight)
            print(show("bare echo broker, 2 echo workers", *figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
