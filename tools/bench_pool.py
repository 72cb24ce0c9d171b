"""The do-it-yourself baseline of issue 13, and the ``goals`` section of tools/bench.py.

    python tools/bench_pool.py         # the pool's own figures, no grid

The baseline is what a user with one machine would write instead of MaDRPC: a
``multiprocessing.Pool(2)`` whose processes each hold one ``py_mini_racer.MiniRacer``
running the same JavaScript files as the grid (tools/bench.js and
examples/monte-carlo-pi/scripts/pi.js, evaluated unchanged after a three-line stand-in for
``madrpc.register``), called with ``MiniRacer.call`` (JSON in, JSON out, like the grid).
V8 starts with the engines' speed-relevant flags (``init_mini_racer(flags=())``: no
``--single-threaded``), so the pi loop runs at the same speed in both.

* single call: ``pool.apply`` of one trivial call at a time, p50 of ``LATENCY_SAMPLES``;
* many small calls: ``pool.map`` of ``MAP_CALLS`` trivial calls with Pool.map's own default
  chunksize (ceil(calls / (4 x processes)) = 1,250: what a user gets without asking);
* pi job: ``pool.map`` of ``PI_CALLS`` x ``monte_carlo_sample({samples: 1e6, seed})`` with
  chunksize 1 (each item is several ms of work: bigger chunks only unbalance the processes);
* bare V8: the same ``PI_CALLS`` calls one after another inside one pool process, timed
  there (no IPC): V8 on one core, the ideal that N contexts divide by N;
* bare V8 on both cores: each pool process runs half of those calls at the same time,
  timed in there (the slower half counts): what the machine's two cores give bare V8 in
  practice, shown beside the ideal (V8's own background threads, and anything else
  running, take their share).

The ``goals`` section (:func:`bench_goals`) measures MaDRPC the same way in the same run
(a broker and 1 worker with 2 contexts, one default ``madrpc.Client``: idempotency keys on,
``Client.map`` with up to 1,000 in flight; a 1-context grid for the pi job; the single call
and ``Client.map`` also on an embedded ``LocalGrid`` of 2 contexts, whose broker and worker
are threads of the measuring process, as for ``madrpc run``; the single call also on a grid
whose broker and worker keep their own threads on one CPU, ``--cpu PINNED_CPU``: see
:mod:`madrpc.affinity`), the rate at
64 in flight with tools/bench.py's ``load`` (unkeyed) against that grid and against
tools/echo_broker.py (2 echo workers), and the 1 MiB round trip (tools/bench_payload.py).
It prints each goal of issue 13 as measured / baseline = ratio beside its target. Each
figure is the best of ``--runs`` rounds in which MaDRPC and its baseline alternate (noise
on a shared machine only ever adds time).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = (ROOT / "tools" / "bench.js", ROOT / "examples" / "monte-carlo-pi" / "scripts" / "pi.js")
REGISTER_STAND_IN = "globalThis.madrpc = {register(name, fn) { globalThis[name] = fn; }};"
"""What the scripts need of MaDRPC's runtime to load: ``register`` makes each function a
global that ``MiniRacer.call`` can name."""
POOL_PROCESSES = 2
TRIVIAL_METHOD = "noop"
PI_METHOD = "monte_carlo_sample"
PI_CALLS = 50
PI_SAMPLES_PER_CALL = 1_000_000
PI_CHUNKSIZE = 1
HALVES_ATTEMPTS = 5
MAP_CALLS = 10_000
LATENCY_SAMPLES = 1_000
WARMUP_CALLS = 200
POOL_MAP_CHUNKS_PER_PROCESS = 4
PINNED_CPU = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
"""The CPU the pinned grid's broker and worker keep their own threads on (``--cpu``);
None where a process cannot choose its CPUs (no such row then)."""
"""multiprocessing.Pool.map's default: ceil(len / (4 x processes)) items per chunk."""


def pool_map_chunksize(items: int, processes: int = POOL_PROCESSES) -> int:
    return math.ceil(items / (POOL_MAP_CHUNKS_PER_PROCESS * processes))


def pi_params() -> list[dict[str, int]]:
    return [{"samples": PI_SAMPLES_PER_CALL, "seed": seed} for seed in range(PI_CALLS)]


def check_pi(results: list[dict[str, int]]) -> None:
    total = sum(result["total"] for result in results)
    if total != PI_CALLS * PI_SAMPLES_PER_CALL:
        raise RuntimeError(f"pi job counted {total} samples")


def p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


# ------------------------------------------------------------------ inside a pool process

_racer: Any = None
"""This process's MiniRacer (set by :func:`_start_racer`)."""


def _start_racer(sources: list[str]) -> None:
    global _racer
    from py_mini_racer import MiniRacer, init_mini_racer

    init_mini_racer(flags=())
    _racer = MiniRacer()
    _racer.eval(REGISTER_STAND_IN)
    for source in sources:
        _racer.eval(source)


def call_trivial(value: int) -> Any:
    return _racer.call(TRIVIAL_METHOD, value)


def call_pi(params: dict[str, int]) -> Any:
    return _racer.call(PI_METHOD, params)


def pi_serially(params: list[dict[str, int]]) -> float:
    """Seconds for every call of the pi job, one after another in this process."""
    started = time.perf_counter()
    check_pi([call_pi(item) for item in params])
    return time.perf_counter() - started


def pi_half_serially(params: list[dict[str, int]]) -> tuple[int, float]:
    """(this process's pid, seconds for ``params`` one after another here)."""
    started = time.perf_counter()
    results = [call_pi(item) for item in params]
    elapsed = time.perf_counter() - started
    if sum(result["total"] for result in results) != len(params) * PI_SAMPLES_PER_CALL:
        raise RuntimeError("pi job counted the wrong number of samples")
    return os.getpid(), elapsed


# ------------------------------------------------------------------ the parent's side


class PoolBaseline:
    """The pool, started and warmed up; each method is one measurement."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def warm_up(self) -> None:
        """Every process has loaded its scripts and JIT-compiled the pi loop."""
        self._pool.map(call_trivial, range(WARMUP_CALLS), chunksize=1)
        self.pi_job_s()

    def apply_p50_ms(self, samples: int = LATENCY_SAMPLES) -> float:
        latencies = []
        for value in range(samples):
            started = time.perf_counter()
            self._pool.apply(call_trivial, (value,))
            latencies.append(time.perf_counter() - started)
        return p50(latencies) * 1000

    def map_calls_s(self, calls: int = MAP_CALLS) -> float:
        started = time.perf_counter()
        results = self._pool.map(call_trivial, range(calls), chunksize=pool_map_chunksize(calls))
        elapsed = time.perf_counter() - started
        if results != list(range(calls)):
            raise RuntimeError("Pool.map returned wrong results")
        return calls / elapsed

    def pi_job_s(self) -> float:
        started = time.perf_counter()
        results = self._pool.map(call_pi, pi_params(), chunksize=PI_CHUNKSIZE)
        elapsed = time.perf_counter() - started
        check_pi(results)
        return elapsed

    def bare_pi_s(self) -> float:
        """The pi job on one core, in one process (the other one idles)."""
        return float(self._pool.apply(pi_serially, (pi_params(),)))

    def bare_pi_halves_s(self) -> float:
        """Each process runs half of the pi job at the same time, timed in there: what this
        machine's two cores give bare V8 right now (the slower half counts). Measured again
        in the rare case one process took both halves."""
        params = pi_params()
        halves = [params[0::2], params[1::2]]
        for _ in range(HALVES_ATTEMPTS):
            timed = self._pool.map(pi_half_serially, halves, chunksize=1)
            if len({pid for pid, _ in timed}) == len(halves):
                return max(elapsed for _, elapsed in timed)
        raise RuntimeError("one pool process kept taking both halves of the pi job")


@contextmanager
def pool_baseline() -> Iterator[PoolBaseline]:
    """A warmed-up :class:`PoolBaseline`; ``spawn``, so no zmq state is forked."""
    sources = [path.read_text(encoding="utf-8") for path in SCRIPTS]
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(POOL_PROCESSES, initializer=_start_racer, initargs=(sources,)) as pool:
        baseline = PoolBaseline(pool)
        baseline.warm_up()
        yield baseline


# ------------------------------------------------------------------ MaDRPC, measured alike


def client_call_p50_ms(client: Any, samples: int = LATENCY_SAMPLES) -> float:
    latencies = []
    for value in range(samples):
        started = time.perf_counter()
        client.call(TRIVIAL_METHOD, [value])
        latencies.append(time.perf_counter() - started)
    return p50(latencies) * 1000


def client_map_calls_s(client: Any, calls: int = MAP_CALLS) -> float:
    started = time.perf_counter()
    results = client.map(TRIVIAL_METHOD, [[value] for value in range(calls)])
    elapsed = time.perf_counter() - started
    if results != list(range(calls)):
        raise RuntimeError("Client.map returned wrong results")
    return calls / elapsed


def client_pi_job_s(client: Any) -> float:
    started = time.perf_counter()
    results = client.map(PI_METHOD, pi_params())
    elapsed = time.perf_counter() - started
    check_pi(results)
    return elapsed


# ------------------------------------------------------------------ the goals table

GOALS_HEADER = ("| goal | MaDRPC | baseline | ratio | target | met |\n"
                "|---|---|---|---|---|---|")
LOAD_IN_FLIGHT = 64


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    baseline: str
    ratio: float
    target: float | None
    """None: shown for comparison, not a goal."""
    at_most: bool = True
    """The ratio must be at most the target (else at least)."""
    percent: bool = False

    def _show(self, ratio: float) -> str:
        return f"{ratio:.0%}" if self.percent else f"{ratio:.2f}x"

    def row(self) -> str:
        if self.target is None:
            target, met = "–", "–"
        else:
            target = ("≤ " if self.at_most else "≥ ") + self._show(self.target)
            reached = self.ratio <= self.target if self.at_most else self.ratio >= self.target
            met = "yes" if reached else "**no**"
        return (f"| {self.name} | {self.measured} | {self.baseline} | "
                f"**{self._show(self.ratio)}** | {target} | {met} |")


def goals(best_of: dict[str, float],
          copies: dict[str, dict[str, float]] | None = None) -> list[Goal]:
    """The table, from the best figure of each measurement (names as in bench_goals), and
    the peak copies per process of one payload as params and as result (bench_payload)."""
    b = best_of
    ideal_2 = b["bare"] / 2
    chunks = pool_map_chunksize(MAP_CALLS)
    return [
        Goal("1. single call p50, one at a time (noop)", f"Client.call {b['call']:.3f} ms",
             f"Pool.apply {b['apply']:.3f} ms", b["call"] / b["apply"], 1.0),
        *([] if "pinned_call" not in b else [Goal(
            f"1. the same, broker and worker on one CPU (`--cpu {PINNED_CPU}`)",
            f"Client.call {b['pinned_call']:.3f} ms", f"Pool.apply {b['pinned_apply']:.3f} ms",
            b["pinned_call"] / b["pinned_apply"], 1.0)]),
        Goal("1. the same, embedded `LocalGrid` (broker and worker in threads)",
             f"Client.call {b['local_call']:.3f} ms", f"Pool.apply {b['local_apply']:.3f} ms",
             b["local_call"] / b["local_apply"], 1.0),
        Goal(f"2. {MAP_CALLS:,} trivial calls, calls/s", f"Client.map {b['map']:,.0f}",
             f"Pool.map (chunksize {chunks:,}) {b['pool_map']:,.0f}",
             b["map"] / b["pool_map"], 1.5, at_most=False),
        Goal("2. the same, embedded `LocalGrid`", f"Client.map {b['local_map']:,.0f}",
             f"Pool.map (chunksize {chunks:,}) {b['local_pool_map']:,.0f}",
             b["local_map"] / b["local_pool_map"], 1.5, at_most=False),
        Goal(f"2. trivial calls, {LOAD_IN_FLIGHT} in flight, req/s", f"{b['grid_load']:,.0f}",
             f"bare echo broker {b['echo_load']:,.0f}", b["grid_load"] / b["echo_load"], 0.7,
             at_most=False, percent=True),
        Goal(f"3. pi job {PI_CALLS} x 1M samples, 2 contexts", f"{b['pi_2']:.3f} s",
             f"ideal: bare V8 / 2 = {ideal_2:.3f} s", b["pi_2"] / ideal_2, 1.1),
        Goal(f"3. pi job {PI_CALLS} x 1M samples, 1 context", f"{b['pi_1']:.3f} s",
             f"bare V8, one core {b['bare']:.3f} s", b["pi_1"] / b["bare"], 1.1),
        Goal("(pi job, 2 contexts, against the pool)", f"{b['pi_2']:.3f} s",
             f"Pool.map (chunksize {PI_CHUNKSIZE}) {b['pool_pi']:.3f} s",
             b["pi_2"] / b["pool_pi"], None),
        Goal("(pi job, 2 contexts, against bare V8 on both cores at once)",
             f"{b['pi_2']:.3f} s", f"2 processes, half each {b['bare_halves']:.3f} s",
             b["pi_2"] / b["bare_halves"], None),
        Goal("4. 1 MiB params -> 1 MiB result, round trip p50", f"{b['grid_mib']:.2f} ms",
             f"raw pyzmq echo via bare broker {b['raw_mib']:.2f} ms",
             b["grid_mib"] / b["raw_mib"], 2.0),
        *([] if copies is None else [Goal(
            "4. copies of one 8 MiB payload held at once, most in one process",
            "; ".join(f"as {which}: " + ", ".join(f"{name} {n:.1f}" for name, n in by.items())
                      for which, by in copies.items()),
            "–", max(n for by in copies.values() for n in by.values()), 2.0)]),
    ]


HIGHER_IS_BETTER = frozenset({"map", "pool_map", "local_map", "local_pool_map", "grid_load",
                              "echo_load"})


def bench_goals(duration_s: float, runs: int) -> list[str]:
    """Issue 13's goals: MaDRPC against the pool, the bare broker and bare V8, one run."""
    from bench import BENCH_SCRIPT, PI_SCRIPT, echo_baseline, grid, load
    from bench_payload import (
        copies_supported,
        grid_copies,
        grid_echo_ms,
        make_payload,
        mapped_buffers,
        raw_echo_ms,
        request_frame,
    )

    from madrpc import Client, LocalGrid

    payload = make_payload()
    frame = request_frame(payload)
    samples: dict[str, list[float]] = defaultdict(list)

    def measure(name: str, how: Callable[[], float]) -> None:
        samples[name].append(how())

    with pool_baseline() as pool:

        def against_pool(prefix: str, client: Any) -> None:
            """A single call and ``Client.map`` on ``client``, each beside the pool's."""
            measure(f"{prefix}call", lambda: client_call_p50_ms(client))
            measure(f"{prefix}apply", pool.apply_p50_ms)
            measure(f"{prefix}map", lambda: client_map_calls_s(client))
            measure(f"{prefix}pool_map", pool.map_calls_s)

        with echo_baseline(2) as echo, grid(BENCH_SCRIPT, workers=1, contexts=2) as front, \
                Client(front, timeout=120) as client:
            client_map_calls_s(client, WARMUP_CALLS)
            for _ in range(max(1, runs)):
                against_pool("", client)
                measure("grid_load", lambda: load(front, LOAD_IN_FLIGHT, duration_s)["req_s"])
                measure("echo_load", lambda: load(echo, LOAD_IN_FLIGHT, duration_s)["req_s"])
                measure("grid_mib", lambda: grid_echo_ms(client, payload))
                measure("raw_mib", lambda: raw_echo_ms(echo, frame))
        if PINNED_CPU is not None:
            pinned = ("--cpu", str(PINNED_CPU))
            with grid(BENCH_SCRIPT, workers=1, contexts=2, broker_args=pinned,
                      worker_args=pinned) as front, Client(front, timeout=120) as client:
                client_call_p50_ms(client)   # warm up
                for _ in range(max(1, runs)):
                    measure("pinned_call", lambda: client_call_p50_ms(client))
                    measure("pinned_apply", pool.apply_p50_ms)
        with LocalGrid(str(BENCH_SCRIPT), contexts=2) as local:
            local_client = local.client(timeout_s=120)
            client_map_calls_s(local_client, WARMUP_CALLS)
            for _ in range(max(1, runs)):
                against_pool("local_", local_client)
        for contexts in (2, 1):
            with grid(PI_SCRIPT, workers=1, contexts=contexts) as front, \
                    Client(front, timeout=300) as client:
                client_pi_job_s(client)   # warm up the JIT in every context
                for _ in range(max(1, runs)):
                    measure(f"pi_{contexts}", lambda: client_pi_job_s(client))
                    measure("bare", pool.bare_pi_s)
                    if contexts == 2:
                        measure("pool_pi", pool.pi_job_s)
                        measure("bare_halves", pool.bare_pi_halves_s)
    copies = None
    if copies_supported():
        with mapped_buffers(), grid(BENCH_SCRIPT, workers=1, contexts=1) as front:
            copies = grid_copies(front)
    best_of = {name: max(values) if name in HIGHER_IS_BETTER else min(values)
               for name, values in samples.items()}
    return [GOALS_HEADER, *(goal.row() for goal in goals(best_of, copies))]


def main() -> int:
    with pool_baseline() as pool:
        print(f"Pool({POOL_PROCESSES}) + MiniRacer: apply p50 {pool.apply_p50_ms():.3f} ms, "
              f"map of {MAP_CALLS:,} (chunksize {pool_map_chunksize(MAP_CALLS)}) "
              f"{pool.map_calls_s():,.0f} calls/s, pi job {pool.pi_job_s():.3f} s, "
              f"bare V8 one core {pool.bare_pi_s():.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
