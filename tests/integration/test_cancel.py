"""Cancellation down the call tree, with real V8: from the asyncio client, from a
Future, from Ctrl-C on the CLI and on the wire; and a failed root cancels its subtree.

The grids come from the pool: every test frees what it cancelled (and checks it), so the
next test finds the grid at rest; one that does not gets a new grid."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import zmq
from grid_support import SCRIPTS, Grid, metrics, scaled, wait_for_in_flight, wait_until

from madrpc import AsyncClient, CancelledError, Client, TransportError, as_completed

RUNTIME_JS = SCRIPTS / "runtime.js"
LONG_MS = 20_000


def nothing_in_flight(grid: Grid) -> None:
    wait_until(lambda: metrics(grid.frontend)["broker"]["in_flight"] == 0, 5,
               message="nothing left in flight")


def answers_at_once(grid: Grid, count: int = 1) -> None:
    """``count`` trivial calls answered within a second or two: the contexts are free."""
    with grid.client(timeout=10) as client:
        started = time.monotonic()
        assert client.map("noop", [[n] for n in range(count)]) == list(range(count))
        assert time.monotonic() - started < scaled(2)


def ready_grid(pooled_grid: Callable[..., Grid], contexts: int) -> Grid:
    """A grid of the pool that has just answered: its contexts are built and free, so the
    requests these tests cancel are running JavaScript when the cancel lands (a context is
    built when a request first needs it, as after a cancel dropped the last one; a cancel
    that lands while it is being built is another case, not the one tested here)."""
    grid = pooled_grid(RUNTIME_JS, contexts=contexts)
    answers_at_once(grid, count=4 * contexts)
    return grid


def cancel_async_task(grid: Grid, start: Callable[[AsyncClient], Awaitable[Any]],
                      in_flight: int) -> None:
    """Start a call from an AsyncClient, cancel the task awaiting it once ``in_flight``
    requests run, and check that the grid is left at rest."""
    async def main() -> None:
        async with AsyncClient(grid.frontend, timeout=60) as client:
            task = asyncio.ensure_future(start(client))
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for_in_flight(grid.frontend, in_flight))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    answers_at_once(grid)
    nothing_in_flight(grid)


def test_cancelling_the_task_awaiting_an_async_call_frees_its_only_context(
    pooled_grid: Callable[..., Grid],
) -> None:
    cancel_async_task(ready_grid(pooled_grid, contexts=1),
                      lambda client: client.call("long_spin", {"ms": LONG_MS}), 1)


def test_cancelling_the_task_awaiting_an_async_map_cancels_its_calls_on_the_grid(
    pooled_grid: Callable[..., Grid],
) -> None:
    cancel_async_task(ready_grid(pooled_grid, contexts=1),
                      lambda client: client.map("long_spin", [{"ms": LONG_MS}] * 3), 3)


def test_closing_a_client_cancels_the_calls_it_still_waits_for(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = ready_grid(pooled_grid, contexts=1)

    async def main() -> None:
        client = AsyncClient(grid.frontend, timeout=60)
        task = asyncio.ensure_future(client.call("long_spin", {"ms": LONG_MS}))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for_in_flight(grid.frontend))
        await client.close()   # before the task learns anything
        with pytest.raises(TransportError):
            await task

    asyncio.run(main())
    answers_at_once(grid)
    nothing_in_flight(grid)


def test_cancelling_a_submitted_future_frees_its_only_context(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = ready_grid(pooled_grid, contexts=1)
    with Client(grid.frontend, timeout=60) as client:
        future = client.submit("long_spin", {"ms": LONG_MS})
        wait_for_in_flight(grid.frontend)
        assert future.cancel() and future.cancelled()
        answers_at_once(grid)
        nothing_in_flight(grid)


def test_cancelling_a_call_queued_behind_a_short_step_in_its_engine_frees_the_context(
    pooled_grid: Callable[..., Grid],
) -> None:
    """A context busy with a step expected to end soon is sent its next step already; a
    cancel that comes before that step starts must still stop it."""
    grid = ready_grid(pooled_grid, contexts=1)
    with Client(grid.frontend, timeout=60) as client:
        for _ in range(3):   # the worker learns that long_spin takes a few ms
            client.call("long_spin", {"ms": 5})
        running = client.submit("long_spin", {"ms": 400})
        queued = client.submit("long_spin", {"ms": LONG_MS})
        wait_for_in_flight(grid.frontend, 2)
        assert queued.cancel()
        assert running.result(timeout=scaled(10)) == 400
        answers_at_once(grid)
        nothing_in_flight(grid)


def test_submitted_futures_complete_by_themselves_and_as_completed_yields_them(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = ready_grid(pooled_grid, contexts=2)
    with Client(grid.frontend, timeout=30) as client:
        futures = [client.submit("sleep", {"ms": ms}) for ms in (1500, 10, 600)]
        order = [future.result() for future in as_completed(futures, timeout=scaled(20))]

    assert order == [10, 600, 1500]


def test_cancelling_a_fan_out_cancels_every_nested_call_and_frees_every_context(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = ready_grid(pooled_grid, contexts=2)
    with Client(grid.frontend, timeout=60) as client:
        future = client.submit("fan_long", {"n": 8, "ms": LONG_MS})
        wait_for_in_flight(grid.frontend, count=9)   # the root and its 8 nested calls
        future.cancel()
        nothing_in_flight(grid)
    answers_at_once(grid, count=4)


def test_a_cancelled_request_fires_its_signal_and_its_nested_call_rejects(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = ready_grid(pooled_grid, contexts=2)
    with Client(grid.frontend, timeout=60) as client:
        future = client.submit("watch_cancel", {"ms": LONG_MS})
        wait_for_in_flight(grid.frontend, count=2)
        future.cancel()
        log = grid.workers[0].wait_for_log("CLEANUP RAN")

    assert "ABORTED -32011" in log and "NESTED REJECTED -32011" in log


def test_a_failed_root_cancels_its_subtree_at_once(pooled_grid: Callable[..., Grid]) -> None:
    grid = ready_grid(pooled_grid, contexts=2)
    with grid.client(timeout=30) as client:
        with pytest.raises(Exception) as failed:
            client.call("fan_long", {"n": 8, "ms": LONG_MS}, timeout=scaled(1))
        assert getattr(failed.value, "code", None) in (-32003, -32013)
    nothing_in_flight(grid)
    answers_at_once(grid, count=4)


def test_cancel_on_the_wire_answers_the_request_and_says_whether_it_ran(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = ready_grid(pooled_grid, contexts=1)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(grid.frontend)
    try:
        def send(member: dict[str, Any]) -> None:
            socket.send(orjson.dumps({"jsonrpc": "2.0", **member}))

        def replies(count: int) -> dict[Any, Any]:
            out: dict[Any, Any] = {}
            while len(out) < count and socket.poll(int(scaled(10) * 1000)):
                reply = orjson.loads(socket.recv())
                out[reply["id"]] = reply
            return out

        send({"method": "long_spin", "params": {"ms": LONG_MS}, "id": "job"})
        wait_for_in_flight(grid.frontend)
        send({"method": "_cancel", "params": {"id": "job"}, "id": 1})
        got = replies(2)
        send({"method": "_cancel", "params": {"id": "job"}, "id": 2})
        again = replies(1)
    finally:
        socket.close()

    assert got["job"]["error"]["code"] == -32011
    assert got[1]["result"] == {"cancelled": True}
    assert again[2]["result"] == {"cancelled": False}
    answers_at_once(grid)


@pytest.mark.parametrize("command", ["call", "map"])
def test_ctrl_c_on_the_cli_cancels_on_the_grid_and_exits_130(
    pooled_grid: Callable[..., Grid], command: str, tmp_path: Any,
) -> None:
    grid = ready_grid(pooled_grid, contexts=1)
    if command == "call":
        args = ["call", "long_spin", f'{{"ms": {LONG_MS}}}']
    else:
        lines = tmp_path / "in.jsonl"
        lines.write_text(f'{{"ms": {LONG_MS}}}\n' * 3)
        args = ["map", "long_spin", str(lines)]
    proc = subprocess.Popen([sys.executable, "-m", "madrpc.cli", *args, "--broker",
                             grid.frontend], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for_in_flight(grid.frontend)
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(scaled(10))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stderr is not None and proc.stdout is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        proc.stdout.close()

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    nothing_in_flight(grid)
    answers_at_once(grid)


def test_a_cancelled_call_raises_cancelled_error_and_is_not_kept_for_its_key(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = ready_grid(pooled_grid, contexts=1)
    with Client(grid.frontend, timeout=60) as client:
        future = client.submit("sleep", {"ms": 2000}, idempotency_key="once")
        wait_for_in_flight(grid.frontend)
        future.cancel()
        nothing_in_flight(grid)
        # the same key runs again: a cancelled outcome is never replayed
        assert client.call("sleep", {"ms": 10}, idempotency_key="once") == 10
    assert issubclass(CancelledError, Exception)
