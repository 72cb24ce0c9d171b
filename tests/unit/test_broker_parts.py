"""The broker's parts, each alone: outbox, request table, worker table, dispatcher,
adoption and figures. Pure: plain floats for time, no sockets."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from madrpc import protocol as p
from madrpc.broker_adoption import Adoption
from madrpc.broker_clients import CLIENT_MEMORY, ClientTable
from madrpc.broker_dispatch import Dispatcher, Refusal
from madrpc.broker_figures import BrokerFigures
from madrpc.broker_outbox import BACKEND, FRONTEND, Outbox
from madrpc.broker_requests import RequestTable
from madrpc.broker_tables import BrokerRun, Request, WorkerRecord
from madrpc.broker_workers import MAX_BREAKERS, WorkerTable, ready_fields
from madrpc.config import BrokerConfig
from madrpc.errors import ErrorCode, ProtocolError
from madrpc.jsonrpc import Call, CallOptions
from madrpc.policy import CircuitState, IdempotencyTable

W1, W2 = b"w1", b"w2"


def request(
    table: RequestTable, method: str = "add", received_at: float = 0.0,
    deadline: float = 10.0, key: str | None = None,
) -> Request:
    options = CallOptions(idempotency_key=key)
    call = Call(method, [1, 2], b"1", options, b'{"jsonrpc":"2.0","method":"%s","id":1}'
                % method.encode())
    return Request(table.new_key(), call, deadline, 0, received_at)


def workers(*specs: tuple[bytes, tuple[str, ...], int], **config: Any) -> WorkerTable:
    table = WorkerTable(BrokerConfig(**config))
    for identity, methods, credit in specs:
        table.add(identity, {"id": identity.decode()}, frozenset(methods), credit, 0.0)
    return table


# ================================================================ Outbox


def test_the_outbox_sends_control_messages_first_then_replies_then_one_message_per_kind() -> None:
    outbox = Outbox()
    outbox.request(W1, b"m1", b"add", b"b1")
    outbox.reply([b"client", b""], b"response")
    outbox.request(W1, b"m2", b"add", b"b2")
    outbox.cancel(W2, b"k1")
    outbox.result(W1, b"c1", b'"result":1')
    outbox.control(W2, [p.TAG, p.HEARTBEAT, b"{}"])

    assert outbox.take() == [
        (BACKEND, [W2, p.TAG, p.HEARTBEAT, b"{}"]),
        (FRONTEND, [b"client", b"", b"response"]),
        (BACKEND, [W1, p.TAG, p.REQUEST, b"m1", b"add", b"b1", b"m2", b"add", b"b2"]),
        (BACKEND, [W2, p.TAG, p.CANCEL, b"k1"]),
        (BACKEND, [W1, p.TAG, p.RESULT, b"c1", b'"result":1']),
    ]


def test_a_cancel_goes_after_the_requests_and_before_the_results_of_the_same_round() -> None:
    """A request cancelled in the round it was sent in must be known when its CANCEL
    comes; the results of the nested calls cancelled with it must come after the CANCEL,
    so its script sees the abort first."""
    outbox = Outbox()
    outbox.result(W1, b"child", b'"error":{"code":-32011,"message":"Cancelled"}')
    outbox.cancel(W1, b"root")
    outbox.request(W1, b"m", b"add", b"b")

    assert [frames[2] for _, frames in outbox.take()] == [p.REQUEST, p.CANCEL, p.RESULT]


def test_the_outbox_is_empty_after_take() -> None:
    outbox = Outbox()
    outbox.cancel(W1, b"k")
    outbox.take()

    assert outbox.take() == []


# ================================================================ RequestTable


def test_new_keys_are_distinct_eight_byte_keys() -> None:
    table = RequestTable()
    keys = {table.new_key() for _ in range(1000)}

    assert len(keys) == 1000 and all(len(k) == p.KEY_SIZE for k in keys)


def test_the_oldest_waiting_request_across_the_asked_methods_is_taken_first() -> None:
    table = RequestTable()
    late_add = request(table, "add", received_at=2.0)
    early_mul = request(table, "mul", received_at=1.0)
    other = request(table, "div", received_at=0.0)
    for r in (late_add, early_mul, other):
        table.add(r)
        table.enqueue(r)

    assert table.take_oldest(["add", "mul"]) is early_mul
    assert table.take_oldest(["add", "mul"]) is late_add
    assert table.take_oldest(["add", "mul"]) is None
    assert table.queued == 1 and table.in_flight == 2


def test_a_requeued_request_waits_at_the_front() -> None:
    table = RequestTable()
    first, again = request(table, received_at=1.0), request(table, received_at=5.0)
    for r in (first, again):
        table.add(r)
    table.enqueue(first)
    table.enqueue(again, front=True)

    assert table.take_oldest(["add"]) is again


def test_a_forgotten_queued_request_is_skipped_and_no_longer_counted() -> None:
    table = RequestTable()
    gone, kept = request(table), request(table)
    for r in (gone, kept):
        table.add(r)
        table.enqueue(r)
    table.forget(gone)

    assert (table.queued, gone.key in table, gone.queued) == (1, False, False)
    assert table.waiting() == [kept]
    assert table.take_oldest(["add"]) is kept


def test_expired_yields_live_and_joined_requests_past_their_deadline_in_order() -> None:
    table = RequestTable()
    live, twin, later = (request(table, deadline=d) for d in (2.0, 1.0, 9.0))
    table.add(live)
    table.join(twin)
    for r in (live, twin, later):
        table.watch(r)

    assert list(table.expired(5.0)) == [twin, live]
    assert table.next_deadline() == 9.0
    table.forget(twin)   # the caller answers it
    assert twin.key not in table.joined


def test_a_request_answered_while_an_earlier_one_expires_is_not_yielded() -> None:
    table = RequestTable()
    first, second = request(table, deadline=1.0), request(table, deadline=2.0)
    for r in (first, second):
        table.add(r)
        table.watch(r)
    expired = []
    for r in table.expired(5.0):
        expired.append(r)
        table.forget(second)   # e.g. answered as a consequence of the first one

    assert expired == [first]


def test_never_dispatched_lists_only_queued_requests_no_worker_ever_held() -> None:
    table = RequestTable()
    fresh, retried = request(table), request(table)
    retried.attempts = 1
    for r in (fresh, retried):
        table.add(r)
        table.enqueue(r)

    assert table.never_dispatched("add") == [fresh]
    assert table.queued_for("add") == 2 and table.queued_methods() == ["add"]


# ================================================================ WorkerTable


@pytest.mark.parametrize("info", [
    None, [], {"methods": ["a"]}, {"credit": 3}, {"methods": "add", "credit": 3},
    {"methods": [1], "credit": 3}, {"methods": ["a"], "credit": 0},
    {"methods": ["a"], "credit": True}, {"methods": ["a"], "credit": 1.5},
])
def test_a_ready_body_without_method_names_and_a_positive_credit_is_refused(info: Any) -> None:
    with pytest.raises(ProtocolError):
        ready_fields(info)


def test_a_ready_body_gives_its_methods_and_credit() -> None:
    assert ready_fields({"methods": ["a", "b"], "credit": 4}) == (frozenset({"a", "b"}), 4)


def test_pick_rotates_over_workers_with_credit_that_serve_the_method() -> None:
    table = workers((W1, ("add",), 5), (W2, ("add", "mul"), 5))

    picked = [table.pick("add", 0.0) for _ in range(3)]

    assert [w.identity for w in picked if w is not None] == [W1, W2, W1]
    assert table.pick("mul", 0.0) is table[W2]
    assert table.pick("div", 0.0) is None


def test_pick_skips_workers_without_credit_and_workers_whose_circuit_is_open() -> None:
    table = workers((W1, ("add",), 0), (W2, ("add",), 5), breaker_threshold=1)
    table[W2].breaker.on_failure(0.0)

    assert table[W2].breaker.state is CircuitState.OPEN
    assert table.pick("add", 0.5) is None


def test_the_serving_count_follows_registrations_updates_and_removals() -> None:
    table = workers((W1, ("add", "mul"), 1), (W2, ("add",), 1))
    table.update(table[W1], {"id": "w1"}, frozenset({"mul", "div"}), 1.0)
    table.remove(W2)

    assert [table.serving(m) for m in ("add", "mul", "div")] == [0, 1, 1]
    assert sorted(table.served_methods()) == ["div", "mul"]
    assert table.remove(W2) is None


def test_a_worker_process_keeps_its_circuit_breaker_across_reconnections() -> None:
    table = workers((W1, ("add",), 1))
    breaker = table[W1].breaker
    table.remove(W1)
    table.add(b"new-socket", {"id": "w1"}, frozenset({"add"}), 1, 1.0)

    assert table[b"new-socket"].breaker is breaker


def test_breakers_of_forgotten_worker_processes_are_bounded() -> None:
    table = workers()
    oldest = table.add(b"w", {"id": "w0"}, frozenset(), 1, 0.0).breaker
    table.remove(b"w")
    for n in range(1, MAX_BREAKERS + 1):
        table.add(b"w", {"id": f"w{n}"}, frozenset(), 1, 0.0)
        table.remove(b"w")
    newest = table.add(b"w", {"id": f"w{MAX_BREAKERS}"}, frozenset(), 1, 0.0).breaker
    table.remove(b"w")

    assert table.add(b"w", {"id": "w0"}, frozenset(), 1, 0.0).breaker is not oldest
    assert table.add(b"x", {"id": f"w{MAX_BREAKERS}"}, frozenset(), 1, 0.0).breaker is newest


def test_find_knows_a_worker_by_its_id_or_its_identity_in_hex() -> None:
    table = workers((W1, ("add",), 1))

    assert table.find("w1") is table[W1]
    assert table.find(W1.hex()) is table[W1]
    assert table.find("nobody") is None


def test_silent_workers_and_heartbeats_due_follow_the_liveness_settings() -> None:
    table = workers((W1, ("add",), 1), (W2, ("add",), 1),
                    heartbeat_interval_s=1.0, heartbeat_liveness=3)
    table[W2].heartbeat.heard(2.5)

    assert table.silent(3.0) == [table[W1]]
    assert table.heartbeat_due(1.0) == [table[W1], table[W2]]
    assert table.heartbeat_due(1.5) == []


# ================================================================ Dispatcher


def dispatcher(
    table: WorkerTable, max_queue: int = 100, max_attempts: int = 3
) -> tuple[Dispatcher, RequestTable, Outbox]:
    requests, outbox = RequestTable(), Outbox()
    return Dispatcher(requests, table, outbox, max_queue, max_attempts), requests, outbox


def test_a_routed_request_goes_to_a_worker_with_its_deadline_and_limits() -> None:
    table = workers((W1, ("add",), 2))
    dispatch, requests, outbox = dispatcher(table)
    options = CallOptions(cpu_limit_ms=250.2, max_memory_mb=64)
    r = Request(requests.new_key(), Call("add", [1], b"1", options, b"{}"), 3.0, 0, 0.0)
    requests.add(r)

    assert dispatch.route(r, 1.0) is None
    [(side, frames)] = outbox.take()
    meta = p.decode_request_meta(frames[3])
    assert (side, frames[:3], frames[4:]) == (BACKEND, [W1, p.TAG, p.REQUEST], [b"add", b"{}"])
    assert (meta.key, meta.timeout_ms, meta.cpu_limit_ms, meta.memory_mb) == (r.key, 2000, 251, 64)
    assert (table[W1].credit, table[W1].in_flight, r.worker, r.attempts) == (1, {r.key}, W1, 1)


def test_a_method_no_registered_worker_serves_is_refused_as_not_found() -> None:
    dispatch, requests, _ = dispatcher(workers((W1, ("add",), 2)))

    assert dispatch.route(request(requests, "mul"), 0.0) == Refusal(
        ErrorCode.METHOD_NOT_FOUND, "Method not found: mul"
    )


def test_with_no_worker_at_all_a_request_waits_for_one() -> None:
    dispatch, requests, _ = dispatcher(workers())
    r = request(requests, "anything")
    requests.add(r)

    assert dispatch.route(r, 0.0) is None and r.queued


def test_a_full_queue_refuses_new_requests_but_never_a_requeued_one() -> None:
    dispatch, requests, _ = dispatcher(workers((W1, ("add",), 0)), max_queue=1)
    waiting, new, again = (request(requests) for _ in range(3))
    for r in (waiting, new, again):
        requests.add(r)
    dispatch.route(waiting, 0.0)

    assert dispatch.route(new, 0.0) == Refusal(
        ErrorCode.OVERLOADED, "Overloaded: 1 requests already wait for a worker",
        {"retry_after_ms": 100},
    )
    assert dispatch.route(again, 0.0, requeue=True) is None and requests.queued == 2


def test_serve_hands_a_worker_the_oldest_requests_up_to_its_credit() -> None:
    table = workers((W1, ("add", "mul"), 0))
    dispatch, requests, outbox = dispatcher(table)
    rs = [request(requests, m, received_at=t) for m, t in (("add", 2.0), ("mul", 1.0),
                                                            ("add", 3.0))]
    for r in rs:
        requests.add(r)
        dispatch.route(r, 0.0)
    table[W1].add_credit(2)
    dispatch.serve(table[W1], 5.0)

    keys = [p.decode_request_meta(m).key for m in outbox.take()[0][1][3::3]]
    assert keys == [rs[1].key, rs[0].key] and requests.queued == 1


def test_serve_all_gives_waiting_requests_to_every_worker_with_credit() -> None:
    table = workers((W1, ("add",), 0), (W2, ("add",), 0))
    dispatch, requests, _ = dispatcher(table)
    for _ in range(2):
        r = request(requests)
        requests.add(r)
        dispatch.route(r, 0.0)
    table[W1].add_credit(1)
    table[W2].add_credit(1)
    dispatch.serve_all(1.0)

    assert (len(table[W1].in_flight), len(table[W2].in_flight), requests.queued) == (1, 1, 0)


def test_a_request_whose_worker_died_runs_again_first_in_line() -> None:
    dispatch, requests, _ = dispatcher(workers((W1, ("add",), 0)), max_attempts=3)
    waiting, orphan = request(requests, received_at=0.0), request(requests, received_at=5.0)
    for r in (waiting, orphan):
        requests.add(r)
    dispatch.route(waiting, 0.0)
    orphan.worker, orphan.attempts = b"dead", 1

    assert dispatch.redispatch(orphan, 6.0) is None and orphan.worker is None
    assert requests.take_oldest(["add"]) is orphan


def test_a_request_is_not_dispatched_again_once_its_attempts_are_spent() -> None:
    dispatch, requests, _ = dispatcher(workers((W1, ("add",), 5)), max_attempts=2)
    orphan = request(requests)
    orphan.attempts = 2

    assert dispatch.redispatch(orphan, 0.0) == Refusal(
        ErrorCode.WORKER_LOST,
        "Worker lost: the request was dispatched 2 times and each worker running it died",
        {"attempts": 2},
    )


def test_an_adopted_request_is_never_dispatched_again() -> None:
    dispatch, requests, _ = dispatcher(workers((W1, ("add",), 5)))
    placeholder = request(requests)
    placeholder.adopted = True

    refusal = dispatch.redispatch(placeholder, 0.0)
    assert refusal is not None and refusal.code == ErrorCode.WORKER_LOST


def test_queued_requests_no_worker_serves_any_more_are_unservable_unless_once_dispatched(
) -> None:
    table = workers((W1, ("add", "mul"), 0))
    dispatch, requests, _ = dispatcher(table)
    fresh, retried, other = request(requests), request(requests), request(requests, "mul")
    retried.attempts = 1
    for r in (fresh, retried, other):
        requests.add(r)
        dispatch.route(r, 0.0)
    table.update(table[W1], {}, frozenset({"mul"}), 1.0)

    assert dispatch.unservable() == [
        (fresh, Refusal(ErrorCode.METHOD_NOT_FOUND, "Method not found: add"))
    ]


def test_a_draining_worker_gains_no_credit() -> None:
    worker = workers((W1, ("add",), 1))[W1]
    worker.draining = True
    worker.add_credit(5)

    assert worker.credit == 1


# ================================================================ Adoption


def adoption() -> tuple[Adoption, RequestTable, IdempotencyTable, Outbox, Counter[str],
                        WorkerRecord]:
    requests, idempotency, outbox, counters = (
        RequestTable(), IdempotencyTable(300.0, 100), Outbox(), Counter[str]()
    )
    worker = workers((W1, ("add",), 1))[W1]
    return Adoption(requests, idempotency, outbox, counters), requests, idempotency, outbox, \
        counters, worker


def entry(key: int, key_name: str = "", fragment: bytes = b"", timeout_ms: int = 5000
          ) -> list[bytes]:
    return [p.encode_adopt_meta(p.encode_key(key), timeout_ms, 2), b"add", key_name.encode(),
            fragment]


def test_a_finished_keyed_result_is_stored_as_the_outcome_of_its_key() -> None:
    adopt, _, idempotency, _, counters, worker = adoption()
    adopt.adopt(worker, entry(7, "job-1", b'"result":42'), 1.0)

    assert idempotency.lookup("a\x00add\x00job-1", 2.0) == (None, b'"result":42')
    assert counters["adopted_results"] == 1


def test_a_running_request_becomes_a_placeholder_awaiting_its_reply() -> None:
    adopt, requests, idempotency, _, counters, worker = adoption()
    adopt.adopt(worker, entry(7, "job-1"), 1.0)
    key = p.encode_key(7)

    placeholder = requests[key]
    assert (placeholder.adopted, placeholder.worker, placeholder.depth) == (True, W1, 2)
    assert placeholder.deadline == pytest.approx(6.0)
    assert worker.in_flight == {key} and counters["adopted"] == 1
    assert idempotency.lookup("a\x00add\x00job-1", 1.0) == key
    assert requests.next_deadline() == pytest.approx(6.0)


def test_a_request_whose_key_already_runs_elsewhere_is_cancelled_on_the_worker() -> None:
    adopt, requests, idempotency, outbox, _, worker = adoption()
    running = request(requests, key="job-1")   # this run's own, dispatched already
    running.scope = "cclient\x00add\x00job-1"
    requests.add(running)
    idempotency.start(running.scope, running.key)
    adopt.adopt(worker, entry(7, "job-1"), 1.0)

    assert p.encode_key(7) not in requests
    assert outbox.take() == [(BACKEND, [W1, p.TAG, p.CANCEL, p.encode_key(7)])]


def test_a_queued_twin_joins_the_adopted_request_instead_of_running() -> None:
    adopt, requests, idempotency, _, _, worker = adoption()
    twin = request(requests, key="job-1")   # a client's, sent before the hand-over
    twin.scope = "cclient\x00add\x00job-1"
    requests.add(twin)
    requests.enqueue(twin)
    idempotency.start(twin.scope, twin.key)
    adopt.adopt(worker, entry(7, "job-1"), 1.0)

    assert twin.key in requests.joined and requests.queued == 0
    assert idempotency.lookup(twin.scope, 1.0) == p.encode_key(7)
    assert requests[p.encode_key(7)].scope == twin.scope   # its reply answers the twin


# ================================================================ figures and run


def test_the_clients_seen_are_bounded() -> None:
    clients = ClientTable(max_requests=10)
    for n in range(CLIENT_MEMORY + 10):
        clients.seen(b"%d" % n, 0.0)

    assert len(clients) == CLIENT_MEMORY


def test_a_refused_peer_is_reported_once_but_every_refusal_is_counted() -> None:
    figures = BrokerFigures()

    assert [figures.refused(W1), figures.refused(W1), figures.refused(W2)] == [True, False, True]
    assert figures.dropped["bad worker frames"] == 3


def test_latency_is_recorded_only_when_metrics_are_collected() -> None:
    on, off = BrokerFigures(), BrokerFigures(collect_metrics=False)
    for figures in (on, off):
        figures.record("add", 0.01, None)

    assert (on.latency().total, off.latency().total) == (1, 0)


def test_the_rate_is_fed_from_the_request_counter_at_each_tick() -> None:
    figures = BrokerFigures()
    figures.counters["requests"] += 50
    figures.tick(10.2)
    figures.counters["requests"] += 25
    figures.tick(11.5)

    assert figures.rate.history(13.0, 3) == [50, 25, 0]


def test_the_adoption_grace_counts_down_to_zero() -> None:
    run = BrokerRun(started_at=0.0, adoption_until=3.0)

    assert (run.grace_s(1.0), run.grace_s(5.0)) == (2.0, 0.0)
    assert len(run.instance) == 16 and run.instance != BrokerRun(0.0, 0.0).instance


def test_a_request_frame_body_is_what_the_worker_receives() -> None:
    body = orjson.dumps({"jsonrpc": "2.0", "method": "add", "id": 1})

    assert Call("add", None, b"1", CallOptions(), body).encoded_body() is body
