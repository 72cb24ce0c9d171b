"""``madrpc top`` at 80x24 in a real pseudo-terminal, against a real broker and workers.

The screen is read through a VT100 emulator (pyte). Two workers: the one whose id sorts
last takes every call (the other is drained first), so sorting by name and by errors or
latency give opposite orders; the methods are called different numbers of times, one of
them failing, so each method sort gives its own order.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from pathlib import Path

import pyte
import pytest
from grid_support import SIMPLE_JS, Grid, Spawner, metrics, scaled, wait_for_workers, wait_until

from madrpc import RpcError

pytestmark = pytest.mark.timeout(scaled(120))

COLUMNS, ROWS = 80, 24
CUT = re.compile(r"\d[~…]")
"""A digit right before an ellipsis: a number cut short."""
WORKER_HEADINGS = ["WORKER", "INFL", "REQ/S", "REQS", "ERR", "P99", "CPU%", "RSS", "HB",
                   "STATE", "CIRCUIT"]
METHOD_HEADINGS = [("METHOD",), ("WORKERS", "WKRS"), ("QUEUED", "QUEUE"), ("REQS",), ("ERR",),
                   ("P50",), ("P95",), ("P99",), ("MEAN",)]
CALLS = {"add": 40, "greet": 20, "echo": 10, "fail": 5}
"""How often the busy worker is called with each method."""


class Terminal:
    """``madrpc top`` on a pseudo-terminal of ``COLUMNS`` x ``ROWS``, read through pyte."""

    def __init__(self, *args: str, log: Path) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self.fd, tty = os.openpty()
        fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "COLUMNS": str(COLUMNS), "LINES": str(ROWS)}
        try:
            with open(log, "wb") as stderr:
                self.popen = subprocess.Popen(
                    [sys.executable, "-m", "madrpc.cli", "top", *args],
                    stdin=tty, stdout=tty, stderr=stderr, env=env, start_new_session=True,
                )
        finally:
            os.close(tty)
        self.pid = self.popen.pid

    def pump(self) -> None:
        """Feed everything top has written so far to the emulator."""
        while select.select([self.fd], [], [], 0.02)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:   # EIO: top has exited and closed its side
                return
            if not data:
                return
            self.raw += data
            self.stream.feed(data)

    def lines(self) -> list[str]:
        self.pump()
        return [line.rstrip() for line in self.screen.display]

    def wait_for(self, predicate: Callable[[list[str]], object], what: str,
                 timeout_s: float = 20) -> list[str]:
        """Wait until ``predicate(lines)`` holds; return those lines."""
        def shown() -> list[str] | None:
            lines = self.lines()
            return lines if predicate(lines) else None

        found: list[str] = wait_until(shown, timeout_s, 0.1, what)
        return found

    def press(self, key: str) -> None:
        os.write(self.fd, key.encode())

    def wait_exit(self, timeout_s: float = 10) -> int:
        """Wait (reading what it writes) until top exits; return its exit status."""
        def exited() -> bool:
            self.pump()
            return self.popen.poll() is not None

        wait_until(exited, timeout_s, 0.05, "top to exit")
        return self.popen.returncode

    def close(self) -> None:
        """Kill top by its PID if it still runs, reap it, close the terminal."""
        with contextlib.suppress(ProcessLookupError):
            if self.popen.poll() is None:
                self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(scaled(10))
        with contextlib.suppress(OSError):
            os.close(self.fd)


@pytest.fixture
def top(tmp_path: Path) -> Iterator[Callable[[str], Terminal]]:
    """Start ``madrpc top`` on a grid's frontend; every one started is killed at the end."""
    opened: list[Terminal] = []

    def start(frontend: str) -> Terminal:
        term = Terminal("--broker", frontend, "--interval", "0.3",
                        log=tmp_path / f"top-{len(opened)}.err")
        opened.append(term)
        return term

    try:
        yield start
    finally:
        for term in opened:
            term.close()


class BusyGrid:
    """A broker, two workers and the ids of the drained (``idle``) and ``busy`` one."""

    def __init__(self, grid: Grid, idle: str, busy: str) -> None:
        self.grid, self.idle, self.busy = grid, idle, busy


@pytest.fixture(scope="module")
def busy_grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BusyGrid]:
    spawner = Spawner(tmp_path_factory.mktemp("top-pty"))
    try:
        endpoints = spawner.endpoints()
        broker = spawner.broker(endpoints)
        workers = [spawner.worker(endpoints, SIMPLE_JS, 1) for _ in range(2)]
        ids = sorted(w["id"] for w in wait_for_workers(endpoints.frontend, 2)["workers"])
        grid = Grid(endpoints, broker, workers)
        idle, busy = ids   # the busy one sorts last by name
        with grid.client() as client:
            client.call("_drain", {"worker": idle})
            client.map("add", [[i, 1] for i in range(CALLS["add"])])
            client.map("greet", [{"name": str(i)} for i in range(CALLS["greet"])])
            client.map("echo", [[i] for i in range(CALLS["echo"])])
            for _ in range(CALLS["fail"]):
                with pytest.raises(RpcError):
                    client.call("fail")
        by_id = {w["id"]: w for w in metrics(endpoints.frontend)["workers"]}
        assert (by_id[busy]["requests"], by_id[idle]["requests"]) == (sum(CALLS.values()), 0)
        yield BusyGrid(grid, idle, busy)
    finally:
        spawner.cleanup()


# ------------------------------------------------------------------ reading the screen


def table(lines: list[str], first: str) -> tuple[list[str], list[list[str]]]:
    """The headings of the table whose heading starts with ``first``, and its rows split
    into cells (up to the blank line, the "... more" line or the footer)."""
    start = next((i for i, line in enumerate(lines) if line.startswith(first)), None)
    if start is None:
        return [], []
    rows = []
    for line in lines[start + 1:-1]:
        if not line or line.startswith("..."):
            break
        rows.append(line.split())
    return lines[start].split(), rows


def names(lines: list[str], first: str) -> list[str]:
    return [row[0] for row in table(lines, first)[1]]


def footer(lines: list[str]) -> str:
    return lines[-1]


def assert_no_number_is_cut(lines: list[str]) -> None:
    assert all(len(line) <= COLUMNS for line in lines)
    assert re.search(r"\d\d:\d\d:\d\d$", lines[0]), lines[0]   # the clock is whole
    assert [line for line in lines[1:] if CUT.search(line)] == []


# ------------------------------------------------------------------ the tests


def test_top_at_80x24_shows_every_column_and_whole_numbers_and_quits_on_q(
    busy_grid: BusyGrid, top: Callable[[str], Terminal]
) -> None:
    frontend = busy_grid.grid.frontend
    versions = any(w.get("script_version") for w in metrics(frontend)["workers"])
    headings = WORKER_HEADINGS + (["VERSION"] if versions else [])
    term = top(frontend)

    lines = term.wait_for(lambda s: len(table(s, "WORKER")[1]) == 2, "two worker rows")

    assert table(lines, "WORKER")[0] == headings
    for row in table(lines, "WORKER")[1]:
        assert len(row) == len(headings), row   # nothing clipped at the right edge
        assert row[0] in (busy_grid.idle, busy_grid.busy)
    assert_no_number_is_cut(lines)
    assert f"requests {sum(CALLS.values())}  " in lines[2] and "errors 5" in lines[2]
    for offered in ("r req/s", "c cpu", "n name", "m methods", "q quit"):
        assert offered in footer(lines)

    term.press("m")
    lines = term.wait_for(lambda s: len(table(s, "METHOD")[1]) >= len(CALLS),
                          "the methods view")
    method_headings = table(lines, "METHOD")[0]
    assert len(method_headings) == len(METHOD_HEADINGS)
    assert all(h in choices for h, choices in zip(method_headings, METHOD_HEADINGS,
                                                   strict=True))
    assert_no_number_is_cut(lines)
    assert "m workers" in footer(lines) and "c cpu" not in footer(lines)

    term.press("q")
    assert term.wait_exit() == 0
    assert b"\x1b[?1049l" in term.raw or b"\x1b[?47l" in term.raw   # terminal restored


def test_top_sort_keys_reorder_workers_in_the_workers_view(
    busy_grid: BusyGrid, top: Callable[[str], Terminal]
) -> None:
    idle, busy = busy_grid.idle, busy_grid.busy
    term = top(busy_grid.grid.frontend)
    term.wait_for(lambda s: len(table(s, "WORKER")[1]) == 2, "two worker rows")

    for key, order, label in [("n", [idle, busy], "name"), ("e", [busy, idle], "errors"),
                              ("n", [idle, busy], "name"), ("l", [busy, idle], "p99")]:
        term.press(key)
        lines = term.wait_for(lambda s, order=order: names(s, "WORKER") == order,
                              f"workers in the order of {key!r}: {order}")
        assert f"[workers by {label}" in footer(lines)
        assert_no_number_is_cut(lines)

    term.press("q")
    assert term.wait_exit() == 0


def test_top_sort_keys_reorder_methods_in_the_methods_view_and_leave_the_workers_alone(
    busy_grid: BusyGrid, top: Callable[[str], Terminal]
) -> None:
    idle, busy = busy_grid.idle, busy_grid.busy
    term = top(busy_grid.grid.frontend)
    term.wait_for(lambda s: len(table(s, "WORKER")[1]) == 2, "two worker rows")
    term.press("e")   # workers by errors: the busy one first
    term.wait_for(lambda s: names(s, "WORKER") == [busy, idle], "workers by errors")
    term.press("m")
    term.wait_for(lambda s: len(table(s, "METHOD")[1]) >= len(CALLS), "the methods view")

    by_requests = sorted(CALLS, key=lambda m: -CALLS[m])
    for key, check, label in [
        ("n", lambda shown: shown == sorted(shown) and "add" in shown, "name"),
        ("e", lambda shown: shown[:1] == ["fail"], "errors"),
        ("r", lambda shown: shown[:len(CALLS)] == by_requests, "requests"),
        ("n", lambda shown: shown == sorted(shown) and "add" in shown, "name"),
    ]:
        term.press(key)
        lines = term.wait_for(lambda s, check=check: check(names(s, "METHOD")),
                              f"methods in the order of {key!r}")
        assert f"[methods by {label}" in footer(lines)
        assert_no_number_is_cut(lines)

    term.press("c")   # not a key of the methods view: nothing changes
    term.press("m")
    lines = term.wait_for(lambda s: table(s, "WORKER")[1], "the workers view again")
    assert names(lines, "WORKER") == [busy, idle]
    assert "[workers by errors" in footer(lines)

    term.press("q")
    assert term.wait_exit() == 0
