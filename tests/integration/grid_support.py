"""Helpers that start real brokers and workers as processes and always stop them.

Every process is started in its own session; teardown kills the whole process group
(the worker's engine processes included) by PID, whether the test passed or not.
Every wait is either a polled condition (:func:`wait_until`) or a duration scaled by
``TIME_FACTOR`` (``MADRPC_TEST_TIME_FACTOR``, default 1), so a slow or loaded machine can
stretch them without editing tests. The helpers here take unscaled seconds and scale
them themselves; a test that hands a fixed duration to a client or a process scales it
with :func:`scaled`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from madrpc import Client
from madrpc.sockets import remove_stale_private_directories

TIME_FACTOR = float(os.environ.get("MADRPC_TEST_TIME_FACTOR", "1"))
"""Stretches every fixed duration in the integration tests (zerorpc's TIME_FACTOR)."""
HEARTBEAT_S = 0.2 * TIME_FACTOR
"""Heartbeat interval used by test grids (liveness 3: a dead peer is noticed in 0.6 s)."""
LIVENESS = 3
ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
SIMPLE_JS = ROOT / "examples" / "simple-test" / "scripts" / "simple.js"
PI_JS = ROOT / "examples" / "monte-carlo-pi" / "scripts" / "pi.js"


NOTHING_LISTENS = "tcp://127.0.0.1:9"
"""An endpoint no broker answers on (the discard port, outside the ephemeral range)."""


def scaled(seconds: float) -> float:
    """``seconds`` stretched by ``TIME_FACTOR``: for fixed durations given to clients and
    processes (timeouts, limits, jobs that must still run when something happens)."""
    return seconds * TIME_FACTOR


def scaled_ms(milliseconds: float) -> int:
    """``milliseconds`` stretched by ``TIME_FACTOR``, as the whole number JSON params want."""
    return round(milliseconds * TIME_FACTOR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after
    ``timeout_s`` (scaled)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {scaled(timeout_s):g} s waiting for {message}")
        time.sleep(interval_s)


class Proc:
    """A process started for a test; output goes to files so pipes never fill up."""

    def __init__(self, command: list[str], log_dir: Path, name: str) -> None:
        self.name = name
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout_s: float = 10.0) -> int:
        """Wait for the process to exit (``timeout_s`` scaled); return its exit status."""
        return self.popen.wait(scaled(timeout_s))

    def wait_for_log(self, text: str, timeout_s: float = 10.0) -> str:
        """Wait until ``text`` appears in the process's stderr; return the stderr."""
        def logged() -> str | None:
            stderr = self.stderr()
            return stderr if text in stderr else None

        found: str = wait_until(logged, timeout_s, message=f"{text!r} in {self.name}'s stderr")
        return found

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(scaled(10))


@dataclass
class GridEndpoints:
    frontend: str
    backend: str


class Spawner:
    """Starts madrpc processes for one test and kills them all at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._count = 0
        self._sockets = Path(tempfile.mkdtemp(prefix="mdr-"))   # short: ipc paths are limited

    def run(self, *args: str, name: str = "proc") -> Proc:
        self._count += 1
        proc = Proc([sys.executable, "-m", "madrpc.cli", *args], self.log_dir,
                    f"{self._count:02d}-{name}")
        self.procs.append(proc)
        return proc

    def endpoints(self) -> GridEndpoints:
        """Private ipc endpoints. (Random TCP ports from the ephemeral range can be taken by
        a peer that reconnects while nothing listens: TCP connects it to itself.)"""
        self._count += 1
        base = self._sockets / str(self._count)
        return GridEndpoints(f"ipc://{base}-front", f"ipc://{base}-back")

    def broker(self, grid: GridEndpoints, *extra: str, heartbeat_s: float = HEARTBEAT_S,
               ) -> Proc:
        return self.run(
            "broker", "--frontend", grid.frontend, "--backend", grid.backend,
            "--heartbeat-interval", str(heartbeat_s), "--heartbeat-liveness", str(LIVENESS),
            "--log-level", "debug", *extra, name="broker",
        )

    def worker(self, grid: GridEndpoints, script: Path | str = SIMPLE_JS, contexts: int = 1,
               *extra: str) -> Proc:
        return self.run(
            "worker", "--script", str(script), "--broker", grid.backend,
            "--contexts", str(contexts), "--heartbeat-interval", str(HEARTBEAT_S),
            "--heartbeat-liveness", str(LIVENESS), "--log-level", "debug", *extra,
            name="worker",
        )

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill_group()
        shutil.rmtree(self._sockets, ignore_errors=True)
        remove_stale_private_directories()   # what the killed workers' bundles left


def metrics(frontend: str) -> dict[str, Any]:
    with Client(frontend, timeout=scaled(5)) as client:
        result: dict[str, Any] = client.call("_metrics")
        return result


def wait_for_workers(frontend: str, count: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until ``count`` workers are registered; return the _metrics snapshot."""
    def ready() -> dict[str, Any] | None:
        snapshot = metrics(frontend)
        return snapshot if len(snapshot["workers"]) >= count else None

    result: dict[str, Any] = wait_until(ready, timeout_s, 0.05, f"{count} worker(s)")
    return result


def wait_for_in_flight(frontend: str, count: int = 1, timeout_s: float = 10.0,
                       pid: int | None = None) -> dict[str, Any]:
    """Wait until workers hold ``count`` requests (of worker ``pid`` if given), as the
    broker's ``_metrics`` tells; return the snapshot."""
    def held() -> dict[str, Any] | None:
        snapshot = metrics(frontend)
        if pid is None:
            n = snapshot["broker"]["in_flight"]
        else:
            n = sum(w["in_flight"] for w in snapshot["workers"] if w["pid"] == pid)
        return snapshot if n >= count else None

    result: dict[str, Any] = wait_until(held, timeout_s, 0.02, f"{count} request(s) in flight")
    return result


@dataclass
class Grid:
    endpoints: GridEndpoints
    broker: Proc
    workers: list[Proc]

    @property
    def frontend(self) -> str:
        return self.endpoints.frontend

    def client(self, timeout: float = 10.0, **options: Any) -> Client:
        """A client of this grid whose default call timeout is ``timeout`` (scaled)."""
        from madrpc import ClientConfig

        return Client(config=ClientConfig(endpoint=self.frontend, timeout_s=scaled(timeout),
                                          **options))


# ------------------------------------------------------------------ grids kept between tests


@dataclass(frozen=True)
class GridSettings:
    """What :class:`GridPool` tells grids apart by (the arguments of ``start_grid``)."""

    script: str = str(SIMPLE_JS)
    workers: int = 1
    contexts: int = 1
    broker_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()


@dataclass(eq=False)
class PooledGrid:
    settings: GridSettings
    grid: Grid
    spawner: Spawner
    runs: int = field(default=0)


class GridPool:
    """Grids kept running between the tests that only make calls on them, one per set of
    settings, so each such test does not start a broker and workers of its own.

    A grid goes back to the pool only at rest: its broker and every worker alive, the same
    workers registered, nothing in flight or queued (a test that leaves work running, kills
    a worker or fails gets its grid stopped, and the next test a new one). At most ``keep``
    idle grids are kept (the least recently used is stopped first); :meth:`close` stops
    every grid, by PID, as :class:`Spawner` does."""

    def __init__(self, log_root: Path, keep: int = 6) -> None:
        self.log_root = log_root
        self.keep = keep
        self._idle: OrderedDict[int, PooledGrid] = OrderedDict()
        self._busy: dict[int, PooledGrid] = {}
        self._started = 0

    def acquire(self, settings: GridSettings) -> Grid:
        """An idle grid with ``settings``, or a new one (started and waited for)."""
        for key, pooled in self._idle.items():
            if pooled.settings == settings:
                del self._idle[key]
                break
        else:
            pooled = self._start(settings)
        pooled.runs += 1
        self._busy[id(pooled.grid)] = pooled
        return pooled.grid

    def release(self, grid: Grid, reusable: bool = True) -> None:
        """Take ``grid`` back: kept if ``reusable`` and at rest, else stopped."""
        pooled = self._busy.pop(id(grid))
        if not (reusable and self._at_rest(pooled)):
            pooled.spawner.cleanup()
            return
        self._idle[id(grid)] = pooled
        while len(self._idle) > self.keep:
            _, oldest = self._idle.popitem(last=False)
            oldest.spawner.cleanup()

    def close(self) -> None:
        for pooled in [*self._idle.values(), *self._busy.values()]:
            pooled.spawner.cleanup()
        self._idle.clear()
        self._busy.clear()

    def _start(self, settings: GridSettings) -> PooledGrid:
        self._started += 1
        log_dir = self.log_root / f"grid-{self._started:02d}"
        log_dir.mkdir(parents=True)
        spawner = Spawner(log_dir)
        try:
            endpoints = spawner.endpoints()
            broker = spawner.broker(endpoints, *settings.broker_args)
            workers = [spawner.worker(endpoints, settings.script, settings.contexts,
                                      *settings.worker_args)
                       for _ in range(settings.workers)]
            wait_for_workers(endpoints.frontend, settings.workers)
        except BaseException:
            spawner.cleanup()
            raise
        return PooledGrid(settings, Grid(endpoints, broker, workers), spawner)

    @staticmethod
    def _at_rest(pooled: PooledGrid, timeout_s: float = 5.0) -> bool:
        grid = pooled.grid
        pids = sorted(w.pid for w in grid.workers)
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            if not grid.broker.alive() or not all(w.alive() for w in grid.workers):
                return False
            try:
                snapshot = metrics(grid.frontend)
            except Exception:  # noqa: BLE001 - a broker that does not answer is not at rest
                return False
            broker = snapshot["broker"]
            if (sorted(w["pid"] for w in snapshot["workers"]) == pids
                    and broker["in_flight"] == 0 and broker["queue_depth"] == 0):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


# ------------------------------------------------------------------ command lines run ahead


@dataclass(frozen=True)
class Ahead:
    """A command line that test ``test`` (a function name) checks: ``madrpc ARGS``, or
    with ``cli=False``, ``python ARGS`` (an example's script)."""

    test: str
    args: tuple[str, ...]
    cli: bool = True

    @property
    def argv(self) -> list[str]:
        return [sys.executable, *(("-m", "madrpc.cli") if self.cli else ()), *self.args]


@dataclass
class Finished:
    done: subprocess.CompletedProcess[str]
    seconds: float
    """From its start to its exit, however late a test asked."""


class Background:
    """Command lines started when their module starts, each waited for by the
    test that checks it: runs that mostly wait (for a broker that is not there, an embedded
    grid to start and stop) overlap the module's other tests instead of adding up. Each
    runs as a user runs it, in a session of its own, its output in files; a thread takes
    the time it exits; :meth:`close` kills (by PID) whatever still runs."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: dict[str, Proc] = {}
        self._seconds: dict[str, float] = {}
        self._exited: dict[str, threading.Event] = {}
        self._waiters: list[threading.Thread] = []

    def start(self, name: str, argv: list[str]) -> None:
        started = time.monotonic()
        proc = Proc(argv, self.log_dir, f"ahead-{len(self._procs):02d}")
        self._procs[name] = proc
        exited = self._exited[name] = threading.Event()

        def wait() -> None:
            proc.popen.wait()
            self._seconds[name] = time.monotonic() - started
            exited.set()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        self._waiters.append(waiter)

    def finish(self, name: str, timeout_s: float = 30.0) -> Finished:
        """Wait (``timeout_s`` scaled) for run ``name`` to exit; fail the test if it does
        not (it is killed then)."""
        proc = self._procs.get(name)
        if proc is None:
            pytest.fail(f"{name!r} was not started ahead (is its test in the module's AHEAD?)")
        if not self._exited[name].wait(scaled(timeout_s)):
            proc.kill_group()
            pytest.fail(f"{name!r} did not exit within {scaled(timeout_s):g} s:\n"
                        f"{proc.stderr()[-3000:]}")
        done = subprocess.CompletedProcess(proc.popen.args, proc.popen.returncode,
                                           proc.stdout(), proc.stderr())
        return Finished(done, self._seconds[name])

    def close(self) -> None:
        for proc in self._procs.values():
            proc.kill_group()
        for waiter in self._waiters:
            waiter.join(scaled(10))


@contextlib.contextmanager
def run_ahead(request: pytest.FixtureRequest, log_dir: Path, ahead: dict[str, Ahead],
              ) -> Iterator[Background]:
    """For a module-scoped fixture: start the ``ahead`` runs whose test is selected in
    the module (``-k`` may leave it out), and kill what is left at the end."""
    module = request.module
    selected = {getattr(item, "originalname", item.name) for item in request.session.items
                if getattr(item, "module", None) is module}
    runs = Background(log_dir)
    try:
        for name, job in ahead.items():
            if job.test in selected:
                runs.start(name, job.argv)
        yield runs
    finally:
        runs.close()
