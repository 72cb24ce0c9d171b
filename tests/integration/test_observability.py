"""Observability: _metrics and _info under load, madrpc top in a real terminal, madrpc map,
Prometheus metrics, JSON logs."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyte
import pytest
from grid_support import (
    NOTHING_LISTENS,
    SCRIPTS,
    SIMPLE_JS,
    Ahead,
    Background,
    Grid,
    Spawner,
    free_port,
    metrics,
    run_ahead,
    scaled,
    wait_until,
)

from madrpc import Client, RpcError
from madrpc.cli_support import no_broker

RUNTIME_JS = SCRIPTS / "runtime.js"
AHEAD = {
    "top, no broker": Ahead("test_top_once_says_within_seconds_that_no_broker_answers",
                            ("top", "--once", "--broker", NOTHING_LISTENS)),
}
"""A run that mostly waits (for a broker that never answers): started when the module
starts, so it overlaps the module's other tests."""


@pytest.fixture(scope="module", autouse=True)
def ahead(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Background]:
    """The AHEAD runs, started at the module's first test (whichever it is)."""
    with run_ahead(request, tmp_path_factory.mktemp("ahead"), AHEAD) as runs:
        yield runs


def madrpc(*args: str, stdin: str | None = None, timeout: float = 60,
           ) -> subprocess.CompletedProcess[str]:
    """Run the CLI to the end (at most ``timeout`` seconds, scaled)."""
    return subprocess.run([sys.executable, "-m", "madrpc.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=scaled(timeout))


# ------------------------------------------------------------------ _metrics / _info


def test_metrics_count_exactly_the_calls_made_under_load(start_grid) -> None:
    grid: Grid = start_grid(SIMPLE_JS, workers=2)
    with grid.client() as client:
        assert len(client.map("add", [[i, 1] for i in range(300)])) == 300
        for _ in range(7):
            with pytest.raises(RpcError):
                client.call("fail")
        client.map("greet", [{"name": str(i)} for i in range(20)])
    snapshot = metrics(grid.frontend)
    methods = snapshot["methods"]
    assert methods["add"]["requests"] == 300 and methods["add"]["errors"] == 0
    assert methods["fail"]["requests"] == 7 and methods["fail"]["errors"] == 7
    assert methods["fail"]["errors_by_code"] == {"-32000": 7}
    assert methods["greet"]["requests"] == 20
    assert methods["add"]["p50_ms"] is not None and methods["add"]["workers"] == 2
    workers = snapshot["workers"]
    assert len(workers) == 2
    assert sum(w["requests"] for w in workers) == 327
    assert sum(w["errors"] for w in workers) == 7
    broker = snapshot["broker"]
    assert broker["requests"] == 327 and broker["errors_by_code"] == {"-32000": 7}
    assert broker["in_flight"] == 0 and broker["queue_depth"] == 0
    assert len(snapshot["rate_history"]) == 60
    for worker in workers:
        assert worker["circuit"]["state"] == "closed"
        assert worker["heartbeat_age_s"] < scaled(2)
        assert {"contexts", "busy", "credit", "p99_ms", "cpu_percent", "rss_bytes"} <= set(worker)


def test_a_workers_own_metrics_and_registration_are_reachable_through_the_broker(
    shared_grid: Grid,
) -> None:
    grid = shared_grid
    with grid.client() as client:
        client.map("add", [[i, 2] for i in range(50)])
        wait_until(lambda: all(w["stats"].get("totals", {}).get("requests")
                               for w in [client.call("_metrics", {"worker": x["id"]})
                                         for x in client.call("_metrics")["workers"]]),
                   5, message="heartbeats carrying the workers' counts")
        worker_id = client.call("_metrics")["workers"][0]["id"]
        detail = client.call("_metrics", {"worker": worker_id})
        info = client.call("_info", {"worker": worker_id})
        with pytest.raises(RpcError) as missing:
            client.call("_metrics", {"worker": "nobody:0"})
        grid_info = client.call("_info")
    assert detail["id"] == worker_id and "methods" in detail["stats"]
    assert info["id"] == worker_id and "add" in info["methods"]
    assert missing.value.code == -32602
    assert set(grid_info["methods"]["add"]) == {w["id"] for w in metrics(grid.frontend)["workers"]}
    assert grid_info["versions"]["v8"] and grid_info["versions"]["libzmq"]
    assert grid_info["heartbeat"]["liveness"] == 3


# ------------------------------------------------------------------ madrpc top in a pty


class Terminal:
    """``madrpc top`` running in a pseudo-terminal, read through a VT100 emulator."""

    def __init__(self, *args: str, columns: int = 150, rows: int = 40) -> None:
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: become `madrpc top`
            env = {**os.environ, "TERM": "xterm-256color", "LANG": "C.UTF-8",
                   "LC_ALL": "C.UTF-8"}
            os.execvpe(sys.executable, [sys.executable, "-m", "madrpc.cli", "top", *args], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.raw = b""

    def pump(self, wait_s: float = 0.1) -> None:
        while select.select([self.fd], [], [], wait_s)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.raw += data
            self.stream.feed(data)
            wait_s = 0.02

    def text(self) -> str:
        self.pump()
        return "\n".join(self.screen.display)

    def wait_for(self, predicate: Any, timeout_s: float = 15, what: str = "the screen") -> str:
        return str(wait_until(lambda: predicate(self.text()) and self.text(), timeout_s, 0.1,
                              what))

    def press(self, key: str) -> None:
        os.write(self.fd, key.encode())

    def resize(self, columns: int, rows: int) -> None:
        self.screen.resize(rows, columns)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        os.kill(self.pid, signal.SIGWINCH)

    def wait_exit(self, timeout_s: float = 10) -> int:
        """Wait (``timeout_s`` scaled) for top to exit; return its exit status."""
        deadline = time.monotonic() + scaled(timeout_s)
        while time.monotonic() < deadline:
            self.pump(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        raise AssertionError("top did not exit")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for term in opened:
            term.kill()


def steady_load(frontend: str, stop: threading.Event) -> None:
    with Client(frontend, timeout=scaled(10)) as client:
        while not stop.is_set():
            client.map("add", [[i, 1] for i in range(50)])


def test_top_shows_both_workers_with_their_rates_and_quits_cleanly_on_q(
    shared_grid: Grid, terminal: list[Terminal],
) -> None:
    grid = shared_grid
    stop = threading.Event()
    load = threading.Thread(target=steady_load, args=(grid.frontend, stop))
    load.start()
    try:
        term = Terminal("--broker", grid.frontend, "--interval", "0.3")
        terminal.append(term)
        ids = [w["id"] for w in metrics(grid.frontend)["workers"]]

        def both_workers_busy(screen: str) -> bool:
            rows = [line for line in screen.splitlines() if any(i in line for i in ids)]
            rates = [float(row.split()[5]) for row in rows if len(row.split()) > 5]
            return len(rows) == 2 and all(rate > 0 for rate in rates)

        screen = term.wait_for(both_workers_busy, what="two worker rows with req/s > 0")
        assert "WORKER" in screen and "CIRCUIT" in screen and "q quit" in screen
        term.press("m")
        term.wait_for(lambda s: "METHOD" in s and "add" in s, what="the methods view")
        term.press("c")
        term.wait_for(lambda s: "workers by cpu" in s or "methods" in s, what="sorting")
        term.resize(100, 30)
        term.wait_for(lambda s: "madrpc top" in s, what="a redraw after resizing")
        term.press("q")
        assert term.wait_exit() == 0
        assert b"\x1b[?1049l" in term.raw or b"\x1b[?47l" in term.raw   # terminal restored
    finally:
        stop.set()
        load.join()


def test_top_waits_out_a_broker_restart(spawn: Spawner, terminal: list[Terminal]) -> None:
    endpoints = spawn.endpoints()
    broker = spawn.broker(endpoints)
    spawn.worker(endpoints, SIMPLE_JS, 1)
    wait_until(lambda: len(metrics(endpoints.frontend)["workers"]) == 1, 30)
    term = Terminal("--broker", endpoints.frontend, "--interval", "0.3")
    terminal.append(term)
    term.wait_for(lambda s: "closed" in s, what="the worker row")
    broker.kill_group()
    term.wait_for(lambda s: "broker unreachable, retrying" in s, 20, "the unreachable notice")
    spawn.broker(endpoints)
    term.wait_for(lambda s: "broker unreachable" not in s and "closed" in s, 30,
                  "the worker row after the restart")
    term.press("q")
    assert term.wait_exit() == 0


def test_top_scrolls_through_many_workers(spawn: Spawner, terminal: list[Terminal]) -> None:
    """A hundred registered workers (fake DEALERs speaking the worker protocol)."""
    import zmq

    from madrpc import protocol as p

    endpoints = spawn.endpoints()
    # The fakes never send heartbeats: a slow heartbeat keeps them registered for the test.
    spawn.broker(endpoints, heartbeat_s=scaled(10))
    context = zmq.Context.instance()
    fakes = []
    try:
        for i in range(100):
            fake = context.socket(zmq.DEALER)
            fake.setsockopt(zmq.LINGER, 0)
            fake.connect(endpoints.backend)
            fake.send_multipart(p.json_message(p.READY, {
                "id": f"fake-{i:03d}", "methods": ["noop"], "credit": 1, "contexts": 1,
                "pid": 100000 + i, "host": "fake"}))
            fakes.append(fake)
        wait_until(lambda: len(metrics(endpoints.frontend)["workers"]) == 100, 15)
        term = Terminal("--broker", endpoints.frontend, "--interval", "0.5",
                        columns=140, rows=30)
        terminal.append(term)
        term.press("n")   # by name: fake-000 first
        term.wait_for(lambda s: "fake-000" in s and "more" in s, what="the first page")
        for _ in range(12):
            term.press("\x1b[6~")   # PgDn
        term.wait_for(lambda s: "fake-099" in s, what="the last page")
        term.press("q")
        assert term.wait_exit() == 0
    finally:
        for fake in fakes:
            fake.close(linger=0)


def test_top_once_prints_a_plain_snapshot(shared_grid: Grid) -> None:
    with shared_grid.client() as client:
        client.map("add", [[i, 1] for i in range(10)])
    done = madrpc("top", "--once", "--broker", shared_grid.frontend)
    assert done.returncode == 0, done.stderr
    for worker in metrics(shared_grid.frontend)["workers"]:
        assert worker["id"] in done.stdout
    assert "METHOD" in done.stdout and "add" in done.stdout
    assert "\x1b" not in done.stdout


def test_top_once_says_within_seconds_that_no_broker_answers(ahead: Background) -> None:
    finished = ahead.finish("top, no broker")
    done = finished.done
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {no_broker(NOTHING_LISTENS)}"
    assert finished.seconds < scaled(10)


# ------------------------------------------------------------------ madrpc map


def test_madrpc_map_prints_results_as_json_lines_in_input_order(shared_grid: Grid) -> None:
    lines = "\n".join(json.dumps([i, 10]) for i in range(30)) + "\n\n"
    done = madrpc("map", "add", "-", "--broker", shared_grid.frontend, stdin=lines)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [i + 10 for i in range(30)]
    assert done.stderr == ""   # no progress bar when stderr is not a terminal


def test_madrpc_map_reports_failed_lines_in_place_and_exits_1(shared_grid: Grid) -> None:
    done = madrpc("map", "add", "-", "--broker", shared_grid.frontend,
                  stdin='[1, 2]\n["x", 2]\n[3, 4]\n')
    assert done.returncode == 1
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert out[0] == 3 and out[2] == 7
    assert out[1]["error"]["code"] == -32602
    assert "1 of 3 calls failed" in done.stderr


def test_map_progress_bar_appears_on_a_terminal(shared_grid: Grid, tmp_path: Path) -> None:
    lines = tmp_path / "params.jsonl"
    lines.write_text("".join(f"[{i}, 1]\n" for i in range(200)))
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(sys.executable, [sys.executable, "-m", "madrpc.cli", "map", "add",
                                   str(lines), "--broker", shared_grid.frontend])
    output = b""
    try:
        while True:
            ready = select.select([fd], [], [], scaled(20))[0]
            if not ready:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert "200/200" in text and "calls/s" in text


# ------------------------------------------------------------------ Prometheus, logs


def test_the_broker_serves_prometheus_metrics(spawn: Spawner) -> None:
    endpoints = spawn.endpoints()
    port = free_port()
    spawn.broker(endpoints, "--metrics-http", f"127.0.0.1:{port}")
    spawn.worker(endpoints, SIMPLE_JS, 1)
    wait_until(lambda: len(metrics(endpoints.frontend)["workers"]) == 1, 30)
    with Client(endpoints.frontend, timeout=scaled(10)) as client:
        client.map("add", [[i, 1] for i in range(25)])

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=scaled(5)) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            return str(reply.read().decode())

    text = wait_until(lambda: "madrpc_requests_total 25" in scrape() and scrape(), 10,
                      message="the 25 requests in the exposition")
    assert 'madrpc_request_duration_seconds_count{method="add"} 25' in text
    assert 'madrpc_request_duration_seconds_bucket{method="add",le="+Inf"} 25' in text
    assert "madrpc_worker_busy_contexts{" in text
    assert "# TYPE madrpc_requests_total counter" in text


def test_json_logs_have_one_line_per_lifecycle_event_not_per_request(spawn: Spawner) -> None:
    endpoints = spawn.endpoints()
    broker = spawn.run("broker", "--frontend", endpoints.frontend, "--backend",
                       endpoints.backend, "--log-format", "json", "--log-level", "info",
                       name="broker")
    worker = spawn.run("worker", "--script", str(SIMPLE_JS), "--broker", endpoints.backend,
                       "--contexts", "1", "--log-format", "json", "--log-level", "info",
                       name="worker")
    wait_until(lambda: len(metrics(endpoints.frontend)["workers"]) == 1, 30)
    before = len(broker.stderr().splitlines())
    with Client(endpoints.frontend, timeout=scaled(10)) as client:
        client.map("add", [[i, 1] for i in range(200)])
    time.sleep(scaled(0.3))   # a window for lines the calls would cause after their replies
    lines = broker.stderr().splitlines()
    assert len(lines) - before <= 2
    for line in lines + worker.stderr().splitlines():
        entry = json.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(entry)
    assert any("joined" in json.loads(line)["message"] for line in lines)
