"""Large payloads (issue 13, goal 4): a 1 MiB round trip through MaDRPC against the same
bytes echoed by the bare pyzmq broker.

    python tools/bench_payload.py      # both sides alone (part of `bench.py --only goals`)
    python tools/bench_payload.py --cpu --runs 5   # where each side's CPU goes, by process

* MaDRPC: ``Client.call("noop", [payload])``, where ``noop`` (tools/bench.js) returns its
  argument: 1 MiB of params in, 1 MiB of result out, through broker, worker, engine process
  and V8 (``JSON.parse`` and ``JSON.stringify`` of the string included).
* Baseline: the JSON-RPC request frame the client would send for that call (the same
  bytes), sent on a DEALER to tools/echo_broker.py and received back, unparsed.

Both report the p50 of ``PAYLOAD_SAMPLES`` round trips, one at a time, after a warm-up.

``--cpu`` runs both side by side (``--runs`` alternating rounds) and shows each process's
CPU time per round trip, from the kernel's per-thread counters (``/proc/PID/task/*/
schedstat``, nanoseconds; ZeroMQ's I/O threads and V8's included): the client (this
process), then the broker, the worker and its engine, or the echo broker and its echo
workers. It is the measured basis of docs/performance.md's account of what goal 4 would
take.

``--copies`` (and the goals table) also counts how many copies of one payload each process
holds at its peak (the goal's "no more than two full copies in any one process"): an
8 MiB payload as params only (``length_of``), then as result only (``text_of``), on a grid
whose processes glibc tells to map every buffer over 128 KiB on its own (so a freed one
leaves at once); each process's peak resident memory (Linux ``VmHWM``, reset through
``/proc/PID/clear_refs``) above what it held before the call, in payloads.
"""

from __future__ import annotations

import glob
import os
import random
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import zmq

PAYLOAD_BYTES = 1024 * 1024
PAYLOAD_SAMPLES = 40
"""Round trips timed per measurement (each takes a few milliseconds)."""
WARMUP_ROUND_TRIPS = 5
PAYLOAD_SEED = 13
RECEIVE_TIMEOUT_MS = 30_000
COPIES_PAYLOAD_BYTES = 8 * 1024 * 1024
MMAP_THRESHOLD_BYTES = 128 * 1024
COPIES_ROUNDS = 3
COPIES_SETTLE_S = 0.3
"""How long the processes are left to finish with a call before and after the one measured
(a process still busy with the previous call would hide part of the peak)."""
COPIES_PROCESSES = (("broker", "madrpc.cli broker"), ("worker", "madrpc.cli worker"),
                    ("engine", "madrpc.engine"))
CPU_RUNS = 3
"""Alternating rounds of ``--cpu`` (``--runs``)."""
TRIVIAL_METHOD = "noop"
"""tools/bench.js: ``(x) => x``, so the result is the string it was given."""


def make_payload(size: int = PAYLOAD_BYTES) -> str:
    """``size`` ASCII letters (one byte each in UTF-8 and in JSON, no escapes), varied so
    that nothing on the way can take a shortcut for a run of one character."""
    chooser = random.Random(PAYLOAD_SEED)
    return "".join(chooser.choices(string.ascii_letters, k=size))


def request_frame(payload: str) -> bytes:
    """The JSON-RPC request the raw echo sends: the bytes a plain client would send."""
    return orjson.dumps({"jsonrpc": "2.0", "method": TRIVIAL_METHOD, "params": [payload],
                         "id": 1})


def p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def raw_echo_ms(endpoint: str, frame: bytes, samples: int = PAYLOAD_SAMPLES) -> float:
    """p50 round trip (ms) of ``frame`` through the bare echo broker at ``endpoint``."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, RECEIVE_TIMEOUT_MS)
    dealer.connect(endpoint)
    try:
        latencies = []
        for index in range(WARMUP_ROUND_TRIPS + samples):
            started = time.perf_counter()
            dealer.send(frame, copy=False)
            echoed = dealer.recv(copy=False)
            if index >= WARMUP_ROUND_TRIPS:
                latencies.append(time.perf_counter() - started)
        if len(echoed) != len(frame):
            raise RuntimeError(f"echo returned {len(echoed)} bytes for {len(frame)}")
        return p50(latencies) * 1000
    finally:
        dealer.close()


def grid_echo_ms(client: Any, payload: str, samples: int = PAYLOAD_SAMPLES) -> float:
    """p50 round trip (ms) of ``payload`` as params and result through MaDRPC
    (``client``: a :class:`madrpc.Client` on a grid running tools/bench.js)."""
    latencies = []
    result = None
    for index in range(WARMUP_ROUND_TRIPS + samples):
        started = time.perf_counter()
        result = client.call(TRIVIAL_METHOD, [payload])
        if index >= WARMUP_ROUND_TRIPS:
            latencies.append(time.perf_counter() - started)
    if result != payload:
        raise RuntimeError("the grid did not return the payload it was given")
    return p50(latencies) * 1000


def _resident(pid: int) -> dict[str, int]:
    sizes = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                sizes[name] = int(value.split()[0]) * 1024
    return sizes


def peak_copies(pids: dict[str, int], run: Callable[[], Any], size: int) -> dict[str, float]:
    """Each process's peak resident memory above its level before ``run``, in ``size``s."""
    time.sleep(COPIES_SETTLE_S)   # what the call before left behind is gone
    before = {}
    for name, pid in pids.items():
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")   # VmHWM := VmRSS
        before[name] = _resident(pid)["VmRSS"]
    run()
    time.sleep(COPIES_SETTLE_S)
    return {name: (_resident(pid)["VmHWM"] - before[name]) / size for name, pid in pids.items()}


@contextmanager
def mapped_buffers() -> Iterator[None]:
    """Processes started inside map every buffer over MMAP_THRESHOLD_BYTES on its own."""
    old = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = old


def grid_copies(front: str, size: int = COPIES_PAYLOAD_BYTES) -> dict[str, dict[str, float]]:
    """Peak copies per process of a ``size`` payload as params, then as result, on the grid
    at ``front`` (started inside :func:`mapped_buffers`, one worker, one context): the
    highest of COPIES_ROUNDS calls of each kind, after a warm-up with the same call (a
    process that just handled the other kind may still hold some of it)."""
    from madrpc import Client

    pids = {name: int(subprocess.run(["pgrep", "-n", "-f", pattern], capture_output=True,
                                     text=True, check=True).stdout.split()[0])
            for name, pattern in COPIES_PROCESSES}
    text = make_payload(size)
    copies: dict[str, dict[str, float]] = {}
    with Client(front, timeout=120) as client:
        calls = {"params": lambda: client.call("length_of", [text]),
                 "result": lambda: client.call("text_of", [size])}
        for which, call in calls.items():
            call()   # warm up: V8's heap, the sockets' buffers
            rounds = [peak_copies(pids, call, size) for _ in range(COPIES_ROUNDS)]
            copies[which] = {name: max(r[name] for r in rounds) for name in pids}
    return copies


def _cpu_ns(pid: int) -> int:
    """CPU time so far of every thread of ``pid`` (ns); 0 for a process that is gone."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as schedstat:
                total += int(schedstat.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass   # a thread that ended meanwhile
    return total


def payload_roles() -> dict[str, list[int]]:
    """This process and its children by role: the grid's broker, worker and engines
    (tools/bench.py's ``grid``), the echo broker and its workers (``echo_baseline``)."""
    import psutil

    roles: dict[str, list[int]] = {"client": [os.getpid()]}
    for child in psutil.Process().children():
        command = child.cmdline()
        if any("echo_broker" in part for part in command):
            roles.setdefault("echo broker", []).append(child.pid)
            roles.setdefault("echo workers", []).extend(
                p.pid for p in child.children(recursive=True))
        elif "worker" in command:
            roles.setdefault("worker", []).append(child.pid)
            roles.setdefault("engines", []).extend(p.pid for p in child.children())
        elif "broker" in command:
            roles.setdefault("broker", []).append(child.pid)
    return roles


def cpu_per_round_trip(measure: Callable[[], float], roles: list[str],
                       samples: int = PAYLOAD_SAMPLES) -> tuple[float, dict[str, float]]:
    """(p50 ms, CPU ms per round trip of each of ``roles``) over one ``measure()``, which
    makes ``samples`` timed round trips after its warm-up (counted in, being the same)."""
    found = payload_roles()
    pids = {role: found.get(role, []) for role in roles}
    before = {role: sum(_cpu_ns(pid) for pid in group) for role, group in pids.items()}
    p50_ms = measure()
    trips = WARMUP_ROUND_TRIPS + samples
    return p50_ms, {role: (sum(_cpu_ns(pid) for pid in group) - before[role]) / 1e6 / trips
                    for role, group in pids.items()}


def show_cpu(label: str, p50_ms: float, usage: dict[str, float]) -> str:
    parts = ", ".join(f"{role} {ms:.2f}" for role, ms in usage.items())
    return f"| {label} | {p50_ms:.2f} ms | {parts} | **{sum(usage.values()):.2f}** ms |"


def main_cpu(runs: int) -> None:
    """``--cpu``: the grid and the raw echo side by side, ``runs`` alternating rounds."""
    from bench import BENCH_SCRIPT, echo_baseline, grid

    from madrpc import Client

    payload = make_payload()
    frame = request_frame(payload)
    print("| setup | round trip p50 | CPU ms per round trip, by process | sum |\n"
          "|---|---|---|---|")
    with echo_baseline(2) as echo, grid(BENCH_SCRIPT, workers=1, contexts=2) as front, \
            Client(front, timeout=60) as client:
        for _ in range(runs):
            print(show_cpu("raw echo (echo broker, 2 echo workers)", *cpu_per_round_trip(
                lambda: raw_echo_ms(echo, frame), ["client", "echo broker", "echo workers"])))
            print(show_cpu("MaDRPC (broker, 1 worker, 2 engines)", *cpu_per_round_trip(
                lambda: grid_echo_ms(client, payload), ["client", "broker", "worker",
                                                        "engines"])), flush=True)


def copies_supported() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")


def main() -> int:
    from bench import BENCH_SCRIPT, echo_baseline, grid

    from madrpc import Client

    if "--cpu" in sys.argv[1:]:
        runs = sys.argv.index("--runs") if "--runs" in sys.argv else -1
        main_cpu(int(sys.argv[runs + 1]) if runs > 0 else CPU_RUNS)
        return 0
    if "--copies" in sys.argv[1:]:
        with mapped_buffers(), grid(BENCH_SCRIPT, workers=1, contexts=1) as front:
            for which, copies in grid_copies(front).items():
                print(f"peak copies of an 8 MiB payload as {which}: " +
                      ", ".join(f"{name} {n:.2f}" for name, n in copies.items()))
        return 0
    payload = make_payload()
    with echo_baseline(2) as echo:
        raw_ms = raw_echo_ms(echo, request_frame(payload))
    with grid(BENCH_SCRIPT, workers=1, contexts=2) as front, Client(front, timeout=60) as client:
        grid_ms = grid_echo_ms(client, payload)
    print(f"1 MiB round trip p50: MaDRPC {grid_ms:.2f} ms, raw echo {raw_ms:.2f} ms, "
          f"ratio {grid_ms / raw_ms:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
