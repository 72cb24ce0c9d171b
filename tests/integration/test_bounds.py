"""Hostile input against a real broker: each bound answers with a clear error, the grid
keeps serving, and the broker's memory stays flat (its RSS, read with psutil)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import psutil
import pytest
import zmq
from grid_support import SCRIPTS, Grid, metrics, scaled, wait_until

from madrpc import Client

RUNTIME_JS = SCRIPTS / "runtime.js"
MIB = 1024 * 1024


def rss(grid: Grid) -> int:
    return int(psutil.Process(grid.broker.pid).memory_info().rss)


class Raw:
    """A raw DEALER client that sends JSON-RPC frames and reads (or does not read) replies."""

    def __init__(self, endpoint: str, receive_hwm: int = 1000) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, receive_hwm)
        self.socket.connect(endpoint)

    def send(self, members: list[dict[str, Any]]) -> None:
        self.socket.send(orjson.dumps(members if len(members) > 1 else members[0]))

    def read(self, until: Callable[[list[Any]], bool], timeout_s: float = 60) -> list[Any]:
        replies: list[Any] = []
        deadline = time.monotonic() + scaled(timeout_s)
        while not until(replies) and time.monotonic() < deadline:
            if self.socket.poll(100):
                document = orjson.loads(self.socket.recv())
                replies.extend(document if isinstance(document, list) else [document])
        return replies

    def close(self) -> None:
        self.socket.close(linger=0)


def request(method: str, rid: int, params: Any = None, **options: Any) -> dict[str, Any]:
    member: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
    if params is not None:
        member["params"] = params
    if options:
        member["madrpc"] = options
    return member


def warmed_up(grid: Grid) -> int:
    """The broker's RSS once it has served a little (allocator pools in place)."""
    with grid.client() as client:
        client.map("noop", [[n] for n in range(2000)])
    return rss(grid)


@pytest.mark.timeout(scaled(300))
def test_distinct_unknown_methods_and_day_long_deadlines_leave_the_broker_flat(
    start_grid: Callable[..., Grid],
) -> None:
    grid = start_grid(RUNTIME_JS, contexts=2)
    before = warmed_up(grid)
    raw = Raw(grid.frontend)
    try:
        for batch in range(20):   # 20,000 distinct method names nobody serves
            raw.send([request(f"no-such-method-{batch}-{n}", n) for n in range(1000)])
            replies = raw.read(lambda r: len(r) >= 1000)
            assert {r["error"]["code"] for r in replies} == {-32601}
        for _ in range(50):   # 50,000 answered requests allowed a day each
            raw.send([request("noop", n, [n], timeout_ms=86_400_000) for n in range(1000)])
            replies = raw.read(lambda r: len(r) >= 1000)
            assert sorted(r["result"] for r in replies) == list(range(1000))
    finally:
        raw.close()
    snapshot = metrics(grid.frontend)
    grown = rss(grid) - before
    print(f"RSS growth after 20,000 unknown methods and 50,000 day-long requests: "
          f"{grown / MIB:.1f} MiB; _metrics {len(orjson.dumps(snapshot))} bytes")

    assert grown < 40 * MIB, f"broker RSS grew by {grown / MIB:.1f} MiB"
    assert len(orjson.dumps(snapshot)) < 256 * 1024
    assert not any(m.startswith("no-such-method") for m in snapshot["methods"])
    assert snapshot["broker"]["bounds"]["deadline_entries"] < 5000
    with grid.client() as client:
        assert client.call("noop", [1]) == 1


@pytest.mark.timeout(scaled(300))
def test_keyed_large_results_are_not_kept_whole_for_retries(
    start_grid: Callable[..., Grid],
) -> None:
    grid = start_grid(RUNTIME_JS, contexts=2)
    before = warmed_up(grid)
    with grid.client(timeout=60) as client:
        for n in range(40):   # 40 keyed 4 MiB results from a request of a few bytes
            assert len(client.call("blob", {"bytes": 4 * MIB},
                                   idempotency_key=f"big-{n}")) == 4 * MIB
    bounds = metrics(grid.frontend)["broker"]["bounds"]
    grown = rss(grid) - before
    print(f"RSS growth after 40 keyed 4 MiB results: {grown / MIB:.1f} MiB")

    assert bounds["idempotency_too_large"] == 40 and bounds["idempotency_bytes"] < MIB
    assert grown < 40 * MIB, f"broker RSS grew by {grown / MIB:.1f} MiB"


@pytest.mark.timeout(scaled(300))
def test_a_client_that_reads_no_replies_cannot_grow_the_broker_or_slow_others(
    start_grid: Callable[..., Grid],
) -> None:
    grid = start_grid(RUNTIME_JS, contexts=2)
    before = warmed_up(grid)
    sleeper = Raw(grid.frontend, receive_hwm=1)   # takes one reply, then reads nothing
    try:
        for n in range(400):   # 400 replies of 1 MiB it will never read
            sleeper.send([request("blob", n, {"bytes": MIB})])
        wait_until(lambda: (b := metrics(grid.frontend)["broker"])["in_flight"] == 0
                   and b["queue_depth"] == 0, 120, 0.2, "all 400 answered or dropped")
        bounds = metrics(grid.frontend)["broker"]["bounds"]
        grown = rss(grid) - before
        print(f"RSS growth with 400 unread 1 MiB replies: {grown / MIB:.1f} MiB; {bounds}")
        with grid.client() as client:
            started = time.monotonic()
            assert client.call("noop", ["still served"]) == "still served"
            assert time.monotonic() - started < scaled(2)
    finally:
        sleeper.close()

    assert bounds["backlog_dropped"] > 0
    assert bounds["backlog_bytes"] <= 2 * 16 * MIB
    # ZeroMQ's queue (client_hwm = 64 replies) plus the broker's own (2 x 16 MiB), not 400 MiB
    assert grown < 64 * MIB + 32 * MIB + 40 * MIB, f"broker RSS grew by {grown / MIB:.1f} MiB"


@pytest.mark.timeout(scaled(120))
def test_one_client_cannot_fill_the_queue_for_everyone(start_grid: Callable[..., Grid]) -> None:
    grid = start_grid(RUNTIME_JS, contexts=2,
                      broker_args=("--max-queue", "100", "--max-client-requests", "5"))
    greedy = Raw(grid.frontend)
    victim_result: list[Any] = []
    try:
        for n in range(200):
            greedy.send([request("sleep", n, {"ms": 200})])
        refused = greedy.read(lambda r: len(r) >= 195, 30)

        def victim() -> None:
            with grid.client(timeout=30) as client:
                victim_result.append(client.call("noop", ["mine"]))

        thread = threading.Thread(target=victim)
        thread.start()
        thread.join(scaled(30))
    finally:
        greedy.close()

    assert victim_result == ["mine"]
    assert len(refused) == 195
    assert {r["error"]["code"] for r in refused} == {-32002}
    assert all(r["error"]["data"]["retry_after_ms"] > 0 for r in refused)
    assert "limit per client is 5" in refused[0]["error"]["message"]


def test_the_python_client_waits_out_a_retry_after_hint_and_then_succeeds(
    start_grid: Callable[..., Grid],
) -> None:
    grid = start_grid(RUNTIME_JS, contexts=1, broker_args=("--client-rate", "2",
                                                            "--client-burst", "1"))
    with Client(grid.frontend, timeout=scaled(30)) as client:
        started = time.monotonic()
        assert [client.call("noop", [n]) for n in range(3)] == [0, 1, 2]
        elapsed = time.monotonic() - started

    assert elapsed >= 0.9   # 2 per second with a burst of 1: the third waited its turn
    assert metrics(grid.frontend)["broker"]["bounds"]["client_refusals"] >= 1
