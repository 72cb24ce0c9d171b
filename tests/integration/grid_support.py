"""Helpers that start real brokers and workers as processes and always stop them.

Every process is started in its own session; teardown kills the whole process group
(the worker's engine processes included) by PID, whether the test passed or not.
Heartbeat timings are scaled by ``MADRPC_TEST_TIME_FACTOR`` (default 1) so a slow CI
machine can stretch them without editing tests.
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
HEARTBEAT_S = 0.2 * TIME_FACTOR
"""Heartbeat interval used by test grids (liveness 3: a dead peer is noticed in 0.6 s)."""
LIVENESS = 3
ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
SIMPLE_JS = ROOT / "examples" / "simple-test" / "scripts" / "simple.js"
PI_JS = ROOT / "examples" / "monte-carlo-pi" / "scripts" / "pi.js"


NOTHING_LISTENS = "tcp://127.0.0.1:9"
"""An endpoint no broker answers on (the discard port, outside the ephemeral range)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s * TIME_FACTOR
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {message}")
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
        return self.popen.wait(timeout_s * TIME_FACTOR)

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


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

    def broker(self, grid: GridEndpoints, *extra: str) -> Proc:
        return self.run(
            "broker", "--frontend", grid.frontend, "--backend", grid.backend,
            "--heartbeat-interval", str(HEARTBEAT_S), "--heartbeat-liveness", str(LIVENESS),
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
    with Client(frontend, timeout=5) as client:
        result: dict[str, Any] = client.call("_metrics")
        return result


def wait_for_workers(frontend: str, count: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until ``count`` workers are registered; return the _metrics snapshot."""
    def ready() -> dict[str, Any] | None:
        snapshot = metrics(frontend)
        return snapshot if len(snapshot["workers"]) >= count else None

    result: dict[str, Any] = wait_until(ready, timeout_s, 0.1, f"{count} worker(s)")
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
        from madrpc import ClientConfig

        return Client(config=ClientConfig(endpoint=self.frontend, timeout_s=timeout, **options))
