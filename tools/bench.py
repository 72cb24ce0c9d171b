"""MaDRPC benchmarks, each reported as a ratio to a baseline measured in the same run.

    python tools/bench.py              # everything (about two minutes)
    python tools/bench.py --only rpc   # just one section (see SECTIONS)

Sections:
  rpc      trivial JS call through the grid vs tools/echo_broker.py (bare pyzmq broker
           with echo workers), 1 and 64 requests in flight: req/s, p50/p99, grid/baseline
  pi       Monte Carlo pi job (50 x 1,000,000 samples via Client.map) with 1 vs 2 contexts,
           and its cost per sample against the same JS in one bare MiniRacer
  fanout   aggregate(50 x 1,000,000) fanned out in JS on 1 worker: 1 vs 2 contexts
  nested   1,000 nested no-op calls from JS (one after another, and all at once) vs
           1,000 direct client calls (one after another, and via Client.map)
  fresh    a trivial call with --fresh-context (a new V8 context per request) vs pooled
  metrics  throughput with metrics collection on vs off (64 in flight)
  curve    trivial calls, 1 and 64 in flight, through the same grid with CURVE vs without,
           and the bare echo broker with CURVE vs without (tools/bench_curve.py, ~100 s)
  stream   items/s of one generator streaming 20,000 small items (window 64 and 2,000) vs
           Client.map of 20,000 trivial calls (tools/bench_stream.py)
  scale    one broker with 1,000 simulated workers vs 10: registration, idle CPU and RSS,
           Client.map calls/s, _metrics/_info size and time, madrpc top frame time
           (tools/bench_scale.py, ~2 min)
  http     madrpc gateway, wrk at 1 and 64 connections, vs ZeroMQ (tools/bench_http.py)
  goals    issue 13's goals, each as MaDRPC/baseline beside its target: Client.call and
           Client.map vs multiprocessing.Pool(2) + one MiniRacer per process, 64 in flight
           vs the bare echo broker, the pi job vs bare V8, a 1 MiB round trip vs a raw echo
           (tools/bench_pool.py, tools/bench_payload.py; ~1 min; printed as its own table)
The machine is shared and noisy: read ratios, not absolute figures.
To compare two builds section by section (goal 5 of issue 13): tools/bench_against.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

import orjson
import zmq

ROOT = Path(__file__).resolve().parent.parent
PI_SCRIPT = ROOT / "examples" / "monte-carlo-pi" / "scripts" / "pi.js"
BENCH_SCRIPT = ROOT / "tools" / "bench.js"
SECTIONS = ("rpc", "pi", "fanout", "nested", "fresh", "metrics", "curve", "stream", "scale", "http",
            "goals")
OWN_TABLES = ("goals",)
"""Sections that print a table of their own, after the table of the others."""
CASE_HEADER = "| case | measured | baseline | ratio |\n|---|---|---|---|"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_on_sigterm() -> None:
    """From the main thread: let SIGTERM (``timeout``, a stopped job) unwind like Ctrl-C,
    so each process a benchmark started is stopped by the ``with`` that started it instead
    of running on after the benchmark is gone."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


@contextmanager
def process(*command: str) -> Iterator[subprocess.Popen[bytes]]:
    exit_on_sigterm()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def grid(
    script: Path, workers: int, contexts: int, broker_args: tuple[str, ...] = (),
    worker_args: tuple[str, ...] = (), client_options: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Broker and workers as separate processes; yields the frontend endpoint.
    ``client_options`` go to the Client that waits for the workers (CURVE keys)."""
    front = f"tcp://127.0.0.1:{free_port()}"
    back = f"tcp://127.0.0.1:{free_port()}"
    with ExitStack() as stack:
        stack.enter_context(process(
            sys.executable, "-m", "madrpc.cli", "broker", "--frontend", front, "--backend", back,
            "--log-level", "warning", *broker_args,
        ))
        for _ in range(workers):
            stack.enter_context(process(
                sys.executable, "-m", "madrpc.cli", "worker", "--script", str(script),
                "--broker", back, "--contexts", str(contexts), "--log-level", "warning",
                *worker_args,
            ))
        wait_for_workers(front, workers, **(client_options or {}))
        yield front


def wait_for_workers(front: str, count: int, timeout_s: float = 60,
                     **client_options: Any) -> None:
    from madrpc import Client

    deadline = time.monotonic() + timeout_s
    with Client(front, timeout=5, **client_options) as client:
        while time.monotonic() < deadline:
            ready = [w for w in client.call("_metrics")["workers"]
                     if w["contexts"] and w["credit"] > 0]
            if len(ready) >= count:
                return
            time.sleep(0.1)
    raise RuntimeError(f"{count} workers did not register within {timeout_s} s")


@contextmanager
def echo_baseline(workers: int, args: tuple[str, ...] = ()) -> Iterator[str]:
    front = f"tcp://127.0.0.1:{free_port()}"
    back = f"tcp://127.0.0.1:{free_port()}"
    with process(sys.executable, str(ROOT / "tools" / "echo_broker.py"), "--frontend", front,
                 "--backend", back, "--workers", str(workers), *args):
        time.sleep(1.0)   # echo workers register with a READY frame
        yield front


def load(endpoint: str, in_flight: int, duration_s: float, method: str = "noop",
         warmup_s: float = 0.5, keyed: bool = False, curve: Any = None) -> dict[str, float]:
    """Keep ``in_flight`` requests outstanding on one DEALER; req/s and latency percentiles.
    ``curve``: a :class:`madrpc.curve.ClientCurve` to connect with CURVE."""
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        from madrpc.curve import apply_client

        apply_client(dealer, curve)
    dealer.connect(endpoint)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    next_id = 0

    def send() -> None:
        nonlocal next_id
        next_id += 1
        options = b',"madrpc":{"idempotency_key":"k-%d"}' % next_id if keyed else b""
        frame = b'{"jsonrpc":"2.0","method":"%s","params":[%d],"id":%d%s}' % (
            method.encode(), next_id, next_id, options)
        sent[next_id] = time.perf_counter()
        dealer.send(frame)

    for _ in range(in_flight):
        send()
    start = time.perf_counter()
    measure_from = start + warmup_s
    end = measure_from + duration_s
    done = 0
    while True:
        frame = dealer.recv()
        now = time.perf_counter()
        reply_id = orjson.loads(frame)["id"]
        began = sent.pop(reply_id)
        if now >= measure_from:
            if now >= end:
                break
            latencies.append(now - began)
            done += 1
        send()
    dealer.close()
    latencies.sort()
    return {
        "req_s": done / duration_s,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def best_of(runs: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(runs))


# ------------------------------------------------------------------ sections


def bench_rpc(duration_s: float) -> list[str]:
    rows = []
    with echo_baseline(2) as front:
        baseline = {n: load(front, n, duration_s) for n in (1, 64)}
    with grid(BENCH_SCRIPT, workers=2, contexts=1) as front:
        measured = {n: load(front, n, duration_s) for n in (1, 64)}
        keyed = load(front, 64, duration_s, keyed=True)
    for n in (1, 64):
        g, b = measured[n], baseline[n]
        rows.append(
            f"| trivial call, {n:>2} in flight | grid {g['req_s']:8.0f} req/s, "
            f"p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms | baseline {b['req_s']:8.0f} "
            f"req/s, p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms | "
            f"**{g['req_s'] / b['req_s']:.0%}** of baseline |"
        )
    b = baseline[64]
    rows.append(
        f"| trivial call, 64 in flight, each with an idempotency key (as the Python client "
        f"sends) | grid {keyed['req_s']:8.0f} req/s, p50 {keyed['p50_ms']:.2f} ms, p99 "
        f"{keyed['p99_ms']:.2f} ms | baseline {b['req_s']:8.0f} req/s | "
        f"**{keyed['req_s'] / b['req_s']:.0%}** of baseline |"
    )
    return rows


def pi_job(front: str) -> float:
    from madrpc import Client

    with Client(front, timeout=300) as client:
        params = [{"samples": 1_000_000, "seed": seed} for seed in range(50)]
        start = time.perf_counter()
        results = client.map("monte_carlo_sample", params)
        elapsed = time.perf_counter() - start
    assert sum(r["total"] for r in results) == 50_000_000
    return elapsed


BARE_V8 = textwrap.dedent("""
    import sys, time
    from py_mini_racer import MiniRacer, init_mini_racer
    init_mini_racer(flags=())
    source = open(sys.argv[1]).read()
    start = source.index("function countInside")
    end = source.index("function integerParam")
    mr = MiniRacer()
    mr.eval(source[start:end])
    mr.eval("countInside(1000000, 99)")
    best = min(
        (lambda t0: (mr.eval("countInside(1000000, %d)" % seed), time.perf_counter() - t0)[1])(
            time.perf_counter())
        for seed in range(10))
    print(best / 1_000_000 * 1e9)
""")


def bench_pi(runs: int) -> list[str]:
    times = {}
    for contexts in (1, 2):
        with grid(PI_SCRIPT, workers=1, contexts=contexts) as front:
            pi_job(front)   # warm up the JIT in every context
            times[contexts] = best_of(runs, lambda: pi_job(front))
    bare_ns = float(subprocess.check_output([sys.executable, "-c", BARE_V8, str(PI_SCRIPT)]))
    grid_ns = times[1] / 50_000_000 * 1e9
    return [
        f"| pi job, 50 x 1M samples, 1 worker | 1 context {times[1]:.3f} s | 2 contexts "
        f"{times[2]:.3f} s | speed-up **{times[1] / times[2]:.2f}x** |",
        f"| cost per sample (1 context) | grid {grid_ns:.2f} ns | bare MiniRacer "
        f"{bare_ns:.2f} ns | grid/bare **{grid_ns / bare_ns:.2f}x** |",
    ]


def aggregate_job(front: str) -> float:
    from madrpc import Client

    with Client(front, timeout=300) as client:
        start = time.perf_counter()
        result = client.call("aggregate", {"numNodes": 50, "samplesPerNode": 1_000_000})
        elapsed = time.perf_counter() - start
    assert abs(result["piEstimate"] - 3.14159) < 0.01
    return elapsed


def bench_fanout(runs: int) -> list[str]:
    times = {}
    for contexts in (1, 2):
        with grid(PI_SCRIPT, workers=1, contexts=contexts) as front:
            aggregate_job(front)
            times[contexts] = best_of(runs, lambda: aggregate_job(front))
    return [
        f"| aggregate 50 x 1M (JS fan-out), 1 worker | 1 context {times[1]:.3f} s | "
        f"2 contexts {times[2]:.3f} s | speed-up **{times[1] / times[2]:.2f}x** |"
    ]


def bench_nested(runs: int) -> list[str]:
    from madrpc import Client

    calls = 1000
    with grid(BENCH_SCRIPT, workers=1, contexts=2) as front, Client(front, timeout=120) as client:
        client.call("nested_noop", {"calls": 100})

        def nested(parallel: bool) -> float:
            start = time.perf_counter()
            client.call("nested_noop", {"calls": calls, "parallel": parallel})
            return (time.perf_counter() - start) / calls

        def direct() -> float:
            start = time.perf_counter()
            for i in range(calls):
                client.call("noop", [i])
            return (time.perf_counter() - start) / calls

        def direct_map() -> float:
            start = time.perf_counter()
            client.map("noop", [[i] for i in range(calls)])
            return (time.perf_counter() - start) / calls

        sequential = best_of(runs, lambda: nested(False))
        parallel = best_of(runs, lambda: nested(True))
        one_by_one = best_of(runs, direct)
        mapped = best_of(runs, direct_map)
    return [
        f"| nested no-op call from JS, one after another | {sequential * 1e6:.0f} us per call "
        f"| direct client call {one_by_one * 1e6:.0f} us | nested/direct "
        f"**{sequential / one_by_one:.2f}x** |",
        f"| nested no-op calls from JS, 1,000 at once (Promise.all) | {parallel * 1e6:.0f} us "
        f"per call | Client.map {mapped * 1e6:.0f} us | nested/direct "
        f"**{parallel / mapped:.2f}x** |",
    ]


def bench_fresh(runs: int) -> list[str]:
    from madrpc import Client

    calls = 200
    per_call = {}
    for label, args in (("pooled", ()), ("fresh", ("--fresh-context",))):
        with grid(BENCH_SCRIPT, workers=1, contexts=1, worker_args=args) as front, \
                Client(front, timeout=60) as client:
            client.call("noop", [0])

            def sequential() -> float:
                start = time.perf_counter()
                for i in range(calls):
                    client.call("noop", [i])
                return (time.perf_counter() - start) / calls

            per_call[label] = best_of(runs, sequential)
    return [
        f"| trivial call, one at a time, --fresh-context | {per_call['fresh'] * 1e3:.2f} ms "
        f"per call | pooled context {per_call['pooled'] * 1e3:.2f} ms | fresh/pooled "
        f"**{per_call['fresh'] / per_call['pooled']:.1f}x** |"
    ]


def bench_metrics(duration_s: float, rounds: int = 4) -> list[str]:
    """Two grids up side by side (collection on, off); load runs alternate between them so
    that drift on a shared machine does not favour either."""
    samples: dict[str, list[float]] = {"on": [], "off": []}
    off = ("--no-metrics",)
    with grid(BENCH_SCRIPT, workers=2, contexts=1) as front_on, \
            grid(BENCH_SCRIPT, workers=2, contexts=1, broker_args=off,
                 worker_args=off) as front_off:
        for _ in range(rounds):
            samples["on"].append(load(front_on, 64, duration_s)["req_s"])
            samples["off"].append(load(front_off, 64, duration_s)["req_s"])
    on, off_rate = statistics.median(samples["on"]), statistics.median(samples["off"])
    return [
        f"| metrics collection, 64 in flight (median of {rounds} alternating runs) | on "
        f"{on:.0f} req/s | off {off_rate:.0f} req/s | cost **{(off_rate - on) / off_rate:+.1%}** |"
    ]


def run_section(name: str, duration_s: float, runs: int) -> list[str]:
    """The rows of one section; those in tools/bench_<part>.py are imported when run
    (tools/ is on sys.path when this runs as a script)."""
    runners: dict[str, Callable[[], list[str]]] = {
        "rpc": lambda: bench_rpc(duration_s),
        "pi": lambda: bench_pi(runs),
        "fanout": lambda: bench_fanout(runs),
        "nested": lambda: bench_nested(runs),
        "fresh": lambda: bench_fresh(runs),
        "metrics": lambda: bench_metrics(duration_s),
        "curve": lambda: import_module("bench_curve").bench_curve(duration_s, runs),
        "stream": lambda: import_module("bench_stream").bench_stream(runs),
        "scale": lambda: import_module("bench_scale").bench_scale(runs),
        "http": lambda: import_module("bench_http").bench_http(duration_s),
        "goals": lambda: import_module("bench_pool").bench_goals(duration_s, runs),
    }
    return list(runners[name]())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only these sections (repeatable)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    parser.add_argument("--runs", type=int, default=3,
                        help="repetitions (best is kept; median in the curve section)")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    sections = [n for n in sections if n not in OWN_TABLES] + [
        n for n in sections if n in OWN_TABLES]
    print(f"# MaDRPC bench  ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})")
    if sections[0] not in OWN_TABLES:
        print(CASE_HEADER)
    for index, name in enumerate(sections):
        if name in OWN_TABLES and index > 0:
            print()
        for row in run_section(name, args.duration, args.runs):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
