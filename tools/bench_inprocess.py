"""What removing the worker hop would buy (issue 13, goals 1 and 2): a prototype worker
that holds its V8 context in its own process and speaks the worker protocol to the broker
itself, measured against the grid, the bare echo broker and the pool in the same run.

    python tools/bench_inprocess.py            # about a minute

The prototype (``--serve BACKEND SCRIPT``) is an upper bound, not a design: one context
per process, one step at a time, the worker loop blocked while V8 runs, quick synchronous
functions only; no limits, watchdog, nested calls, timers, streams, cancellation, metrics
or hand-over. Two of them stand in for one worker with 2 contexts.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import bench_pool  # noqa: E402

BENCH_JS = Path(__file__).resolve().parent / "bench.js"
TAG = b"MADRPC-W1"
PROTOTYPE_CREDIT = 33
"""Credit the prototype announces (the real worker's for quick calls: 1 + prefetch 32)."""
SINGLE_CALLS = 1000
LOAD_S = 3.0


def serve(backend: str, script: str) -> None:
    """The prototype worker: READY, then each REQUEST message is one step in V8."""
    from madrpc.engine_payload import Reply, StepEntry, encode_step_payload, parse_outbox
    from madrpc.runtime import Event, Runtime, init_engine

    init_engine()
    finished = threading.Event()
    outcome: list[Event] = []

    def on_event(event: Event) -> None:
        outcome.append(event)
        finished.set()

    runtime = Runtime(Path(script).read_text(encoding="utf-8"), script, on_event,
                      pin_thread=True)   # as a pooled engine context
    dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(backend)
    ready = {"id": f"{socket.gethostname()}:{os.getpid()}", "host": socket.gethostname(),
             "pid": os.getpid(), "contexts": 1, "credit": PROTOTYPE_CREDIT,
             "methods": runtime.methods, "version": "prototype", "v8": "", "script": script,
             "update": False}
    dealer.send_multipart([TAG, b"READY", json.dumps(ready).encode()])
    next_beat = time.monotonic()
    while True:
        if dealer.poll(100):
            while True:
                try:
                    _, command, *body = dealer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if command != b"REQUEST":
                    continue
                keys, starts = {}, []
                deadline_ms = time.time() * 1000 + 60_000
                for local, (meta, _, request) in enumerate(
                        zip(body[0::3], body[1::3], body[2::3], strict=True), 1):
                    keys[local] = meta[:8]
                    starts.append(StepEntry(local, deadline_ms, 60_000, 0, request))
                finished.clear()
                outcome.clear()
                runtime.step(encode_step_payload(starts=starts))
                finished.wait()
                replies: list[bytes] = []
                for entry in parse_outbox(outcome[0].data):
                    if isinstance(entry, Reply):
                        replies += [keys[entry.local], entry.fragment]
                dealer.send_multipart([TAG, b"REPLY", struct.pack(">I", len(replies) // 2),
                                       *replies])
        now = time.monotonic()
        if now >= next_beat:
            dealer.send_multipart([TAG, b"HEARTBEAT", b"{}"])
            next_beat = now + 1.0


@contextlib.contextmanager
def prototype_grid(workers: int = 2) -> Iterator[str]:
    front = f"tcp://127.0.0.1:{bench.free_port()}"
    back = f"tcp://127.0.0.1:{bench.free_port()}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(bench.process(
            sys.executable, "-m", "madrpc.cli", "broker", "--frontend", front,
            "--backend", back, "--log-level", "warning"))
        for _ in range(workers):
            stack.enter_context(bench.process(
                sys.executable, __file__, "--serve", back, str(BENCH_JS)))
        bench.wait_for_workers(front, workers)
        yield front


def measure(front: str) -> dict[str, float]:
    from madrpc import Client

    with Client(front, timeout=10) as client:
        for value in range(300):
            client.call(bench_pool.TRIVIAL_METHOD, [value])
        latencies = []
        for value in range(SINGLE_CALLS):
            started = time.perf_counter()
            client.call(bench_pool.TRIVIAL_METHOD, [value])
            latencies.append(time.perf_counter() - started)
        mapped = bench_pool.client_map_calls_s(client)
    return {"single_ms": statistics.median(latencies) * 1000, "map_s": mapped,
            "load_s": bench.load(front, bench_pool.LOAD_IN_FLIGHT, LOAD_S)["req_s"]}


def main() -> int:
    rows: list[tuple[str, dict[str, Any]]] = []
    for _ in range(2):
        with bench.grid(BENCH_JS, 1, 2) as front:
            rows.append(("grid: 1 worker x 2 engine processes", measure(front)))
        with prototype_grid() as front:
            rows.append(("prototype: 2 workers with V8 in-process", measure(front)))
        with bench.echo_baseline(2) as front:
            echo = bench.load(front, bench_pool.LOAD_IN_FLIGHT, LOAD_S)["req_s"]
            rows.append(("bare echo broker, 2 echo workers", {"load_s": echo}))
    with bench_pool.pool_baseline() as pool:
        rows.append(("multiprocessing.Pool(2) + MiniRacer",
                     {"single_ms": pool.apply_p50_ms(), "map_s": pool.map_calls_s()}))
    print("| system | single call p50 | 10,000 calls via map | 64 in flight |")
    print("|---|---|---|---|")
    for name, row in rows:
        single = f"{row['single_ms']:.3f} ms" if "single_ms" in row else "–"
        mapped = f"{row['map_s']:,.0f}/s" if "map_s" in row else "–"
        load = f"{row['load_s']:,.0f}/s" if "load_s" in row else "–"
        print(f"| {name} | {single} | {mapped} | {load} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
