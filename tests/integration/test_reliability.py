"""Reliability: nothing lost when workers, brokers or clients fail (real processes, signals)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import zmq
from grid_support import (
    SCRIPTS,
    Grid,
    Spawner,
    metrics,
    scaled,
    scaled_ms,
    wait_for_in_flight,
    wait_for_workers,
    wait_until,
)

from madrpc import Client, RpcError

RUNTIME_JS = SCRIPTS / "runtime.js"
Replies = list[dict[str, Any]]


def arrived(count: int) -> Callable[[Replies], bool]:
    """For :meth:`Dealer.replies`: stop once ``count`` replies are in."""
    return lambda replies: len(replies) >= count


class Dealer:
    """A raw DEALER client, to see exactly which frames come back."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, method: str, params: Any = None, id: Any = 1, **options: Any) -> None:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
        if params is not None:
            request["params"] = params
        if options:
            request["madrpc"] = options
        self.socket.send(orjson.dumps(request))

    def replies(self, wait_s: float, until: Callable[[Replies], bool] | None = None,
                ) -> Replies:
        """Every reply that arrives within ``wait_s`` (scaled); with ``until``, stop as soon
        as ``until(replies)`` holds, taking whatever else has already arrived too."""
        out: Replies = []
        deadline = time.monotonic() + scaled(wait_s)
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(left * 1000)):
                out.append(orjson.loads(self.socket.recv()))
                if until is not None and until(out):
                    while self.socket.poll(0):
                        out.append(orjson.loads(self.socket.recv()))
                    break
        return out

    def close(self) -> None:
        self.socket.close(linger=0)


def holder(frontend: str, grid: Grid) -> Any:
    """The worker process holding a request right now (from _metrics)."""
    busy = [w for w in metrics(frontend)["workers"] if w["in_flight"]]
    if len(busy) != 1:
        return None
    return next((w for w in grid.workers if w.pid == busy[0]["pid"]), None)


# ------------------------------------------------------------------ worker death


def test_a_request_whose_workers_keep_dying_fails_after_max_attempts(start_grid) -> None:
    grid: Grid = start_grid(RUNTIME_JS, workers=4)
    dealer = Dealer(grid.frontend)
    try:
        dealer.send("sleep", {"ms": 60_000}, timeout_ms=60_000)
        for _ in range(3):
            victim = wait_until(lambda: holder(grid.frontend, grid), 10, message="a holder")
            victim.kill_group()
            wait_until(lambda v=victim: all(w["pid"] != v.pid
                                            for w in metrics(grid.frontend)["workers"]), 10)
        (reply,) = dealer.replies(10, arrived(1))   # sent when the third holder left
    finally:
        dealer.close()
    assert reply["error"]["code"] == -32005
    assert "dispatched 3 times" in reply["error"]["message"]
    assert reply["error"]["data"] == {"attempts": 3}


def test_a_hung_worker_leaves_and_its_late_reply_is_dropped(start_grid) -> None:
    grid: Grid = start_grid(RUNTIME_JS, workers=2)
    dealer = Dealer(grid.frontend)
    try:
        dealer.send("busy", {"ms": 1500}, id=7, timeout_ms=scaled_ms(20_000))
        hung = wait_until(lambda: holder(grid.frontend, grid), 10, message="a holder")
        os.killpg(hung.pid, signal.SIGSTOP)   # the whole machine hangs
        try:
            wait_until(lambda: len(metrics(grid.frontend)["workers"]) == 1, 10,
                       message="the hung worker to leave")
            replies = dealer.replies(10, arrived(1))   # the other worker runs it again
        finally:
            os.killpg(hung.pid, signal.SIGCONT)
        # The hung one finishes too, late: its reply (if it sends one rather than drop the
        # request) reaches the broker before it registers again.
        wait_until(lambda: any(w["pid"] == hung.pid for w in metrics(grid.frontend)["workers"]),
                   10, message="the hung worker to register again")
        replies += dealer.replies(0.5)
    finally:
        dealer.close()
    assert replies == [{"jsonrpc": "2.0", "id": 7, "result": 1500}]
    assert metrics(grid.frontend)["broker"]["requeued"] >= 1


# ------------------------------------------------------------------ idempotency


def test_requests_with_one_idempotency_key_run_once(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    dealer = Dealer(grid.frontend)
    try:
        dealer.send("tally_now", id=-1)   # what earlier tests left on the one context
        (tally,) = dealer.replies(10, arrived(1))
        for i in range(3):   # the same key three times while the first still runs
            dealer.send("tally", {"ms": scaled_ms(300)}, id=i, idempotency_key="job-1")
        first = dealer.replies(2.0, arrived(3))
        dealer.send("tally", {"ms": 0}, id=9, idempotency_key="job-1")   # after it finished
        later = dealer.replies(1.0, arrived(1))
        dealer.send("tally_now", id=10)
        (count,) = dealer.replies(1.0, arrived(1))
    finally:
        dealer.close()
    start = tally["result"]
    assert sorted(r["id"] for r in first) == [0, 1, 2]
    assert {r["result"] for r in first} == {start + 1}
    assert later == [{"jsonrpc": "2.0", "id": 9, "result": start + 1}]
    assert count["result"] == start + 1   # one execution for four requests


def test_without_a_key_each_request_runs(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with Client(grid.frontend, timeout=scaled(10)) as client:
        start = client.call("tally_now")
        results = [client.call("tally", idempotency_key=None) for _ in range(3)]
    assert results == [start + 1, start + 2, start + 3]


# ------------------------------------------------------------------ client retries


def test_the_client_rides_out_a_broker_restart(spawn: Spawner) -> None:
    endpoints = spawn.endpoints()
    broker = spawn.broker(endpoints)
    spawn.worker(endpoints, RUNTIME_JS, 1)
    wait_for_workers(endpoints.frontend, 1)
    with Client(endpoints.frontend, timeout=scaled(30)) as client:
        assert client.call("tally") == 1
        outcome: dict[str, Any] = {}
        thread = threading.Thread(   # still running while the broker is away and back
            target=lambda: outcome.setdefault("r", client.call("tally",
                                                               {"ms": scaled_ms(2000)})))
        thread.start()
        wait_for_in_flight(endpoints.frontend)
        broker.kill_group()
        time.sleep(scaled(0.3))   # the broker stays down a moment
        spawn.broker(endpoints)
        thread.join(scaled(30))
        assert outcome.get("r") == 2   # the running request was adopted, not run again
        assert client.call("tally_now") == 2
        assert client.call("noop", ["ok"]) == "ok"


def test_the_client_reconnects_to_a_broker_that_starts_late(spawn: Spawner) -> None:
    endpoints = spawn.endpoints()
    spawn.worker(endpoints, RUNTIME_JS, 1)
    outcome: dict[str, Any] = {}
    client = Client(endpoints.frontend, timeout=scaled(30))
    try:
        thread = threading.Thread(target=lambda: outcome.setdefault(
            "r", client.call("noop", ["late"])))
        thread.start()
        wait_until(lambda: client.stats().in_flight == 1,   # booked and sent at once
                   10, 0.02, "the call to be sent while no broker is up")
        spawn.broker(endpoints)
        thread.join(scaled(30))
    finally:
        client.close()
    assert outcome.get("r") == "late"


def test_errors_that_are_not_transient_are_not_retried(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with Client(grid.frontend, timeout=scaled(10)) as client:
        with pytest.raises(RpcError):
            client.call("no_such_method")
        with pytest.raises(RpcError):
            client.call("spin", timeout=0.5)
        assert client.stats().retries == 0
        assert client.call("tally_now") == 0


# ------------------------------------------------------------------ circuit breaker


def test_a_flapping_worker_is_taken_out_of_rotation_and_tried_again_later(
    start_grid,
) -> None:
    grid: Grid = start_grid(RUNTIME_JS, workers=2, broker_args=("--breaker-threshold", "1"))
    flapper = grid.workers[0]
    os.killpg(flapper.pid, signal.SIGSTOP)
    wait_until(lambda: len(metrics(grid.frontend)["workers"]) == 1, 10, message="removal")
    os.killpg(flapper.pid, signal.SIGCONT)

    def circuit_of_flapper() -> Any:
        for worker in metrics(grid.frontend)["workers"]:
            if worker["pid"] == flapper.pid:
                return worker["circuit"]["state"]
        return None

    assert wait_until(circuit_of_flapper, 10, message="the flapper to re-register") in (
        "open", "half-open")
    with Client(grid.frontend, timeout=scaled(10)) as client:
        assert client.map("noop", [[i] for i in range(10)]) == list(range(10))

        def closed_after_some_traffic() -> bool:
            client.map("noop", [[i] for i in range(4)])   # one of them is the trial
            return circuit_of_flapper() == "closed"

        wait_until(closed_after_some_traffic, 10, 0.2, "the circuit to close after a trial")


# ------------------------------------------------------------------ graceful drain


def test_sigterm_lets_a_worker_finish_what_it_holds_and_exit_0(start_grid) -> None:
    grid: Grid = start_grid(RUNTIME_JS, workers=2)
    leaving = grid.workers[0]
    with Client(grid.frontend, timeout=scaled(30)) as client:
        results: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: results.setdefault(
            "r", client.map("sleep", [{"ms": 400} for _ in range(12)])))
        thread.start()
        wait_until(lambda: any(w["pid"] == leaving.pid and w["in_flight"]
                               for w in metrics(grid.frontend)["workers"]), 10)
        leaving.signal(signal.SIGTERM)
        assert leaving.wait(15) == 0
        thread.join(scaled(30))
        assert results.get("r") == [400] * 12
    stats = metrics(grid.frontend)["broker"]
    assert stats["requeued"] == 0   # it finished its own requests: none ran twice
    assert "draining" in leaving.stderr()


def test_sigterm_lets_the_broker_answer_in_flight_requests_then_refuse_new_ones(
    start_grid,
) -> None:
    grid: Grid = start_grid(RUNTIME_JS, workers=1)
    job_ms = scaled_ms(800)   # still running when SIGTERM and the next request arrive
    dealer = Dealer(grid.frontend)
    try:
        dealer.send("sleep", {"ms": job_ms}, id=1)
        wait_for_in_flight(grid.frontend)
        grid.broker.signal(signal.SIGTERM)
        grid.broker.wait_for_log("broker draining")
        dealer.send("noop", [1], id=2)
        replies = {r["id"]: r for r in dealer.replies(3.0, arrived(2))}
    finally:
        dealer.close()
    assert replies[1]["result"] == job_ms
    assert replies[2]["error"]["code"] == -32007
    assert grid.broker.wait(10) == 0
    wait_until(lambda: "shutting down" in grid.workers[0].stderr(), 5,
               message="the worker to hear of it")
    assert "internal error" not in grid.workers[0].stderr()   # it reconnects, nothing more


# ------------------------------------------------------------------ backpressure, bad input


def is_overloaded(reply: dict[str, Any]) -> bool:
    return bool(reply.get("error", {}).get("code") == -32002)


def test_a_full_queue_answers_overloaded_at_once(start_grid) -> None:
    grid: Grid = start_grid(RUNTIME_JS, contexts=1, broker_args=("--max-queue", "3"))
    dealer = Dealer(grid.frontend)
    try:
        for i in range(12):   # busy, not sleep: a request parked on a timer frees its
            dealer.send("busy", {"ms": 300}, id=i)   # credit, so the worker would take more
        replies = dealer.replies(1.0, lambda got: any(map(is_overloaded, got)))
    finally:
        dealer.close()
    overloaded = [r for r in replies if is_overloaded(r)]
    assert overloaded, replies
    assert all("Overloaded" in r["error"]["message"] for r in overloaded)


def test_an_oversized_message_is_refused_and_others_are_still_served(start_grid) -> None:
    grid: Grid = start_grid(RUNTIME_JS, broker_args=("--max-message-bytes", "4096"))
    big = Dealer(grid.frontend)
    try:
        big.send("noop", ["x" * 10_000])
        assert big.replies(0.5) == []   # ZeroMQ disconnects the peer silently
    finally:
        big.close()
    with Client(grid.frontend, timeout=scaled(10)) as client:
        assert client.call("noop", ["small"]) == "small"


def test_garbage_from_a_fake_worker_is_dropped_and_counted(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS)
    dropped = metrics(grid.frontend)["broker"]["dropped_frames"]   # by earlier tests too
    mismatches = grid.broker.stderr().count("version mismatch")
    fake = zmq.Context.instance().socket(zmq.DEALER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.connect(grid.endpoints.backend)
    try:
        fake.send_multipart([b"MADRPC-W9", b"READY", b"{}"])      # another protocol version
        fake.send_multipart([b"hello"])                            # too short
        fake.send_multipart([b"MADRPC-W1", b"REPLY", b"x"])        # malformed
        fake.send_multipart([b"MADRPC-W1", b"READY", b"not json"])
        wait_until(lambda: metrics(grid.frontend)["broker"]["dropped_frames"] >= dropped + 4, 5,
                   message="the drops to be counted")
    finally:
        fake.close()
    assert grid.broker.stderr().count("version mismatch") > mismatches
    with Client(grid.frontend, timeout=scaled(10)) as client:
        assert client.call("noop", [1]) == 1


@pytest.mark.parametrize("name", ["constructor", "__proto__", "toString", "hasOwnProperty",
                                  "(globalThis.x=1, 'noop')", "noop; globalThis.x = 1"])
def test_method_names_are_looked_up_never_evaluated(pooled_grid, name: str) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with Client(grid.frontend, timeout=scaled(10)) as client:
        with pytest.raises(RpcError) as info:
            client.call(name, [])
        assert info.value.code == -32601
        assert client.call("global_x") == "undefined"
