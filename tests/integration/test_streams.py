"""Streaming results with real V8: generator functions stream their items to the Python
clients, the CLI, plain JSON-RPC sockets and other JavaScript functions, within the window
the consumer allows; leaving early cancels the generator; an error ends the stream after
the items already sent; a million small items keep memory flat."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import psutil
import pytest
import zmq
from grid_support import SCRIPTS, Grid, metrics, scaled, wait_until

from madrpc import AsyncClient, JSError, RpcError
from madrpc.errors import ErrorCode

STREAMS_JS = SCRIPTS / "streams.js"


@pytest.fixture
def grid(pooled_grid: Callable[..., Grid]) -> Grid:
    """A grid of the pool, its one context's counters of earlier tests set back to 0."""
    grid = pooled_grid(STREAMS_JS, contexts=1)
    with grid.client() as client:
        assert client.call("reset") is True
    return grid


def context_value(grid: Grid, method: str) -> Any:
    with grid.client() as client:
        return client.call(method)


def test_items_arrive_one_by_one_as_the_generator_yields_them(grid: Grid) -> None:
    arrivals = []
    with grid.client(timeout=30) as client:
        started = time.monotonic()
        for item in client.stream("slow_count", {"n": 5, "ms": 400}):
            arrivals.append((item, time.monotonic() - started))
    assert [item for item, _ in arrivals] == [0, 1, 2, 3, 4]
    first, last = arrivals[0][1], arrivals[-1][1]
    assert last - first > 1.2   # four more timer waits of 400 ms came after the first item


def test_the_async_client_streams_items_with_async_for(grid: Grid) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(grid.frontend, timeout=30) as client:
            return [item async for item in client.stream("count", [100], window=8)]

    assert asyncio.run(main()) == list(range(100))


def test_the_worker_runs_no_further_ahead_than_the_window(grid: Grid) -> None:
    with grid.client(timeout=30) as client:
        items = client.stream("endless", window=8)
        assert next(items) == 0
        time.sleep(scaled(0.5))   # room to run ahead, if it could
        assert context_value(grid, "produced") == 8
        taken = [next(items) for _ in range(20)]
        assert taken == list(range(1, 21))
        items.close()
    wait_until(lambda: context_value(grid, "finalized") == 1, scaled(5),
               message="the endless generator's finally block ran")
    produced = context_value(grid, "produced")
    assert 21 <= produced <= 21 + 8


def test_leaving_the_loop_early_cancels_the_generator_on_the_grid(grid: Grid) -> None:
    with grid.client(timeout=60) as client:
        for item in client.stream("endless", window=16):
            if item == 100:
                break
        wait_until(lambda: context_value(grid, "finalized") == 1, scaled(5),
                   message="the endless generator's finally block ran")
        wait_until(lambda: metrics(grid.frontend)["broker"]["in_flight"] == 0, scaled(5),
                   message="nothing left in flight")
        assert client.call("noop", [7]) == 7


def test_an_exception_midway_ends_the_stream_after_the_items_already_sent(grid: Grid) -> None:
    received = []
    with grid.client(timeout=30) as client, pytest.raises(JSError) as raised:
        for item in client.stream("count_then_throw", {"n": 5}):
            received.append(item)
    assert received == [0, 1, 2, 3, 4]
    assert raised.value.code == ErrorCode.JS_EXCEPTION
    assert "RangeError: broke after 5 items" in str(raised.value)


def test_the_cpu_limit_stops_a_generator_that_spins_after_its_items(grid: Grid) -> None:
    received = []
    with grid.client(timeout=30) as client, pytest.raises(RpcError) as raised:
        for item in client.stream("spin_after", {"n": 3}, cpu_limit_ms=300):
            received.append(item)
    assert received == [0, 1, 2]
    assert raised.value.code == ErrorCode.CPU_LIMIT
    assert context_value(grid, "noop") is None


def test_a_plain_call_of_a_generator_gets_the_array_of_its_items(grid: Grid) -> None:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    try:
        socket.connect(grid.frontend)
        socket.send(b'{"jsonrpc":"2.0","id":1,"method":"count","params":[5]}')
        assert socket.poll(int(scaled(10) * 1000))
        assert orjson.loads(socket.recv()) == {"jsonrpc": "2.0", "id": 1,
                                               "result": [0, 1, 2, 3, 4]}
    finally:
        socket.close(linger=0)
    with grid.client() as client:
        assert client.call("count", [3]) == [0, 1, 2]


def test_the_wire_a_plain_zeromq_socket_sees_partials_grants_and_the_final_answer(
    grid: Grid,
) -> None:
    """What docs/protocol.md promises another language: partial replies of items, at most
    the window ahead until ``_more``, then the final answer with the item count."""
    socket = zmq.Context.instance().socket(zmq.DEALER)

    def receive_items(expected: int) -> list[Any]:
        items: list[Any] = []
        while len(items) < expected:
            assert socket.poll(int(scaled(10) * 1000)), f"only {items} arrived"
            reply = orjson.loads(socket.recv())
            assert reply["id"] == "s1" and "result" not in reply
            items += reply["madrpc"]["items"]
        return items

    try:
        socket.connect(grid.frontend)
        socket.send(orjson.dumps({"jsonrpc": "2.0", "id": "s1", "method": "count",
                                  "params": [10], "madrpc": {"stream": {"window": 4}}}))
        assert receive_items(4) == [0, 1, 2, 3]
        assert not socket.poll(int(scaled(0.3) * 1000))   # the window is spent
        socket.send(orjson.dumps({"jsonrpc": "2.0", "method": "_more",
                                  "params": {"id": "s1", "n": 4}}))
        assert receive_items(4) == [4, 5, 6, 7]
        socket.send(orjson.dumps({"jsonrpc": "2.0", "method": "_more",
                                  "params": {"id": "s1", "n": 4}}))
        assert receive_items(2) == [8, 9]
        assert socket.poll(int(scaled(10) * 1000))
        assert orjson.loads(socket.recv()) == {"jsonrpc": "2.0", "id": "s1",
                                               "result": {"items": 10}}
    finally:
        socket.close(linger=0)


def test_madrpc_call_stream_prints_one_json_line_per_item(grid: Grid) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "madrpc.cli", "call", "--stream", "--broker", grid.frontend,
         "lines", '{"n": 3, "size": 2}'],
        capture_output=True, text=True, timeout=scaled(30), check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == [
        {"i": 0, "pad": "xx"}, {"i": 1, "pad": "xx"}, {"i": 2, "pad": "xx"}]


def test_javascript_reads_another_functions_stream_with_for_await(grid: Grid) -> None:
    with grid.client(timeout=30) as client:
        assert client.call("sum_stream", {"method": "count", "args": [1000], "window": 16}) == {
            "sum": 499500, "n": 1000}
        assert client.call("take_from_stream", {"method": "endless", "take": 3}) == [0, 1, 2]
        wait_until(lambda: client.call("finalized") >= 1, scaled(5),
                   message="the abandoned nested stream was cancelled")
        caught = client.call("catch_stream", {"method": "count_then_throw", "args": {"n": 2}})
    assert caught["out"] == [0, 1] and caught["code"] == ErrorCode.JS_EXCEPTION
    assert "broke after 2 items" in caught["message"]


def test_a_stream_whose_worker_dies_after_items_fails_instead_of_repeating_them(
    start_grid: Callable[..., Grid],
) -> None:
    grid = start_grid(STREAMS_JS, workers=2, contexts=1)
    received = []
    with grid.client(timeout=60) as client, pytest.raises(RpcError) as raised:
        for item in client.stream("slow_count", {"n": 1000, "ms": 50}, window=4):
            received.append(item)
            if item == 2:
                holder = next(w for w in metrics(grid.frontend)["workers"]
                              if w.get("in_flight"))
                next(w for w in grid.workers if w.pid == holder["pid"]).kill_group()
    assert raised.value.code == ErrorCode.WORKER_LOST
    assert received == list(range(len(received))) and len(received) >= 3


def _tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (process, *process.children(recursive=True)))


def test_a_million_small_items_keep_worker_and_client_memory_flat(grid: Grid) -> None:
    worker_pid = grid.workers[0].pid
    me = psutil.Process()
    samples: dict[str, list[int]] = {"worker": [], "client": []}
    count = 0
    with grid.client(timeout=600) as client:
        for item in client.stream("count", [1_000_000], window=2000):
            assert item == count
            count += 1
            if count % 200_000 == 0:
                samples["worker"].append(_tree_rss(worker_pid))
                samples["client"].append(me.memory_info().rss)
    assert count == 1_000_000
    mib = 1024 * 1024
    # From the first sample (200k items in) to the last (1M): no growth with the items.
    assert samples["worker"][-1] - samples["worker"][0] < 40 * mib, samples
    assert samples["client"][-1] - samples["client"][0] < 20 * mib, samples
