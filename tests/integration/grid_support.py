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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from madrpc import Client

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


def metrics(frontend: str) -> dict[str, Any]:
    with Client(frontend, timeout=scaled(5)) as client:
        result: dict[str, Any] = client.call("_metrics")
        return result


def wait_for_workers(frontend: str, count: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until ``count`` workers are registered; return the _metrics snapshot."""
    def ready() -> dict[str, Any] | None:
        snapshot = metrics(frontend)
        return snapshot if len(snapshot["workers"]) >= count else None

    result: dict[str, Any] = wait_until(ready, timeout_s, 0.1, f"{count} worker(s)")
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
