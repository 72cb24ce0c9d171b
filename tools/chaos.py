"""Fault injection: a steady load against a grid while workers and the broker fail.

    python tools/chaos.py                    # 4 workers, 10,000 requests (about a minute)
    python tools/chaos.py --requests 2000 --kills 2 --heartbeat 0.2

Every request has an expected result computed here, independently, and an idempotency
key (the Python client adds one). While the load runs, the tool SIGKILLs workers (and
starts replacements), SIGSTOPs one worker's whole process group for longer than the
liveness window and then kills it (a hung machine), restarts the broker, and drops
clients in the middle of their calls. At the end it prints one table: requests sent,
answered correctly, answered with an error (by code), lost (never answered), wrong
answers, and keyed requests whose function completed more than once (counted from the
"EXEC <id>" line the JavaScript logs on completion).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "chaos.js"
EXEC_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*EXEC (c\d+-\d+)", re.MULTILINE)
"""The worker's log line for an execution: when (local time, ms) and which job."""
REPLY_WINDOW_S = 0.25
"""A killed or hung worker's executions logged this long before the signal may have lost
their replies with it (docs/reliability.md, "Where exactly once ends": the worker logs an
execution and sends its reply in the same turn of its loop, then ZeroMQ's thread sends it).
Such a call rightly runs again; a duplicate anywhere else is a bug."""


def clock(at: float) -> str:
    """``time.time()`` as the logs show it: local time of day, to the millisecond."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def checksum(n: int) -> int:
    total = 0
    for i in range(n):
        total = (total * 31 + i) % 1000003
    return total


@dataclass
class Settings:
    workers: int = 4
    requests: int = 10_000
    clients: int = 4
    in_flight: int = 16
    kills: int = 5
    hang: bool = True
    broker_restart: bool = True
    dropped_clients: int = 3
    heartbeat_s: float = 0.5
    timeout_s: float = 120.0
    seed: int = 1


@dataclass
class Report:
    sent: int = 0
    correct: int = 0
    wrong: int = 0
    lost: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    duplicated: int = 0
    """Keyed requests executed more than once, not explained by a fault's reply window."""
    rerun_after_fault: int = 0
    """Keyed requests run again because their worker died (or hung) between finishing
    them and sending the reply: logged at most REPLY_WINDOW_S before its fault."""
    duplicates: list[str] = field(default_factory=list)
    """Where and when each twice-run request ran."""
    executions: int = 0
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        errors = ", ".join(f"{code}: {n}" for code, n in sorted(self.errors.items())) or "-"
        rows = [
            ("requests sent", self.sent),
            ("answered correctly", self.correct),
            ("answered with an error (by code)", f"{sum(self.errors.values())} ({errors})"),
            ("lost (never answered)", self.lost),
            ("wrong answers", self.wrong),
            ("keyed requests executed more than once", self.duplicated),
            ("  (and run again after their worker died before replying)",
             self.rerun_after_fault),
            ("completed executions logged by the workers", self.executions),
            ("faults injected", "; ".join(self.events)),
            ("where the twice-run requests ran", "; ".join(self.duplicates) or "-"),
            ("duration", f"{self.seconds:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
        return "\n".join(lines)


class Cluster:
    """A broker and workers as process groups, with logs in a directory."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        # ipc, not random TCP ports: a worker reconnecting to a free ephemeral port while
        # the broker restarts could be connected to itself by TCP and block the port.
        self.frontend = f"ipc://{log_dir}/frontend"
        self.backend = f"ipc://{log_dir}/backend"
        self.broker: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.all: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        """Each process's log file, by pid."""
        self.faulted: dict[int, float] = {}
        """Workers killed or hung on purpose, and when (``time.time()``)."""
        self._count = 0

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self._count += 1
        heartbeat = str(self.settings.heartbeat_s)
        path = self.log_dir / f"{self._count:03d}-{name}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "madrpc.cli", *args, "--heartbeat-interval", heartbeat,
                 "--log-level", "info"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.all.append(proc)
        self.logs[proc.pid] = path
        return proc

    def start_broker(self) -> None:
        self.broker = self._start("broker", "broker", "--frontend", self.frontend,
                                  "--backend", self.backend)

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._start("worker", "worker", "--script", str(SCRIPT), "--broker",
                             self.backend, "--contexts", "1")
        self.workers.append(worker)
        return worker

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        from madrpc.sockets import remove_stale_private_directories

        for proc in self.all:
            self.kill(proc)
        remove_stale_private_directories()   # what the killed workers' bundles left

    def executions(self) -> dict[int, list[tuple[float, str]]]:
        """(when, job id) of each execution a worker logged, in order, by worker pid."""
        return {pid: [(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000,
                       key)
                      for stamp, ms, key in EXEC_LINE.findall(path.read_text(errors="replace"))]
                for pid, path in self.logs.items() if path.name.endswith("-worker.log")}


@contextmanager
def cluster(settings: Settings) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="madrpc-chaos-") as log_dir:
        grid = Cluster(settings, Path(log_dir))
        try:
            grid.start_broker()
            for _ in range(settings.workers):
                grid.start_worker()
            wait_for_workers(grid.frontend, settings.workers)
            yield grid
        finally:
            grid.stop()


def wait_for_workers(frontend: str, count: int, timeout_s: float = 60.0) -> None:
    from madrpc import Client

    deadline = time.monotonic() + timeout_s
    with Client(frontend, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if len(client.call("_metrics")["workers"]) >= count:
                    return
            except Exception:  # noqa: BLE001 - the broker may be restarting
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{count} workers did not register within {timeout_s} s")


def make_jobs(settings: Settings) -> list[dict[str, Any]]:
    rng = random.Random(settings.seed)
    jobs = []
    for i in range(settings.requests):
        client = i % settings.clients
        job_id = f"c{client}-{i}"
        if i % 10 == 9:
            n = rng.randint(100, 2000)
            jobs.append({"method": "chaos_fan", "params": {"id": job_id, "parts": 3, "n": n},
                         "expect": {"id": job_id,
                                    "sum": sum(checksum(n + k) for k in range(3))}})
        else:
            n = rng.randint(1000, 20000)
            delay = rng.randint(20, 120)
            jobs.append({"method": "chaos_work",
                         "params": {"id": job_id, "n": n, "delayMs": delay},
                         "expect": {"id": job_id, "sum": checksum(n)}})
    return jobs


def run_load(frontend: str, jobs: list[dict[str, Any]], settings: Settings,
             report: Report, lock: threading.Lock) -> None:
    """One client: its share of the jobs, ``in_flight`` at a time, keyed by job id."""
    from madrpc import Client, RpcError

    with Client(frontend, timeout=settings.timeout_s) as client:
        window: list[tuple[dict[str, Any], Any]] = []

        def settle(job: dict[str, Any], call: Any) -> None:
            client._wait(lambda: call.done)
            with lock:
                if call.error is None:
                    if call.result == job["expect"]:
                        report.correct += 1
                    else:
                        report.wrong += 1
                elif isinstance(call.error, RpcError) and "no reply to" in call.error.message:
                    report.lost += 1
                elif isinstance(call.error, RpcError):
                    report.errors[call.error.code] += 1
                else:
                    report.lost += 1

        for job in jobs:
            key = job["params"]["id"]
            call = client._start(job["method"], job["params"], None, key)
            with lock:
                report.sent += 1
            window.append((job, call))
            if len(window) >= settings.in_flight:
                client._wait(lambda: any(c.done for _, c in window))
                for done in [item for item in window if item[1].done]:
                    window.remove(done)
                    settle(*done)
        for item in window:
            settle(*item)


def drop_clients(frontend: str, count: int, stop: threading.Event) -> None:
    """Clients that send calls and vanish without waiting for the answers."""
    import zmq

    context = zmq.Context.instance()
    for i in range(count):
        if stop.wait(1.0):
            return
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(frontend)
        for j in range(20):
            dealer.send(b'{"jsonrpc":"2.0","method":"chaos_work","id":%d,'
                        b'"params":{"id":"gone-%d-%d","n":5000,"delayMs":200}}' % (j, i, j))
        time.sleep(0.05)
        dealer.close(linger=0)


def inject_faults(grid: Cluster, settings: Settings, report: Report,
                  stop: threading.Event) -> None:
    """Kills, one hang and one broker restart, each when the load reaches its share of
    the requests (so they land inside the run whatever its speed)."""
    rng = random.Random(settings.seed + 1)
    plan = ["kill"] * settings.kills
    if settings.hang:
        plan.insert(len(plan) // 2, "hang")
    if settings.broker_restart:
        plan.insert(len(plan) // 2 + 1, "broker")
    liveness_s = settings.heartbeat_s * 3
    for number, action in enumerate(plan, start=1):
        mark = settings.requests * number // (len(plan) + 1)
        while report.sent < mark:
            if stop.wait(0.02):
                return
        if action == "kill":
            victim = rng.choice(grid.workers)
            grid.workers.remove(victim)
            grid.faulted[victim.pid] = time.time()
            grid.kill(victim)
            report.events.append(f"SIGKILL worker {victim.pid}")
            grid.start_worker()
        elif action == "hang":
            victim = rng.choice(grid.workers)
            grid.workers.remove(victim)
            grid.faulted[victim.pid] = time.time()
            os.killpg(victim.pid, signal.SIGSTOP)
            report.events.append(f"SIGSTOP worker {victim.pid} for {liveness_s * 2:.1f} s, "
                                 "then SIGKILL")
            grid.start_worker()
            stop.wait(liveness_s * 2)
            grid.kill(victim)
        else:
            assert grid.broker is not None
            grid.kill(grid.broker)
            report.events.append("broker restarted")
            time.sleep(0.3)
            grid.start_broker()
            # One fault at a time: until the workers have registered again and handed over
            # what they hold (the adoption grace), a result may live only in a worker, and
            # killing it then is a second fault that no single-fault guarantee covers.
            wait_for_workers(grid.frontend, len(grid.workers))
            stop.wait(liveness_s)


def run(settings: Settings) -> Report:
    report = Report()
    lock = threading.Lock()
    jobs = make_jobs(settings)
    started = time.monotonic()
    with cluster(settings) as grid:
        stop = threading.Event()
        clients = [
            threading.Thread(target=run_load, args=(
                grid.frontend, jobs[i::settings.clients], settings, report, lock))
            for i in range(settings.clients)
        ]
        chaos = threading.Thread(target=inject_faults, args=(grid, settings, report, stop))
        droppers = threading.Thread(target=drop_clients,
                                    args=(grid.frontend, settings.dropped_clients, stop))
        for thread in (*clients, chaos, droppers):
            thread.start()
        for thread in clients:
            thread.join()
        stop.set()
        chaos.join()
        droppers.join()
        time.sleep(settings.heartbeat_s * 2)   # let the last log lines reach the files
        executions = grid.executions()
        faulted = dict(grid.faulted)
    checked = {job["params"]["id"] for job in jobs}
    counts = Counter(key for runs in executions.values() for _, key in runs if key in checked)
    last_words = {key for pid, runs in executions.items() if pid in faulted
                  for at, key in runs if at >= faulted[pid] - REPLY_WINDOW_S}
    for key, n in counts.items():
        if n > 1 and key in last_words:
            report.rerun_after_fault += 1
        elif n > 1:
            report.duplicated += 1
        if n > 1:
            report.duplicates.append(f"{key}: " + ", ".join(
                f"worker {pid} at {clock(at)}"
                + (f" ({faulted[pid] - at:.3f} s before its fault)" if pid in faulted else "")
                for pid, runs in executions.items() for at, run in runs if run == key))
    report.executions = sum(counts.values())
    report.events.append(f"{settings.dropped_clients} clients dropped mid-call")
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Settings()
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight,
                        help="calls each client keeps outstanding")
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--no-hang", action="store_true")
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument("--heartbeat", type=float, default=defaults.heartbeat_s)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    settings = Settings(
        workers=args.workers, requests=args.requests, clients=args.clients,
        in_flight=args.in_flight, kills=args.kills, hang=not args.no_hang,
        broker_restart=not args.no_broker_restart, heartbeat_s=args.heartbeat, seed=args.seed,
    )
    report = run(settings)
    print(report.table())
    ok = report.lost == 0 and report.wrong == 0 and report.duplicated == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
