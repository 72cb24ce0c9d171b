"""BrokerState as a pure state machine: frames and a float ``now`` in, frames out.

No sockets, no processes, no clocks: time is whatever float the test passes.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from broker_support import (
    LOST,
    RESULT,
    W1,
    W2,
    W3,
    call,
    check_invariants,
    error_code,
    hold,
    nested_call,
    new_state,
    ready,
    reply,
    sent,
)

from madrpc import protocol as p
from madrpc.broker_state import BACKEND, FRONTEND, BrokerState
from madrpc.errors import ErrorCode

# ---------------------------------------------------------------- registration and dispatch


def test_a_ready_worker_is_acknowledged_with_a_heartbeat() -> None:
    state = new_state()
    ready(state, W1)
    ((side, frames),) = state.take_sends()
    assert side == BACKEND and frames[:3] == [W1, p.TAG, p.HEARTBEAT]
    assert orjson.loads(frames[3]) == {"broker": state.run.instance, "grace_s": 0.0}


def test_a_client_request_is_dispatched_as_one_request_with_meta_method_and_body() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    frame = call(state, "add", now=2.0, timeout_ms=5000)
    out = sent(state)
    assert len(out.to(W1, p.REQUEST)) == 1
    [(meta, method, body)] = out.requests(W1)
    assert (meta.timeout_ms, meta.cpu_limit_ms, meta.depth) == (5000, 0, 0)
    assert len(meta.key) == p.KEY_SIZE
    assert method == b"add"
    assert body == frame
    assert out.replies == []


def test_a_worker_reply_reaches_the_client_route_with_the_client_id() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, rid="abc", client=b"client-7")
    [key] = sent(state).keys(W1)
    reply(state, W1, (key, RESULT))
    out = sent(state)
    assert out.replies == [(b"client-7", {"jsonrpc": "2.0", "id": "abc", "result": 3})]


def test_requests_to_two_workers_alternate_round_robin() -> None:
    state = new_state()
    ready(state, W1, credit=100)
    ready(state, W2, credit=100)
    state.take_sends()
    order = []
    for i in range(100):
        call(state, rid=i)
        out = sent(state)
        [target] = [frames[0] for frames in out.backend]
        order.append(target)
    assert order.count(W1) == 50 and order.count(W2) == 50
    assert all(a != b for a, b in zip(order, order[1:], strict=False))


def test_a_worker_never_receives_more_requests_than_its_credit() -> None:
    state = new_state()
    ready(state, W1, credit=2)
    state.take_sends()
    for i in range(5):
        call(state, rid=i)
    assert len(sent(state).requests(W1)) == 2
    assert state.requests.queued == 3
    assert state.workers[W1].credit == 0


def test_credit_returned_with_a_reply_releases_queued_requests() -> None:
    state = new_state()
    ready(state, W1, credit=2)
    state.take_sends()
    for i in range(5):
        call(state, rid=i)
    first, _ = sent(state).keys(W1)
    reply(state, W1, (first, RESULT), credit=1)
    out = sent(state)
    assert len(out.requests(W1)) == 1
    assert state.requests.queued == 2


def test_a_credit_message_releases_queued_requests() -> None:
    state = new_state()
    ready(state, W1, credit=2)
    state.take_sends()
    for i in range(5):
        call(state, rid=i)
    state.take_sends()
    state.on_worker_message(W1, p.message(p.CREDIT, p.encode_credit(2)), 0.1)
    assert len(sent(state).requests(W1)) == 2
    assert state.requests.queued == 1


def test_a_request_with_no_worker_waits_in_the_queue() -> None:
    state = new_state()
    call(state, timeout_ms=1000)
    state.on_tick(0.999)
    assert state.requests.queued == 1
    assert sent(state).replies == []


def test_a_queued_request_is_dispatched_when_a_worker_joins() -> None:
    state = new_state()
    call(state, timeout_ms=1000)
    ready(state, W1, now=0.5)
    assert len(sent(state).requests(W1)) == 1
    assert state.requests.queued == 0


def test_a_request_with_no_worker_gets_no_worker_at_its_deadline() -> None:
    state = new_state()
    call(state, rid=9, timeout_ms=1000)
    state.on_tick(1.0)
    [(client, response)] = sent(state).replies
    assert response["id"] == 9
    assert error_code(response) == ErrorCode.NO_WORKER  # -32001
    assert state.requests.queued == 0 and not state.requests


def test_a_method_no_registered_worker_offers_gets_method_not_found_at_once() -> None:
    state = new_state()
    ready(state, W1, methods=("add",))
    state.take_sends()
    call(state, "nope", rid=4)
    out = sent(state)
    [(_, response)] = out.replies
    assert response["id"] == 4
    assert error_code(response) == ErrorCode.METHOD_NOT_FOUND  # -32601
    assert out.backend == [] and state.requests.queued == 0


def test_queued_requests_for_a_method_the_first_worker_lacks_fail_when_it_joins() -> None:
    state = new_state()
    call(state, "nope", rid=4)
    assert state.requests.queued == 1
    ready(state, W1, methods=("add",))
    [(_, response)] = sent(state).replies
    assert error_code(response) == ErrorCode.METHOD_NOT_FOUND
    assert state.requests.queued == 0


def test_the_queue_bound_answers_overloaded_at_once() -> None:
    state = new_state(max_queue=2)
    for i in range(3):
        call(state, rid=i)
    [(_, response)] = sent(state).replies
    assert response["id"] == 2
    assert error_code(response) == ErrorCode.OVERLOADED  # -32002
    assert state.requests.queued == 2


def test_an_in_flight_request_past_its_deadline_gets_timeout() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, rid=5, timeout_ms=2000, now=1.0)
    state.take_sends()
    state.on_worker_message(W1, p.message(p.HEARTBEAT), 2.5)
    state.on_tick(2.999)
    assert sent(state).replies == []
    state.on_tick(3.0)
    [(_, response)] = sent(state).replies
    assert response["id"] == 5
    assert error_code(response) == ErrorCode.TIMEOUT  # -32003
    assert response["error"]["data"] == {"timeout_ms": 2000}


def test_an_in_flight_request_past_its_deadline_is_cancelled_on_its_worker() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    [key] = hold(state, W1, timeout_ms=1000)
    state.on_tick(1.0)
    assert sent(state).cancels(W1) == [key]
    assert state.workers[W1].in_flight == set()


# ---------------------------------------------------------------- liveness and re-dispatch


def test_a_worker_silent_for_interval_times_liveness_is_removed() -> None:
    state = new_state(heartbeat_interval_s=0.5, heartbeat_liveness=4)
    ready(state, W1, now=10.0)
    state.on_tick(11.999)
    assert W1 in state.workers
    state.on_tick(12.0)
    assert W1 not in state.workers


def test_a_worker_that_keeps_talking_is_not_removed() -> None:
    state = new_state(heartbeat_interval_s=1.0, heartbeat_liveness=3)
    ready(state, W1)
    for now in (2.0, 4.0, 6.0):
        state.on_worker_message(W1, p.message(p.HEARTBEAT), now)
        state.on_tick(now + 0.5)
    assert W1 in state.workers


def test_the_requests_of_a_removed_worker_are_redispatched_to_another_worker() -> None:
    state = new_state(heartbeat_interval_s=1.0, heartbeat_liveness=3)
    ready(state, W1, methods=("add",))
    state.take_sends()
    keys = hold(state, W1, count=2)
    ready(state, W2, methods=("add",), now=1.0)
    state.take_sends()
    state.on_worker_message(W2, p.message(p.HEARTBEAT), 2.5)
    state.on_tick(3.0)
    out = sent(state)
    assert W1 not in state.workers
    assert sorted(out.keys(W2)) == sorted(keys)
    assert out.replies == []
    assert state.figures.counters["requeued"] == 2


def test_the_requests_of_a_removed_worker_go_ahead_of_those_already_queued() -> None:
    state = new_state()
    ready(state, W1, credit=1)
    state.take_sends()
    [held] = hold(state, W1)
    call(state, rid=2, client=b"later", now=0.1)
    state.on_worker_message(W1, p.message(p.DISCONNECT), 0.2)
    ready(state, W2, credit=1, now=0.3)
    assert sent(state).keys(W2) == [held]


def test_a_request_whose_workers_died_max_attempts_times_fails_with_worker_lost() -> None:
    state = new_state(max_attempts=3)
    call(state, rid=8)
    for identity in (W1, W2, W3):
        ready(state, identity, now=1.0)
        assert len(sent(state).requests(identity)) == 1
        state.on_worker_message(identity, p.message(p.DISCONNECT), 1.0)
    [(_, response)] = sent(state).replies
    assert response["id"] == 8
    assert error_code(response) == ErrorCode.WORKER_LOST  # -32005
    assert response["error"]["data"] == {"attempts": 3}
    assert "3 times" in response["error"]["message"]
    assert not state.requests


def test_a_request_whose_worker_died_fewer_than_max_attempts_times_is_requeued() -> None:
    state = new_state(max_attempts=3)
    call(state, rid=8)
    for identity in (W1, W2):
        ready(state, identity, now=1.0)
        state.take_sends()
        state.on_worker_message(identity, p.message(p.DISCONNECT), 1.0)
    assert sent(state).replies == []
    assert state.requests.queued == 1


def test_a_late_reply_from_a_removed_worker_is_dropped() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    [key] = hold(state, W1)
    state.on_worker_message(W1, p.message(p.DISCONNECT), 0.5)
    ready(state, W2, now=0.5)
    assert sent(state).keys(W2) == [key]
    reply(state, W1, (key, b'"result":"late"'), now=0.6)
    assert sent(state).replies == []
    reply(state, W2, (key, RESULT), now=0.7)
    replies = sent(state).replies
    assert [r["result"] for _, r in replies] == [3]
    assert state.figures.counters["late_replies"] == 1


def test_a_removed_worker_that_replies_is_told_to_disconnect() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    [key] = hold(state, W1)
    state.on_tick(10.0)
    state.take_sends()
    reply(state, W1, (key, RESULT), now=10.1)
    out = sent(state)
    [[body]] = out.to(W1, p.DISCONNECT)
    assert orjson.loads(body) == {"reason": "unknown worker", "broker": state.run.instance}
    assert W1 not in state.workers


def test_a_reply_for_a_key_the_worker_does_not_hold_is_ignored() -> None:
    state = new_state()
    ready(state, W1, credit=1)
    ready(state, W2, credit=1)
    state.take_sends()
    call(state, rid=1, client=b"c1")
    out = sent(state)
    [key] = out.keys(W1) + out.keys(W2)
    holder, other = (W1, W2) if out.keys(W1) else (W2, W1)
    reply(state, other, (key, b'"result":"forged"'), (p.encode_key(12345), RESULT))
    assert sent(state).replies == []
    assert state.workers[holder].in_flight == {key}
    assert state.figures.counters["late_replies"] == 2
    reply(state, holder, (key, RESULT))
    assert [r["result"] for _, r in sent(state).replies] == [3]


# ---------------------------------------------------------------- batches and notifications


def test_a_batch_gets_its_replies_assembled_in_one_array_in_request_order() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    batch = [
        {"jsonrpc": "2.0", "method": "add", "id": 1},
        {"jsonrpc": "1.0", "method": "add", "id": 2},
        {"jsonrpc": "2.0", "method": "add"},
        {"jsonrpc": "2.0", "method": "add", "id": 3},
    ]
    state.on_client_frame([b"c", b"", orjson.dumps(batch)], 0.0)
    requests = sent(state).requests(W1)
    assert len(requests) == 3
    first, notification, last = (meta.key for meta, _, _ in requests)  # member order
    reply(state, W1, (last, b'"result":30'), (notification, b'"result":0'), credit=2)
    assert sent(state).replies == []
    reply(state, W1, (first, b'"result":10'))
    [(client, response)] = sent(state).replies
    assert client == b"c"
    assert [part.get("id") for part in response] == [1, 2, 3]
    assert response[0]["result"] == 10 and response[2]["result"] == 30
    assert error_code(response[1]) == ErrorCode.INVALID_REQUEST


def test_a_batch_of_only_notifications_gets_no_reply() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    batch = [{"jsonrpc": "2.0", "method": "add"}, {"jsonrpc": "2.0", "method": "add"}]
    state.on_client_frame([b"c", b"", orjson.dumps(batch)], 0.0)
    keys = sent(state).keys(W1)
    assert len(keys) == 2
    reply(state, W1, *[(k, RESULT) for k in keys], credit=2)
    assert sent(state).replies == []
    assert not state.requests


def test_a_batch_of_only_invalid_members_is_answered_at_once() -> None:
    state = new_state()
    state.on_client_frame([b"c", b"", b'[1, {"id": 2}]'], 0.0)
    [(_, response)] = sent(state).replies
    assert [error_code(part) for part in response] == [ErrorCode.INVALID_REQUEST] * 2


def test_a_batch_answered_entirely_by_the_broker_gets_exactly_one_reply() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    batch = [
        {"jsonrpc": "2.0", "method": "nope", "id": 1},
        {"jsonrpc": "2.0", "method": "_info", "id": 2},
    ]
    state.on_client_frame([b"c", b"", orjson.dumps(batch)], 0.0)
    replies = sent(state).replies
    assert len(replies) == 1
    assert [part["id"] for part in replies[0][1]] == [1, 2]


def test_a_notification_gets_no_reply() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, rid=None)
    [key] = sent(state).keys(W1)
    reply(state, W1, (key, RESULT))
    assert sent(state).replies == []
    assert not state.requests


def test_a_notification_for_an_unknown_method_gets_no_reply() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, "nope", rid=None)
    assert sent(state).replies == []


# ---------------------------------------------------------------- nested calls


def test_a_nested_call_is_dispatched_one_level_deeper_than_its_parent() -> None:
    state = new_state()
    ready(state, W1, methods=("outer", "inner"))
    state.take_sends()
    [parent] = hold(state, W1, method="outer")
    nested_call(state, W1, 7, parent)
    [(meta, method, _)] = sent(state).requests(W1)
    assert method == b"inner"
    assert meta.depth == 1


def test_a_nested_call_deeper_than_max_call_depth_gets_depth_exceeded() -> None:
    state = new_state(max_call_depth=1)
    ready(state, W1, methods=("outer", "inner"))
    state.take_sends()
    [parent] = hold(state, W1, method="outer")
    nested_call(state, W1, 1, parent)
    [child] = sent(state).keys(W1)
    nested_call(state, W1, 2, child)
    out = sent(state)
    assert out.requests(W1) == []
    [(call_key, fragment)] = out.results(W1)
    assert call_key == p.encode_key(2)
    assert orjson.loads(b"{" + fragment + b"}")["error"]["code"] == ErrorCode.DEPTH_EXCEEDED


def test_a_nested_call_whose_parent_is_gone_gets_a_timeout_result() -> None:
    state = new_state()
    ready(state, W1, methods=("outer", "inner"))
    state.take_sends()
    nested_call(state, W1, 3, p.encode_key(424242))
    out = sent(state)
    assert out.requests(W1) == []
    [(call_key, fragment)] = out.results(W1)
    assert call_key == p.encode_key(3)
    assert orjson.loads(b"{" + fragment + b"}")["error"]["code"] == ErrorCode.TIMEOUT


def test_a_nested_call_inherits_its_parents_deadline() -> None:
    state = new_state()
    ready(state, W1, methods=("outer",))
    ready(state, W2, methods=("inner",))
    state.take_sends()
    call(state, "outer", timeout_ms=1000, now=0.0)
    [parent] = sent(state).keys(W1)
    nested_call(state, W1, 1, parent, now=0.25, timeout_ms=30_000)
    [(meta, _, _)] = sent(state).requests(W2)
    assert meta.timeout_ms == 750
    for identity in (W1, W2):
        state.on_worker_message(identity, p.message(p.HEARTBEAT), 0.9)
    state.on_tick(1.0)
    out = sent(state)
    assert out.cancels(W2) == [meta.key]
    [(_, fragment)] = out.results(W1)
    assert orjson.loads(b"{" + fragment + b"}")["error"]["code"] == ErrorCode.TIMEOUT


def test_a_nested_call_result_goes_back_to_the_calling_worker_with_its_call_key() -> None:
    state = new_state()
    ready(state, W1, methods=("outer",))
    ready(state, W2, methods=("inner",))
    state.take_sends()
    [parent] = hold(state, W1, method="outer")
    nested_call(state, W1, 77, parent)
    [child] = sent(state).keys(W2)
    reply(state, W2, (child, b'"result":42'))
    out = sent(state)
    assert out.to(W1, p.RESULT) == [[p.encode_key(77), b'"result":42']]
    assert out.replies == []
    assert state.workers[W1].calls == set()


def test_the_nested_calls_of_a_dead_worker_are_cancelled() -> None:
    state = new_state()
    ready(state, W1, methods=("outer",))
    ready(state, W2, methods=("inner",))
    state.take_sends()
    [parent] = hold(state, W1, method="outer")
    nested_call(state, W1, 5, parent)
    [child] = sent(state).keys(W2)
    state.on_worker_message(W1, p.message(p.DISCONNECT), 0.5)
    out = sent(state)
    assert out.cancels(W2) == [child]
    assert state.workers[W2].in_flight == set()
    assert child not in state.requests
    assert state.requests[parent].queued


def test_the_nested_calls_of_a_dead_workers_nested_calls_are_cancelled_too() -> None:
    state = new_state()
    ready(state, W1, methods=("outer",))
    ready(state, W2, methods=("middle",))
    ready(state, W3, methods=("inner",))
    state.take_sends()
    [parent] = hold(state, W1, method="outer")
    nested_call(state, W1, 5, parent, method="middle")
    [child] = sent(state).keys(W2)
    nested_call(state, W2, 6, child, method="inner")
    [grandchild] = sent(state).keys(W3)
    state.on_worker_message(W1, p.message(p.DISCONNECT), 0.5)
    out = sent(state)
    assert out.cancels(W2) == [child] and out.cancels(W3) == [grandchild]
    assert grandchild not in state.requests


# ---------------------------------------------------------------- idempotency


def test_a_request_with_the_key_of_a_running_one_joins_it() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, rid=1, client=b"a", idempotency_key="k")
    call(state, rid=2, client=b"b", idempotency_key="k")
    [key] = sent(state).keys(W1)
    reply(state, W1, (key, RESULT))
    replies = sorted(sent(state).replies)
    assert replies == [
        (b"a", {"jsonrpc": "2.0", "id": 1, "result": 3}),
        (b"b", {"jsonrpc": "2.0", "id": 2, "result": 3}),
    ]
    assert state.requests.joined == {}


def test_a_finished_keyed_request_is_replayed_without_running_again() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, rid=1, client=b"a", idempotency_key="k")
    [key] = sent(state).keys(W1)
    reply(state, W1, (key, RESULT))
    state.take_sends()
    call(state, rid=2, client=b"b", idempotency_key="k", now=5.0)
    out = sent(state)
    assert out.requests(W1) == []
    assert out.replies == [(b"b", {"jsonrpc": "2.0", "id": 2, "result": 3})]
    assert state.figures.counters["idempotent_hits"] == 1


def test_a_transient_failure_is_not_stored_for_its_idempotency_key() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, rid=1, client=b"a", idempotency_key="k", timeout_ms=1000)
    state.take_sends()
    state.on_tick(1.0)
    [(_, response)] = sent(state).replies
    assert error_code(response) == ErrorCode.TIMEOUT
    call(state, rid=2, client=b"b", idempotency_key="k", now=1.5)
    out = sent(state)
    assert len(out.requests(W1)) == 1
    assert out.replies == []


# ---------------------------------------------------------------- worker lifecycle


def test_a_draining_worker_receives_no_more_requests_even_when_it_returns_credit() -> None:
    state = new_state()
    ready(state, W1, credit=5)
    state.take_sends()
    [key] = hold(state, W1)
    state.on_worker_message(W1, p.message(p.DRAIN), 0.1)
    for i in range(3):
        call(state, rid=10 + i, now=0.2)
    assert sent(state).backend == []
    reply(state, W1, (key, RESULT), credit=1, now=0.3)
    out = sent(state)
    assert out.requests(W1) == []
    assert len(out.replies) == 1
    assert state.requests.queued == 3


def test_a_ready_update_keeps_held_requests_where_they_are() -> None:
    state = new_state()
    ready(state, W1, methods=("add",), credit=5)
    state.take_sends()
    [key] = hold(state, W1)
    ready(state, W1, methods=("add", "mul"), credit=5, now=1.0, update=True)
    out = sent(state)
    assert out.backend == []
    assert state.workers[W1].in_flight == {key}
    assert state.workers[W1].credit == 4
    reply(state, W1, (key, RESULT), now=1.1)
    assert len(sent(state).replies) == 1


def test_a_ready_update_changes_the_methods_a_worker_serves() -> None:
    state = new_state()
    ready(state, W1, methods=("add",), credit=5)
    state.take_sends()
    ready(state, W1, methods=("mul",), credit=5, now=1.0, update=True)
    state.take_sends()
    call(state, "mul", rid=1, now=1.1)
    assert len(sent(state).requests(W1)) == 1
    call(state, "add", rid=2, now=1.2)
    [(_, response)] = sent(state).replies
    assert error_code(response) == ErrorCode.METHOD_NOT_FOUND


def test_a_ready_without_update_from_a_known_worker_redispatches_what_it_held() -> None:
    state = new_state()
    ready(state, W1, credit=5)
    state.take_sends()
    [key] = hold(state, W1)
    ready(state, W1, credit=5, now=1.0)
    out = sent(state)
    assert out.keys(W1) == [key]
    assert state.requests[key].attempts == 2


def test_a_worker_whose_circuit_opened_after_repeated_failures_is_skipped() -> None:
    state = new_state()
    ready(state, W1, credit=10)
    state.take_sends()
    keys = hold(state, W1, count=5)
    reply(state, W1, *[(k, LOST) for k in keys], credit=5, now=0.1)
    ready(state, W2, credit=10, now=0.2)
    state.take_sends()
    for i in range(4):
        call(state, rid=100 + i, now=0.3)
    out = sent(state)
    assert out.requests(W1) == []
    assert len(out.requests(W2)) == 4


def test_a_worker_is_not_skipped_before_its_circuit_opens() -> None:
    state = new_state()
    ready(state, W1, credit=10)
    state.take_sends()
    keys = hold(state, W1, count=4)
    reply(state, W1, *[(k, LOST) for k in keys], credit=4, now=0.1)
    ready(state, W2, credit=10, now=0.2)
    state.take_sends()
    for i in range(4):
        call(state, rid=100 + i, now=0.3)
    assert len(sent(state).requests(W1)) == 2


def _open_circuit_with_queued_requests(state: BrokerState) -> None:
    """W1 alone; five lost-worker replies open its circuit at t=0.1 for 1 s; three
    requests then wait in the queue although W1 has credit."""
    ready(state, W1, credit=10)
    state.take_sends()
    keys = hold(state, W1, count=5)
    reply(state, W1, *[(k, LOST) for k in keys], credit=5, now=0.1)
    state.take_sends()
    for i in range(3):
        call(state, rid=100 + i, client=b"q%d" % i, now=0.5)
    assert sent(state).backend == []
    assert state.requests.queued == 3


def test_a_half_open_circuit_lets_one_new_request_through_as_a_trial() -> None:
    state = new_state()
    ready(state, W1, credit=10)
    state.take_sends()
    keys = hold(state, W1, count=5)
    reply(state, W1, *[(k, LOST) for k in keys], credit=5, now=0.1)
    state.take_sends()
    call(state, rid=100, now=1.2)
    call(state, rid=101, now=1.2)
    assert len(sent(state).requests(W1)) == 1
    assert state.requests.queued == 1


def test_a_half_open_circuit_takes_only_one_trial_from_the_queue() -> None:
    state = new_state()
    _open_circuit_with_queued_requests(state)
    state.on_worker_message(W1, p.message(p.CREDIT, p.encode_credit(1)), 1.5)
    assert len(sent(state).requests(W1)) == 1


def test_queued_requests_get_a_trial_once_the_circuit_may_close_again() -> None:
    state = new_state()
    _open_circuit_with_queued_requests(state)
    state.on_worker_message(W1, p.message(p.HEARTBEAT), 1.5)
    state.on_tick(1.5)
    assert len(sent(state).requests(W1)) == 1


# ---------------------------------------------------------------- built-in methods


def test_metrics_is_answered_by_the_broker_with_its_documented_keys() -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    call(state, "_metrics", rid=1, now=3.0, params=None)
    out = sent(state)
    assert out.backend == []
    [(_, response)] = out.replies
    result = response["result"]
    assert set(result) == {"broker", "workers", "methods", "rate_history", "script_version",
                           "time"}
    assert result["broker"]["workers"] == 1
    assert [w["identity"] for w in result["workers"]] == [W1.hex()]


def test_metrics_show_the_figures_a_worker_sent_with_its_last_heartbeat() -> None:
    state = new_state()
    ready(state, W1)
    stats = {"busy": 2, "engine_restarts": 4, "req_per_s": 12.5}
    state.on_worker_message(W1, p.json_message(p.HEARTBEAT, stats), 1.0)
    state.take_sends()
    call(state, "_metrics", rid=1, now=1.5, params=None)
    [(_, response)] = sent(state).replies
    [worker] = response["result"]["workers"]
    assert (worker["busy"], worker["engine_restarts"], worker["req_per_s"]) == (2, 4, 12.5)
    assert worker["heartbeat_age_s"] == 0.5


def test_info_is_answered_by_the_broker_with_its_documented_keys() -> None:
    state = new_state()
    ready(state, W1, methods=("add", "mul"))
    state.take_sends()
    call(state, "_info", rid=1, params=None)
    out = sent(state)
    assert out.backend == []
    [(_, response)] = out.replies
    result = response["result"]
    assert set(result) == {
        "versions", "host", "endpoints", "cpu", "heartbeat", "limits", "methods", "workers",
        "curve", "script",
    }
    assert result["methods"] == {"add": [W1.hex()], "mul": [W1.hex()]}


def test_metrics_for_an_unknown_worker_gets_invalid_params() -> None:
    state = new_state()
    call(state, "_metrics", rid=1, params={"worker": "nobody"})
    [(_, response)] = sent(state).replies
    assert error_code(response) == ErrorCode.INVALID_PARAMS


# ---------------------------------------------------------------- garbage in

GARBAGE = {
    "wrong tag": [b"ZMTP-XYZ", p.HEARTBEAT],
    "other version": [b"MADRPC-W2", p.HEARTBEAT],
    "tag only": [p.TAG],
    "no frames": [],
    "unknown command": [p.TAG, b"BOGUS"],
    "reply with short credit": [p.TAG, p.REPLY, b"\x00\x01"],
    "reply with short key": [p.TAG, p.REPLY, p.encode_credit(1), b"key", b'"result":1'],
    "reply with key but no fragment": [p.TAG, p.REPLY, p.encode_credit(1), p.encode_key(1)],
    "credit without frame": [p.TAG, p.CREDIT],
    "call with odd frames": [p.TAG, p.CALL, bytes(16)],
    "call with short meta": [p.TAG, p.CALL, bytes(8), b"{}"],
    "drain with a body": [p.TAG, p.DRAIN, b"x"],
    "heartbeat with two frames": [p.TAG, p.HEARTBEAT, b"{}", b"{}"],
    "heartbeat not json": [p.TAG, p.HEARTBEAT, b"{nope"],
    "request from a worker": [
        p.TAG, p.REQUEST, p.encode_request_meta(p.encode_key(1), 1, 0, 0), b"add", b"{}",
    ],
    "result from a worker": [p.TAG, p.RESULT, p.encode_key(1), b'"result":1'],
    "cancel from a worker": [p.TAG, p.CANCEL, p.encode_key(1)],
    "ready without methods": p.json_message(p.READY, {"credit": 3}),
    "ready with zero credit": p.json_message(p.READY, {"methods": ["a"], "credit": 0}),
    "ready with non-string methods": p.json_message(p.READY, {"methods": [1], "credit": 3}),
    "ready with a list body": p.json_message(p.READY, ["a"]),
}


@pytest.mark.parametrize("frames", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_from_a_registered_worker_is_counted_as_dropped(frames: list[bytes]) -> None:
    state = new_state()
    ready(state, W1, credit=3)
    state.take_sends()
    state.on_worker_message(W1, list(frames), 1.0)
    assert sum(state.figures.dropped.values()) == 1
    assert state.workers[W1].credit == 3
    assert sent(state).replies == []


@pytest.mark.parametrize("name", ["wrong tag", "other version", "tag only", "unknown command",
                                  "ready without methods", "reply with short credit"])
def test_garbage_from_an_unknown_peer_is_counted_as_dropped(name: str) -> None:
    state = new_state()
    state.on_worker_message(b"stranger", list(GARBAGE[name]), 1.0)
    assert sum(state.figures.dropped.values()) == 1
    assert not state.workers


def test_a_ready_whose_body_is_not_json_is_counted_as_dropped() -> None:
    state = new_state()
    state.on_worker_message(W1, p.message(p.READY, b"{not json"), 0.0)
    assert sum(state.figures.dropped.values()) == 1
    assert not state.workers


@pytest.mark.parametrize("frames", [[], [b"client"]], ids=["empty", "route only"])
def test_a_client_message_without_a_body_frame_is_dropped_and_counted(
    frames: list[bytes],
) -> None:
    state = new_state()
    ready(state, W1)
    state.take_sends()
    state.on_client_frame(frames, 0.0)
    assert state.figures.dropped["client message without body"] == 1
    assert state.take_sends() == []


# ---------------------------------------------------------------- invariants under random load


class FakeWorker:
    """A worker that follows the protocol: holds at most its credit, returns one unit
    per request it finishes or has cancelled."""

    def __init__(self, identity: bytes, methods: tuple[str, ...], capacity: int) -> None:
        self.identity = identity
        self.methods = methods
        self.capacity = capacity
        self.held: set[bytes] = set()
        self.silent = False
        self.next_call = 1


class Simulation:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.state = new_state(
            heartbeat_interval_s=1.0, heartbeat_liveness=3, max_queue=20, max_attempts=2
        )
        self.now = 0.0
        self.fakes: dict[bytes, FakeWorker] = {}
        self.next_worker = 0
        self.next_id = 0
        self.expected: set[int] = set()
        self.answers: dict[int, int] = {}

    # -------------------------------------------------------- events

    def run(self, steps: int) -> None:
        events = [
            (self.client_request, 30), (self.worker_reply, 25), (self.tick, 15),
            (self.new_worker, 6), (self.worker_dies, 5), (self.worker_goes_silent, 3),
            (self.nested, 8), (self.garbage, 3), (self.reregister, 2), (self.drain, 1),
        ]
        actions = [e for e, _ in events]
        weights = [w for _, w in events]
        self.new_worker()
        for _ in range(steps):
            self.rng.choices(actions, weights)[0]()
            self.deliver()
            self.check()

    def client_request(self) -> None:
        self.next_id += 1
        rid = self.next_id
        method = self.rng.choice(["a", "a", "b", "c"])
        options: dict[str, Any] = {"timeout_ms": self.rng.choice([300, 1000, 4000])}
        if self.rng.random() < 0.1:
            options["idempotency_key"] = self.rng.choice(["k1", "k2"])
        notification = self.rng.random() < 0.1
        if not notification:
            self.expected.add(rid)
        call(self.state, method, rid=None if notification else rid,
             client=b"c%d" % rid, now=self.now, **options)

    def live(self) -> list[FakeWorker]:
        return [f for f in self.fakes.values() if not f.silent]

    def worker_reply(self) -> None:
        candidates = [f for f in self.live() if f.held]
        if not candidates:
            return
        fake = self.rng.choice(candidates)
        keys = self.rng.sample(sorted(fake.held), self.rng.randint(1, len(fake.held)))
        fake.held.difference_update(keys)
        fragment = self.rng.choice([RESULT, LOST, b'"error":{"code":-32000,"message":"x"}'])
        reply(self.state, fake.identity, *[(k, fragment) for k in keys],
              credit=len(keys), now=self.now)

    def tick(self) -> None:
        self.now += self.rng.uniform(0.0, 0.8)
        for fake in self.live():
            self.state.on_worker_message(fake.identity, p.message(p.HEARTBEAT), self.now)
        self.state.on_tick(self.now)

    def new_worker(self) -> None:
        self.next_worker += 1
        identity = b"W%d" % self.next_worker
        methods = self.rng.choice([("a",), ("b",), ("a", "b")])
        fake = FakeWorker(identity, methods, self.rng.randint(1, 4))
        self.fakes[identity] = fake
        ready(self.state, identity, methods, fake.capacity, self.now)

    def worker_dies(self) -> None:
        if self.live():
            fake = self.rng.choice(self.live())
            del self.fakes[fake.identity]
            self.state.on_worker_message(fake.identity, p.message(p.DISCONNECT), self.now)

    def worker_goes_silent(self) -> None:
        if self.live():
            self.rng.choice(self.live()).silent = True

    def reregister(self) -> None:
        if self.live():
            fake = self.rng.choice(self.live())
            fake.held.clear()  # a worker that registers again has dropped everything
            ready(self.state, fake.identity, fake.methods, fake.capacity, self.now)

    def drain(self) -> None:
        if self.live():
            fake = self.rng.choice(self.live())
            self.state.on_worker_message(fake.identity, p.message(p.DRAIN), self.now)

    def nested(self) -> None:
        candidates = [f for f in self.live() if f.held]
        if candidates:
            fake = self.rng.choice(candidates)
            parent = self.rng.choice(sorted(fake.held))
            fake.next_call += 1
            nested_call(self.state, fake.identity, fake.next_call, parent,
                        method=self.rng.choice(["a", "b"]), now=self.now)

    def garbage(self) -> None:
        identity = self.rng.choice([*self.fakes, b"stranger"])
        frames = self.rng.choice(list(GARBAGE.values()))
        self.state.on_worker_message(identity, list(frames), self.now)

    # -------------------------------------------------------- plumbing and checks

    def deliver(self) -> None:
        while True:
            sends = self.state.take_sends()
            if not sends:
                return
            for side, frames in sends:
                if side == FRONTEND:
                    self.answer(frames)
                else:
                    self.to_worker(frames)

    def answer(self, frames: list[bytes]) -> None:
        response = orjson.loads(frames[-1])
        assert isinstance(response, dict)
        rid = response["id"]
        assert rid in self.expected, f"reply to {rid!r} that expects none"
        self.answers[rid] = self.answers.get(rid, 0) + 1
        assert self.answers[rid] == 1, f"request {rid} answered twice"

    def to_worker(self, frames: list[bytes]) -> None:
        identity, command, body = frames[0], frames[2], frames[3:]
        fake = self.fakes.get(identity)
        if fake is None or fake.silent:
            return
        if command == p.REQUEST:
            for meta, method in zip(body[0::3], body[1::3], strict=True):
                assert method.decode() in fake.methods
                fake.held.add(p.decode_request_meta(meta).key)
            assert len(fake.held) <= fake.capacity, "broker exceeded a worker's credit"
        elif command == p.CANCEL:
            cancelled = fake.held.intersection(body)
            fake.held.difference_update(cancelled)
            if cancelled:
                self.state.on_worker_message(
                    identity, p.message(p.CREDIT, p.encode_credit(len(cancelled))), self.now
                )

    def check(self) -> None:
        state = self.state
        issued = {identity: fake.capacity for identity, fake in self.fakes.items()}
        check_invariants(state, issued)
        for identity, worker in state.workers.items():
            fake = self.fakes[identity]
            if not fake.silent:
                assert worker.in_flight == fake.held
                if not worker.draining:
                    assert worker.credit + len(worker.in_flight) == fake.capacity

    def finish(self) -> None:
        """Far past every deadline, every request with an id has had exactly one reply."""
        for _ in range(3):
            self.now += 100.0
            self.state.on_tick(self.now)
            self.deliver()
        assert not self.state.requests and not self.state.requests.joined
        assert set(self.answers) == self.expected


def test_check_invariants_notices_a_request_held_by_two_workers() -> None:
    state = new_state()
    ready(state, W1)
    ready(state, W2)
    state.take_sends()
    call(state)
    out = sent(state)
    [key] = out.keys(W1) + out.keys(W2)
    state.workers[W1].in_flight.add(key)
    state.workers[W2].in_flight.add(key)
    with pytest.raises(AssertionError):
        check_invariants(state)


def test_check_invariants_notices_a_wrong_queued_count() -> None:
    state = new_state()
    call(state)
    state.requests.queued += 1
    with pytest.raises(AssertionError):
        check_invariants(state)


def test_check_invariants_notices_more_in_flight_than_issued_credit() -> None:
    state = new_state()
    ready(state, W1, credit=2)
    call(state, rid=1)
    call(state, rid=2)
    check_invariants(state, {W1: 2})
    with pytest.raises(AssertionError):
        check_invariants(state, {W1: 1})


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_invariants_hold_after_every_step_of_random_traffic(seed: int) -> None:
    simulation = Simulation(seed)
    simulation.run(400)
    simulation.finish()
    assert simulation.answers, "the simulation answered nothing"


def test_the_heartbeat_acknowledging_ready_leaves_before_the_first_request() -> None:
    state = new_state()
    call(state, "add", now=0.5)   # waits for a worker
    ready(state, W1, now=1.0)
    sends = state.take_sends()
    commands = [frames[2] for side, frames in sends if side == BACKEND and frames[0] == W1]
    assert commands == [p.HEARTBEAT, p.REQUEST]
