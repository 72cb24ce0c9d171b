"""What keeps one broker cheap with many workers (tools/bench_scale.py measures it): the
liveness checks of a tick look only at workers whose time has come, a worker is found by
its id through an index, a method whose workers are all busy does not make every request
walk them all, and percentiles come from one pass. Each keeps the behaviour it had."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from madrpc.broker_dispatch import Dispatcher
from madrpc.broker_outbox import Outbox
from madrpc.broker_requests import RequestTable
from madrpc.broker_tables import Request
from madrpc.broker_workers import WorkerTable
from madrpc.config import BrokerConfig
from madrpc.jsonrpc import Call, CallOptions
from madrpc.metrics import BUCKET_COUNT, Histogram, bucket_upper

W1, W2, W3 = b"w1", b"w2", b"w3"


def workers(*specs: tuple[bytes, tuple[str, ...], int], **config: Any) -> WorkerTable:
    config.setdefault("heartbeat_interval_s", 1.0)
    config.setdefault("heartbeat_liveness", 3)
    table = WorkerTable(BrokerConfig(**config))
    for identity, methods, credit in specs:
        table.add(identity, {"id": identity.decode()}, frozenset(methods), credit, 0.0)
    return table


# ================================================================ liveness


def test_a_worker_heard_from_is_not_silent_until_the_window_after_it_was_last_heard() -> None:
    table = workers((W1, ("add",), 1), (W2, ("add",), 1))
    table[W1].heartbeat.heard(2.0)

    assert table.silent(2.9) == []
    assert table.silent(3.0) == [table[W2]]
    assert table.silent(4.9) == [table[W2]]   # still registered: still silent
    table.remove(W2)
    assert table.silent(4.9) == []
    assert table.silent(5.0) == [table[W1]]


def test_silent_workers_come_longest_silent_first() -> None:
    table = workers((W1, ("add",), 1), (W2, ("add",), 1), (W3, ("add",), 1))
    table[W1].heartbeat.heard(0.5)
    table[W3].heartbeat.heard(0.2)

    assert [w.identity for w in table.silent(10.0)] == [W2, W3, W1]


def test_a_worker_that_registered_again_is_judged_by_its_new_record_only() -> None:
    table = workers((W1, ("add",), 1))
    table.remove(W1)
    table.add(W1, {"id": "w1"}, frozenset({"add"}), 1, 2.5)

    assert table.silent(3.0) == []
    assert table.silent(5.5) == [table[W1]]
    assert table.heartbeat_due(3.0) == []
    assert table.heartbeat_due(3.5) == [table[W1]]


def test_each_worker_is_due_one_heartbeat_per_interval_counted_from_when_it_was_sent() -> None:
    table = workers((W1, ("add",), 1))
    table.add(W2, {"id": "w2"}, frozenset({"add"}), 1, 0.4)

    assert table.heartbeat_due(0.9) == []
    assert table.heartbeat_due(1.2) == [table[W1]]
    assert table.heartbeat_due(1.3) == []
    assert table.heartbeat_due(1.4) == [table[W2]]
    assert table.heartbeat_due(2.5) == [table[W1], table[W2]]
    table.remove(W1)
    assert table.heartbeat_due(10.0) == [table[W2]]


def test_many_workers_are_checked_in_order_and_none_is_missed() -> None:
    rng = random.Random(7)
    table = workers()
    heard = {}
    for n in range(500):
        identity = b"w%d" % n
        table.add(identity, {"id": str(n)}, frozenset({"add"}), 1, 0.0)
        heard[identity] = rng.uniform(0.0, 5.0)
        table[identity].heartbeat.heard(heard[identity])
    now = 0.0
    while table:
        now += 0.02
        expected = {i for i, t in heard.items() if i in table and t + 3.0 <= now}
        silent = table.silent(now)
        assert {w.identity for w in silent} == expected
        for worker in silent:
            table.remove(worker.identity)
    assert now == pytest.approx(8.0, abs=0.05)


# ================================================================ finding workers


def test_a_worker_is_found_by_its_id_or_by_its_identity_as_written_in_hex() -> None:
    table = workers((W1, ("add",), 1), (W2, ("add",), 1))
    table.add(b"\xab\xcd", {}, frozenset({"add"}), 1, 0.0)

    assert table.find("w2") is table[W2]
    assert table.find(W2.hex()) is table[W2]
    assert table.find("abcd") is table[b"\xab\xcd"]
    assert table.find("ABCD") is None and table.find("ab cd") is None
    assert table.find("") is None
    assert table.with_id("w1") is table[W1]
    assert table.with_id(W1.hex()) is None


def test_an_id_that_is_another_workers_identity_finds_the_first_in_rotation() -> None:
    table = WorkerTable(BrokerConfig())
    table.add(W1, {"id": "x"}, frozenset({"add"}), 1, 0.0)
    table.add(W2, {"id": W1.hex()}, frozenset({"add"}), 1, 0.0)

    assert table.find(W1.hex()) is table[W1]
    table.pick("add", 0.0)   # W1 goes to the back of the rotation
    assert table.find(W1.hex()) is table[W2]


def test_the_id_index_follows_updates_and_removals() -> None:
    table = workers((W1, ("add",), 1), (W2, ("add",), 1))
    table.update(table[W1], {"id": "renamed"}, frozenset({"add"}), 1.0)

    assert (table.with_id("w1"), table.with_id("renamed")) == (None, table[W1])
    assert table.id_taken("renamed", W2) and not table.id_taken("renamed", W1)
    table.remove(W1)
    assert table.find("renamed") is None and not table.id_taken("renamed", W2)


# ================================================================ dispatching when busy


def queued_request(requests: RequestTable, method: str = "add") -> Request:
    call = Call(method, [1], b"1", CallOptions(), b"{}")
    request = Request(requests.new_key(), call, 100.0, 0, 0.0)
    requests.add(request)
    return request


def test_when_every_worker_is_busy_requests_queue_and_the_first_with_room_takes_them() -> None:
    table = workers((W1, ("add",), 1), (W2, ("add",), 1))
    requests, outbox = RequestTable(), Outbox()
    dispatcher = Dispatcher(requests, table, outbox, 100, 3)
    first, second, third, fourth = (queued_request(requests) for _ in range(4))
    for r in (first, second, third):
        dispatcher.route(r, 0.0)

    assert (first.worker, second.worker, third.queued) == (W1, W2, True)
    table[W2].add_credit(2)
    dispatcher.serve(table[W2], 0.1)   # what a REPLY does
    assert (third.worker, table[W2].credit) == (W2, 1)
    dispatcher.route(fourth, 0.2)
    assert fourth.worker == W2


def test_a_resumed_worker_takes_the_next_request_at_once() -> None:
    table = workers((W1, ("add",), 1))
    requests = RequestTable()
    dispatcher = Dispatcher(requests, table, Outbox(), 100, 3)
    table.set_paused(table[W1], True)
    waiting, new = queued_request(requests), queued_request(requests)
    dispatcher.route(waiting, 0.0)
    table.set_paused(table[W1], False)

    dispatcher.route(new, 0.1)
    assert (waiting.queued, new.worker) == (True, W1)


def test_a_circuit_that_lets_a_trial_through_gets_a_request_from_the_next_tick() -> None:
    table = workers((W1, ("add",), 5), breaker_threshold=1)
    table[W1].breaker.on_failure(0.0)   # open for 1 s
    requests = RequestTable()
    dispatcher = Dispatcher(requests, table, Outbox(), 100, 3)
    early, late = queued_request(requests), queued_request(requests)
    dispatcher.route(early, 0.5)
    dispatcher.route(late, 0.6)
    assert (early.queued, late.queued) == (True, True)

    dispatcher.serve_all(1.5)   # a tick
    assert early.worker == W1 and late.queued


# ================================================================ percentiles


def nearest_rank_bucket(histogram: Histogram, q: float) -> float:
    """The percentile as the bucket walk did it before."""
    rank = max(1, math.ceil(histogram.total * q / 100))
    seen = 0
    for index, count in enumerate(histogram.counts):
        seen += count
        if seen >= rank:
            return bucket_upper(index)
    return bucket_upper(BUCKET_COUNT - 1)


@pytest.mark.parametrize("seed", range(20))
def test_percentiles_from_one_pass_are_those_of_the_bucket_walk(seed: int) -> None:
    rng = random.Random(seed)
    histogram = Histogram()
    for _ in range(rng.randrange(1, 300)):
        histogram.add(rng.lognormvariate(-7, 2))
    qs = (0.0, 1.0, 50.0, 95.0, 99.0, 99.9, 100.0)

    assert histogram.percentiles(qs) == [nearest_rank_bucket(histogram, q) for q in qs]
    assert [histogram.percentile(q) for q in qs] == histogram.percentiles(qs)


def test_a_total_above_the_counted_values_gives_the_last_bucket() -> None:
    histogram = Histogram()
    histogram.add(0.001)
    histogram.total = 3

    assert histogram.percentiles((99,)) == [bucket_upper(BUCKET_COUNT - 1)]
