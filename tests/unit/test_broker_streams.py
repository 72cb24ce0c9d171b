"""Streams through the broker as a pure state machine: items pass from the worker's
PARTIAL to the client within the window the client's ``_more`` grants allow, a nested
stream's items go back to the calling worker, and a stream that sent items never runs
twice."""

from __future__ import annotations

import orjson
import pytest
from broker_support import (
    W1,
    W2,
    Sent,
    call,
    error_code,
    hold,
    nested_call,
    new_state,
    ready,
    reply,
    sent,
)

from madrpc import protocol as p
from madrpc.broker_state import BrokerState
from madrpc.errors import ErrorCode

pytestmark = pytest.mark.timeout(10)

CLIENT = b"c0"


def partial(state: BrokerState, identity: bytes, *pairs: tuple[bytes, bytes],
            now: float = 0.0) -> None:
    body = [frame for pair in pairs for frame in pair]
    state.on_worker_message(identity, p.message(p.PARTIAL, *body), now)


def more(state: BrokerState, rid: int, n: int, client: bytes = CLIENT) -> None:
    state.on_client_frame([client, b"", orjson.dumps(
        {"jsonrpc": "2.0", "method": "_more", "params": {"id": rid, "n": n}})], 0.0)


def grants(out: Sent, identity: bytes) -> list[tuple[bytes, int]]:
    return [(body[i], p.decode_grant(body[i + 1])) for body in out.to(identity, p.MORE)
            for i in range(0, len(body), 2)]


def open_stream(window: int = 4) -> tuple[BrokerState, bytes]:
    state = new_state()
    ready(state, W1, methods=("gen",))
    state.take_sends()
    [key] = hold(state, W1, method="gen", stream={"window": window})
    return state, key


def test_items_reach_the_client_as_partial_replies_before_the_final_answer() -> None:
    state, key = open_stream()
    partial(state, W1, (key, b"[1,2]"))
    partial(state, W1, (key, b'[{"x":3}]'))
    reply(state, W1, (key, b'"result":{"items":3}'))
    out = sent(state)
    assert [body for _, body in out.replies] == [
        {"jsonrpc": "2.0", "id": 1, "madrpc": {"items": [1, 2]}},
        {"jsonrpc": "2.0", "id": 1, "madrpc": {"items": [{"x": 3}]}},
        {"jsonrpc": "2.0", "id": 1, "result": {"items": 3}},
    ]
    assert state.core.figures.counters["stream_items"] == 3


def test_more_from_the_client_is_passed_to_the_worker_within_the_window() -> None:
    state, key = open_stream(window=4)
    partial(state, W1, (key, b"[1,2,3]"))
    sent(state)
    more(state, 1, 2)
    assert grants(sent(state), W1) == [(key, 2)]
    more(state, 1, 100)   # more than it was sent: only up to the window's worth
    assert grants(sent(state), W1) == [(key, 1)]
    more(state, 1, 1)
    assert grants(sent(state), W1) == []


def test_more_for_an_unknown_stream_or_with_bad_params_grants_nothing() -> None:
    state, _ = open_stream()
    more(state, 99, 2)
    more(state, 1, 2, client=b"another-client")   # not its stream
    state.on_client_frame([CLIENT, b"", orjson.dumps(
        {"jsonrpc": "2.0", "id": 7, "method": "_more", "params": {"id": 1, "n": -1}})], 0.0)
    out = sent(state)
    assert grants(out, W1) == []
    [(_, answer)] = out.replies
    assert error_code(answer) == ErrorCode.INVALID_PARAMS


def test_a_worker_sending_beyond_the_window_fails_the_stream_and_is_told_to_stop() -> None:
    state, key = open_stream(window=2)
    partial(state, W1, (key, b"[1,2,3]"))
    out = sent(state)
    [(_, answer)] = out.replies
    assert error_code(answer) == ErrorCode.INTERNAL_ERROR
    assert out.cancels(W1) == [key]


@pytest.mark.parametrize("items", [b"[]", b"1", b"[1]]", b'[1],"id":2', b"not json"])
def test_malformed_items_fail_the_stream_and_are_never_spliced(items: bytes) -> None:
    state, key = open_stream()
    partial(state, W1, (key, items))
    out = sent(state)
    [(_, answer)] = out.replies
    assert error_code(answer) == ErrorCode.INTERNAL_ERROR and answer["id"] == 1
    assert out.cancels(W1) == [key]


def test_items_from_a_worker_that_does_not_hold_the_stream_are_dropped() -> None:
    state, key = open_stream()
    ready(state, W2, methods=("gen",))
    sent(state)
    partial(state, W2, (key, b"[1]"))
    assert sent(state).replies == []
    assert state.requests[key].items == 0


def test_a_stream_that_sent_items_fails_when_its_worker_dies_instead_of_running_again() -> None:
    state, key = open_stream()
    ready(state, W2, methods=("gen",))
    partial(state, W1, (key, b"[1]"))
    sent(state)
    state.on_worker_message(W1, p.message(p.DISCONNECT), 0.5)
    out = sent(state)
    assert out.requests(W2) == []
    [(_, answer)] = out.replies
    assert error_code(answer) == ErrorCode.WORKER_LOST
    assert answer["error"]["data"] == {"items": 1}


def test_a_stream_that_sent_nothing_runs_again_when_its_worker_dies() -> None:
    state, key = open_stream()
    ready(state, W2, methods=("gen",))
    sent(state)
    state.on_worker_message(W1, p.message(p.DISCONNECT), 0.5)
    assert sent(state).keys(W2) == [key]


def test_a_nested_streams_items_and_grants_travel_between_the_two_workers() -> None:
    state = new_state()
    ready(state, W1, methods=("outer",))
    ready(state, W2, methods=("gen",))
    state.take_sends()
    [parent] = hold(state, W1, method="outer")
    nested_call(state, W1, 5, parent, method="gen", stream={"window": 2})
    [child] = sent(state).keys(W2)
    partial(state, W2, (child, b"[1,2]"))
    assert sent(state).to(W1, p.PARTIAL) == [[p.encode_key(5), b"[1,2]"]]
    state.on_worker_message(W1, p.message(p.MORE, p.encode_key(5), p.encode_grant(2)), 0.0)
    assert grants(sent(state), W2) == [(child, 2)]
    state.on_worker_message(W1, p.message(p.ABANDON, p.encode_key(5)), 0.0)
    out = sent(state)
    assert out.cancels(W2) == [child]
    assert child not in state.requests


def test_partials_for_one_worker_leave_before_the_result_of_the_same_round() -> None:
    state = new_state()
    ready(state, W1, methods=("outer",))
    ready(state, W2, methods=("gen",))
    state.take_sends()
    [parent] = hold(state, W1, method="outer")
    nested_call(state, W1, 5, parent, method="gen", stream=True)
    [child] = sent(state).keys(W2)
    partial(state, W2, (child, b"[1]"))
    reply(state, W2, (child, b'"result":{"items":1}'))
    commands = [frames[2] for frames in sent(state).backend if frames[0] == W1]
    assert commands == [p.PARTIAL, p.RESULT]


def test_a_stream_in_a_batch_or_without_an_id_is_refused() -> None:
    state = new_state()
    ready(state, W1, methods=("gen",))
    state.take_sends()
    state.on_client_frame([CLIENT, b"", orjson.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "gen", "madrpc": {"stream": True}}])], 0.0)
    call(state, "gen", rid=None, stream=True)
    call(state, "gen", rid=3, stream=True, idempotency_key="k")
    out = sent(state)
    assert out.requests(W1) == []
    [(_, batch), (_, keyed)] = out.replies   # a notification gets no answer, and no run
    assert error_code(batch[0]) == ErrorCode.INVALID_REQUEST
    assert "batch" in batch[0]["error"]["message"]
    assert error_code(keyed) == ErrorCode.INVALID_REQUEST


def test_a_clients_streams_are_cancelled_when_a_send_to_it_fails() -> None:
    state, key = open_stream()
    state.on_client_gone(CLIENT, 1.0)
    assert key not in state.requests
    assert sent(state).cancels(W1) == [key]


def test_two_streams_with_one_id_on_one_connection_keep_the_newer_ones_grants() -> None:
    state, first = open_stream(window=2)
    call(state, "gen", rid=1, client=CLIENT, stream={"window": 2})
    [second] = sent(state).keys(W1)
    reply(state, W1, (first, b'"result":{"items":0}'))
    partial(state, W1, (second, b"[1]"))
    sent(state)
    more(state, 1, 1)
    assert grants(sent(state), W1) == [(second, 1)]
