"""The ``scale`` section of tools/bench.py: one broker with 1,000 workers, against 10.

    python tools/bench_scale.py                      # 1,000 vs 10 simulated workers
    python tools/bench_scale.py --workers 2000 --procs 8
    python tools/bench.py --only scale               # the same rows in the bench table

Two real brokers (``python -m madrpc.cli broker``, or ``--broker COMMAND``; TCP loopback)
run side by side: one gets ``--workers`` simulated workers, the other
``--baseline-workers``. A simulated worker is a real ZeroMQ DEALER speaking the worker
protocol (docs/protocol.md §5): READY with its methods and credit, a HEARTBEAT with a
snapshot shaped like the Python worker's at the broker's interval, and a REPLY to every
REQUEST echoing its params (method ``echo``). ``--procs`` processes host them all, each
an epoll loop over its sockets' ZeroMQ descriptors (about 0.3 ms of CPU per worker per
second while idle), so 1,000 of them fit beside the broker on 2 cores.

Measured on each broker, and reported as 1,000 / 10:

1. time until every worker's READY is acknowledged (all start at once), and the broker's
   CPU time meanwhile;
2. broker CPU % (psutil, over ``--idle`` s) and RSS while only heartbeats flow, and the
   ``_ping`` round trip then (it shows stalls of the broker's loop);
3. ``Client.map`` of ``--calls`` echo calls, 1,000 (the client's default) and 64 in
   flight: calls/s, broker CPU time per call, and requests per REQUEST message (the
   broker batches what goes to one worker), median of ``--runs`` alternating rounds;
4. ``_metrics`` and ``_info``: reply bytes, round trip (p50 of ``--samples``) and the
   broker's CPU time per call;
5. ``madrpc top`` fed that ``_metrics``: CPU time to parse it and render one frame at
   80x24 and 200x50 (``top_view.render``, what the monitor does each refresh), the
   ``--once`` text, and the Prometheus text ``--metrics-http`` renders from it each second.

Times measured in this process are CPU times (``thread_time``): the machine may be busy.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import resource
import select
import shlex
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import psutil
import zmq
from bench import free_port, process

from madrpc import Client
from madrpc import protocol as p
from madrpc.metrics import CallStats
from madrpc.prometheus import exposition
from madrpc.top_view import ViewState, render

METHOD = "echo"
CREDIT = 33
"""What a Python worker with one context keeps issued while requests are quick (§5.5)."""
SETTLE_S = 2.0
"""After registration, before the idle window: the first heartbeats settle."""
SCREENS = ((80, 24), (200, 50))


# ---------------------------------------------------------------- simulated workers


def heartbeat_body(served: int, rate: float) -> bytes:
    """A heartbeat snapshot shaped like the Python worker's (worker_figures.py)."""
    stats = CallStats()
    for latency_s in (0.0002, 0.0003, 0.0005):
        stats.record(latency_s, None)
    return orjson.dumps({
        "busy": 0, "contexts": 1, "ready_contexts": 1, "held": 0, "queued": 0, "parked": 0,
        "req_per_s": rate, "engine_restarts": 0, "stream_items": 0, "cpu_percent": 1.0,
        "rss_bytes": 60_000_000, "served": served, "totals": stats.to_wire(),
        "methods": {METHOD: stats.to_wire()},
    })


def simulate(backend: str, first: int, count: int, interval_s: float, credit: int,
             go: Any, stop: Any, report: Any, tally: Any, slot: int) -> None:
    """Run workers ``first`` .. ``first + count - 1`` in this process until ``stop``.
    ``tally[slot]`` counts the requests answered, ``tally[slot + 1]`` the REQUEST messages
    that brought them (shared memory, this process's own slots).
    Puts ("registered", last READY sent, last ack, re-registrations) on the ``report`` queue
    once every one of them is acknowledged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = zmq.Context()
    context.max_sockets = count + 64
    go.wait()
    sockets: list[zmq.Socket[Any]] = []
    by_fd: dict[int, int] = {}
    poller = select.epoll()
    readies = []
    for n in range(count):
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(backend)
        sockets.append(sock)
        fd = sock.getsockopt(zmq.FD)
        by_fd[fd] = n
        poller.register(fd, select.EPOLLIN)
        readies.append(p.json_message(p.READY, {
            "id": f"sim-{first + n}", "host": "bench", "pid": os.getpid(), "contexts": 1,
            "credit": credit, "methods": [METHOD], "version": "bench-scale", "v8": "",
            "script": "-",
        }))
        sock.send_multipart(readies[n])
    sent_at = time.monotonic()
    acked = [0.0] * count
    pending = count
    served = 0
    reconnects = 0
    beats = deque((time.monotonic() + interval_s * (n + 1) / count, n) for n in range(count))
    body = heartbeat_body(0, 0.0)
    body_at, served_then = time.monotonic(), 0

    def drain(n: int) -> None:
        nonlocal pending, served, reconnects
        sock = sockets[n]
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            command = frames[1] if len(frames) > 1 else b""
            if command == p.REQUEST:
                reply = [p.TAG, p.REPLY, p.encode_credit(len(frames) // 3)]
                for i in range(2, len(frames), 3):
                    params = orjson.loads(frames[i + 2]).get("params")
                    reply += [p.decode_request_meta(frames[i]).key,
                              b'"result":' + orjson.dumps(params)]
                sock.send_multipart(reply)
                served += len(frames) // 3
                tally[slot] = served
                tally[slot + 1] += 1
            elif command == p.HEARTBEAT and not acked[n]:
                acked[n] = time.monotonic()
                pending -= 1
                if pending == 0:
                    report.put(("registered", sent_at, max(acked), reconnects))
            elif command == p.DISCONNECT:   # the broker forgot us: register again
                reconnects += 1
                sock.send_multipart(readies[n])

    while not stop.is_set():
        now = time.monotonic()
        if now - body_at >= interval_s:
            body = heartbeat_body(served, (served - served_then) / (now - body_at))
            body_at, served_then = now, served
        while beats and beats[0][0] <= now:
            _, n = beats.popleft()
            sockets[n].send_multipart([p.TAG, p.HEARTBEAT, body])
            drain(n)   # a send may have taken the descriptor's wake-up: look now
            beats.append((now + interval_s, n))
        wait = min(0.1, max(0.0, beats[0][0] - time.monotonic())) if beats else 0.1
        for fd, _ in poller.poll(wait):
            drain(by_fd[fd])
    for sock in sockets:
        sock.send_multipart(p.message(p.DISCONNECT, b"bench over"))
        sock.close()
    context.term()


@dataclass
class Grid:
    """A broker and its simulated workers."""

    workers: int
    front: str
    back: str
    broker: psutil.Process
    procs: list[Any] = field(default_factory=list)
    tally: Any = None
    """Requests answered and REQUEST messages, two slots per simulator process."""
    register_s: float = 0.0
    register_cpu_s: float = 0.0
    """Broker CPU time spent while the workers registered."""
    sent_s: float = 0.0
    """From the start to the last READY sent (the simulators' own share of register_s)."""
    reconnects: int = 0

    def sim_cpu_s(self) -> float:
        return sum(_cpu_s(psutil.Process(proc.pid)) for proc in self.procs)

    def answered(self) -> tuple[int, int]:
        """(requests answered, REQUEST messages they came in) so far."""
        return sum(self.tally[0::2]), sum(self.tally[1::2])


BROKER = (sys.executable, "-m", "madrpc.cli", "broker")


@contextmanager
def grid(workers: int, procs: int, interval_s: float,
         broker_command: tuple[str, ...] = BROKER) -> Iterator[Grid]:
    """A broker process and ``workers`` simulated workers in ``procs`` processes; yields
    once every worker is registered (``register_s``: from their start to the last ack)."""
    front = f"tcp://127.0.0.1:{free_port()}"
    back = f"tcp://127.0.0.1:{free_port()}"
    spawn = multiprocessing.get_context("spawn")
    go, stop, report = spawn.Event(), spawn.Event(), spawn.Queue()
    with ExitStack() as stack:
        broker = stack.enter_context(process(
            *broker_command, "--frontend", front, "--backend", back, "--log-level", "warning",
            "--heartbeat-interval", str(interval_s),
        ))
        procs = max(1, min(procs, workers))
        shares = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
        state = Grid(workers, front, back, psutil.Process(broker.pid))
        state.tally = spawn.RawArray("q", 2 * len(shares))
        first = 0
        for i, share in enumerate(shares):
            sim = spawn.Process(target=simulate, daemon=True, args=(
                back, first, share, interval_s, CREDIT, go, stop, report, state.tally, 2 * i))
            sim.start()
            state.procs.append(sim)
            first += share
        stack.callback(_stop_sims, state.procs, stop, report)
        with Client(front, timeout=30) as client:
            client.call("_ping")   # the broker is up
        cpu = _cpu_s(state.broker)
        started = time.monotonic()
        go.set()
        last = started
        for _ in shares:
            _, sent_at, last_ack, reconnects = _next_report(report, state.procs, started + 120)
            last = max(last, last_ack)
            state.sent_s = max(state.sent_s, sent_at - started)
            state.reconnects += reconnects
        state.register_s = last - started
        state.register_cpu_s = _cpu_s(state.broker) - cpu
        with Client(front, timeout=30) as client:
            registered = client.call("_metrics")["broker"]["workers"]
        if registered != workers:
            raise RuntimeError(f"{registered} workers registered, {workers} expected")
        yield state


def _next_report(report: Any, procs: list[Any], deadline: float) -> tuple[Any, ...]:
    """The next report of a simulator process; RuntimeError if one died or time ran out."""
    while time.monotonic() < deadline:
        try:
            return tuple(report.get(timeout=0.5))
        except queue.Empty:
            if not all(proc.is_alive() for proc in procs):
                raise RuntimeError("a simulated-worker process died") from None
    raise RuntimeError("the simulated workers did not register in time")


def _stop_sims(procs: list[Any], stop: Any, report: Any) -> None:
    stop.set()
    for sim in procs:
        sim.join(10)
        if sim.is_alive():
            sim.kill()
    report.close()


# ---------------------------------------------------------------- measurements


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def idle(grid_: Grid, idle_s: float) -> dict[str, float]:
    """Broker CPU % and RSS over ``idle_s`` of heartbeats only; the simulators' CPU too."""
    time.sleep(SETTLE_S)
    broker, sims = _cpu_s(grid_.broker), grid_.sim_cpu_s()
    started = time.monotonic()
    time.sleep(idle_s)
    elapsed = time.monotonic() - started
    return {
        "cpu_pct": (_cpu_s(grid_.broker) - broker) / elapsed * 100,
        "sim_cpu_pct": (grid_.sim_cpu_s() - sims) / elapsed * 100,
        "rss_mib": grid_.broker.memory_info().rss / 2**20,
    }


def round_trips(front: str, method: str, samples: int, broker: psutil.Process | None = None,
                min_s: float = 1.0) -> tuple[list[float], int, float]:
    """Calls of a built-in on a bare DEALER, one at a time: seconds per call (sorted), its
    reply's bytes, and (with ``broker``) the broker's CPU seconds per call, over at least
    ``samples`` calls and ``min_s`` (psutil counts CPU time in 10 ms ticks)."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(front)
    times: list[float] = []
    size, cpu, n = 0, 0.0, 0
    first = time.perf_counter()
    try:
        while n <= samples or (broker is not None and time.perf_counter() - first < min_s):
            if n == 1:   # the first one connects
                first, cpu = time.perf_counter(), _cpu_s(broker) if broker else 0.0
            started = time.perf_counter()
            dealer.send(b'{"jsonrpc":"2.0","method":"%s","id":%d}' % (method.encode(), n))
            reply = dealer.recv()
            if n:
                times.append(time.perf_counter() - started)
            size = len(reply)
            n += 1
        cpu = (_cpu_s(broker) - cpu) / len(times) if broker else 0.0
    finally:
        dealer.close()
    return sorted(times), size, cpu


def dispatch(grid_: Grid, calls: int, in_flight: int) -> dict[str, float]:
    """Client.map of ``calls`` echo calls: calls/s, broker CPU per call, and how many
    requests a REQUEST message carried on average."""
    with Client(grid_.front, timeout=120) as client:
        client.call(METHOD, [0])
        cpu = _cpu_s(grid_.broker)
        answered, messages = grid_.answered()
        started = time.perf_counter()
        results = client.map(METHOD, ([i] for i in range(calls)), max_in_flight=in_flight)
        elapsed = time.perf_counter() - started
        cpu = _cpu_s(grid_.broker) - cpu
        answered_now, messages_now = grid_.answered()
    if results[:3] != [[0], [1], [2]] or len(results) != calls:
        raise RuntimeError("the echo workers answered something else")
    return {"calls_s": calls / elapsed, "cpu_us": cpu / calls * 1e6,
            "batch": (answered_now - answered) / max(1, messages_now - messages)}


def per_call(function: Callable[[], Any], samples: int) -> float:
    """Median CPU seconds of ``samples`` calls (this thread's: the machine may be busy)."""
    times = []
    for _ in range(samples):
        started = time.thread_time()
        function()
        times.append(time.thread_time() - started)
    return statistics.median(times)


def views(front: str, samples: int) -> dict[str, float]:
    """What ``madrpc top`` and the Prometheus page do with one real ``_metrics``."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(front)
    dealer.send(b'{"jsonrpc":"2.0","method":"_metrics","id":1}')
    frame = dealer.recv()
    dealer.close()
    figures: dict[str, float] = {"parse": per_call(lambda: orjson.loads(frame), samples)}
    snapshot = orjson.loads(frame)["result"]
    for width, height in SCREENS:
        figures[f"{width}x{height}"] = per_call(
            lambda w=width, h=height: render(snapshot, ViewState(), w, h, front,
                                             clock="12:00:00"), samples)
    figures["once"] = per_call(
        lambda: render(snapshot, ViewState(unicode=False), 160, 10_000, front), samples)
    text = exposition(snapshot, {})
    figures["prom"] = per_call(lambda: exposition(snapshot, {}), samples)
    figures["prom_bytes"] = len(text.encode())
    return figures


# ---------------------------------------------------------------- the section


def measure(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    sizes = (args.workers, args.baseline_workers)
    found: dict[int, dict[str, Any]] = {n: {} for n in sizes}
    with ExitStack() as stack:
        grids = {}
        for n in sorted(sizes):   # the small grid first: it idles while the big one starts
            g = grids[n] = stack.enter_context(grid(n, args.procs, args.interval,
                                                    tuple(shlex.split(args.broker))))
            found[n]["register_s"] = g.register_s
            found[n]["register_cpu_s"] = g.register_cpu_s
            found[n]["reconnects"] = g.reconnects
            found[n].update(idle(g, args.idle))
            pings, _, _ = round_trips(g.front, "_ping", 200)
            found[n]["ping_p50"], found[n]["ping_p99"] = pings[100], pings[198]
        for in_flight in (1000, 64):
            runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
            for round_ in range(args.runs):
                for n in sizes if round_ % 2 == 0 else sizes[::-1]:
                    runs[n].append(dispatch(grids[n], args.calls, in_flight))
            for n in sizes:
                for figure in ("calls_s", "cpu_us", "batch"):
                    found[n][f"{figure}_{in_flight}"] = statistics.median(
                        run[figure] for run in runs[n])
        for n in sizes:
            for method in ("_metrics", "_info"):
                times, size, cpu = round_trips(grids[n].front, method, args.samples,
                                               grids[n].broker)
                found[n][method] = (statistics.median(times), size, cpu)
            found[n]["views"] = views(grids[n].front, args.samples)
            found[n]["sim_cpu_s"] = grids[n].sim_cpu_s()
    return found


def rows_for(found: dict[int, dict[str, Any]], big: int, small: int, runs: int,
             calls: int, idle_s: float) -> list[str]:
    b, s = found[big], found[small]

    def row(case: str, measured: str, baseline: str, ratio: float | str) -> str:
        shown = f"**{ratio:.2f}x**" if isinstance(ratio, float) else ratio
        return f"| {case} | {big} workers: {measured} | {small}: {baseline} | {shown} |"

    rows = [
        row("scale: all workers registered (READY to last acknowledgement, all at once; "
            "broker CPU meanwhile)",
            f"{b['register_s']:.2f} s, CPU {b['register_cpu_s']:.2f} s",
            f"{s['register_s']:.3f} s, CPU {s['register_cpu_s']:.2f} s",
            b["register_s"] / s["register_s"]),
        row(f"scale: broker idle, heartbeats only ({idle_s:.0f} s, psutil)",
            f"CPU {b['cpu_pct']:.1f}%, RSS {b['rss_mib']:.0f} MiB",
            f"CPU {s['cpu_pct']:.1f}%, RSS {s['rss_mib']:.0f} MiB",
            f"CPU {b['cpu_pct'] - s['cpu_pct']:+.1f} points, RSS "
            f"**{b['rss_mib'] / s['rss_mib']:.2f}x**"),
        row("scale: _ping round trip while idle (200 calls)",
            f"p50 {b['ping_p50'] * 1e3:.2f} ms, p99 {b['ping_p99'] * 1e3:.2f} ms",
            f"p50 {s['ping_p50'] * 1e3:.2f} ms, p99 {s['ping_p99'] * 1e3:.2f} ms",
            b["ping_p99"] / s["ping_p99"]),
    ]
    for in_flight in (1000, 64):
        rows.append(row(
            f"scale: Client.map of {calls:,} echo calls, {in_flight} in flight "
            f"(median of {runs} alternating runs)",
            f"{b[f'calls_s_{in_flight}']:,.0f} calls/s, broker "
            f"{b[f'cpu_us_{in_flight}']:.0f} us CPU per call, "
            f"{b[f'batch_{in_flight}']:.1f} per REQUEST",
            f"{s[f'calls_s_{in_flight}']:,.0f} calls/s, broker "
            f"{s[f'cpu_us_{in_flight}']:.0f} us CPU per call, "
            f"{s[f'batch_{in_flight}']:.1f} per REQUEST",
            b[f"calls_s_{in_flight}"] / s[f"calls_s_{in_flight}"]))
    for method in ("_metrics", "_info"):
        (bt, bsize, bcpu), (st, ssize, scpu) = b[method], s[method]
        rows.append(row(f"scale: {method} reply: bytes, round trip p50, broker CPU per call",
                        f"{bsize:,} B, {bt * 1e3:.2f} ms, CPU {bcpu * 1e3:.2f} ms",
                        f"{ssize:,} B, {st * 1e3:.2f} ms, CPU {scpu * 1e3:.2f} ms",
                        bcpu / scpu if scpu else "-"))
    bv, sv = b["views"], s["views"]
    rows.append(row("scale: top's _metrics parse (orjson, median CPU)",
                    f"{bv['parse'] * 1e3:.2f} ms", f"{sv['parse'] * 1e3:.3f} ms",
                    bv["parse"] / sv["parse"]))
    for width, height in SCREENS:
        key = f"{width}x{height}"
        rows.append(row(f"scale: madrpc top, one frame at {key} (top_view.render, median CPU)",
                        f"{bv[key] * 1e3:.2f} ms", f"{sv[key] * 1e3:.3f} ms",
                        bv[key] / sv[key]))
    rows.append(row("scale: madrpc top --once text, every worker (render, median CPU)",
                    f"{bv['once'] * 1e3:.2f} ms", f"{sv['once'] * 1e3:.3f} ms",
                    bv["once"] / sv["once"]))
    rows.append(row("scale: Prometheus text of that _metrics (--metrics-http, each second)",
                    f"{bv['prom_bytes']:,.0f} B, {bv['prom'] * 1e3:.2f} ms",
                    f"{sv['prom_bytes']:,.0f} B, {sv['prom'] * 1e3:.3f} ms",
                    bv["prom"] / sv["prom"]))
    return rows


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000, help="simulated workers")
    parser.add_argument("--baseline-workers", type=int, default=10,
                        help="simulated workers of the baseline broker")
    parser.add_argument("--procs", type=int, default=4,
                        help="processes hosting the simulated workers of each broker")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="heartbeat interval (s) of the brokers and their workers")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measurement")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per Client.map run")
    parser.add_argument("--runs", type=int, default=3, help="alternating Client.map rounds")
    parser.add_argument("--samples", type=int, default=20,
                        help="calls of _metrics and _info, and frames rendered")
    parser.add_argument("--broker", default=shlex.join(BROKER),
                        help="command that starts a broker (its endpoint options follow)")
    return parser


def bench_scale(runs: int, argv: list[str] | None = None) -> list[str]:
    """The rows of tools/bench.py's table (``argv``: this tool's own options)."""
    args = parser().parse_args(argv or [])
    args.runs = runs
    found = measure(args)
    return rows_for(found, args.workers, args.baseline_workers, args.runs, args.calls,
                    args.idle)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(f"# MaDRPC scale bench  ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{args.workers} vs {args.baseline_workers} simulated workers in {args.procs} "
          "processes each)")
    found = measure(args)
    print("| case | measured | baseline | ratio |\n|---|---|---|---|")
    for row in rows_for(found, args.workers, args.baseline_workers, args.runs, args.calls,
                        args.idle):
        print(row)
    for n in (args.workers, args.baseline_workers):
        print(f"simulators of the {n}-worker broker: {found[n]['sim_cpu_pct']:.1f}% CPU idle, "
              f"{found[n]['sim_cpu_s']:.1f} CPU s in all, {found[n]['reconnects']} "
              "re-registrations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
