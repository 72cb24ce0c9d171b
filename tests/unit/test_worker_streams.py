"""Streams through a worker as a pure state machine: an engine's P lines become PARTIAL
messages ahead of the reply, the broker's MORE becomes a grant in the next step, a nested
stream's items, acknowledgements and early exit travel between engine and broker, and a
stream is never run again once it has sent items."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from madrpc import protocol as p
from madrpc.config import WorkerConfig
from madrpc.errors import ErrorCode
from madrpc.worker_state import Stage, WorkerState
from madrpc.worker_tables import asks_for_stream

pytestmark = pytest.mark.timeout(10)

WALL_MS = 1_700_000_000_000.0
STREAM_CALL = b'{"jsonrpc":"2.0","method":"gen","madrpc":{"stream":{"window":4}}}'


def new_state(**overrides: Any) -> WorkerState:
    overrides.setdefault("queue_step_ms", 0.0)
    state = WorkerState(WorkerConfig(script="test.js", contexts=1, **overrides))
    index = state.add_engine()
    state.on_engine_ready(index, b"engine-0")
    return state


def deliver_stream(state: WorkerState, number: int = 1, window: int = 4) -> int:
    """A stream request from the broker; returns its local key."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": number, "method": "gen",
                         "madrpc": {"stream": {"window": window}}})
    meta = p.encode_request_meta(p.encode_key(number), 5000, 0, 0)
    state.on_requests([meta, b"gen", body], 0.0, WALL_MS)
    return state.requests.by_key[p.encode_key(number)]


def step_payload(state: WorkerState) -> dict[str, Any]:
    state.schedule(0.0, WALL_MS)
    [(_, frames)] = state.take_engine_messages()
    assert frames[0] == b"STEP"
    decoded: dict[str, Any] = orjson.loads(frames[1])
    return decoded


def messages(state: WorkerState) -> list[p.Message]:
    return [p.decode(frames) for frames in state.take_broker_messages()]


def test_a_request_asking_for_a_stream_is_known_as_one() -> None:
    state = new_state()
    local = deliver_stream(state)
    assert state.requests[local].is_stream()
    meta = p.encode_request_meta(p.encode_key(2), 5000, 0, 0)
    state.on_requests([meta, b"f", b'{"jsonrpc":"2.0","id":2,"method":"f","params":['
                       b'"\\"stream\\": true"]}'], 0.0, WALL_MS)
    assert not state.requests[state.requests.by_key[p.encode_key(2)]].is_stream()


def test_a_body_is_read_for_a_stream_only_when_it_matters() -> None:
    state = new_state()
    local = deliver_stream(state)
    request = state.requests[local]
    assert request.stream_asked is None   # a large body is not scanned on arrival
    state.on_grants([(p.encode_key(1), p.encode_grant(2))])
    assert request.stream_asked is True and request.granted == 2


def test_asks_for_stream_reads_the_madrpc_member_only() -> None:
    assert asks_for_stream(b'{"method":"f","madrpc":{"stream":true}}')
    assert asks_for_stream(b'{"method":"f","madrpc":{"stream":{"window":8}}}')
    assert not asks_for_stream(b'{"method":"f","madrpc":{"stream":false}}')
    assert not asks_for_stream(b'{"method":"f","params":{"stream": true}}')
    assert not asks_for_stream(b'{"method":"f","params":["x"]}')
    assert not asks_for_stream(b'{"stream": true, not json')


def test_items_leave_as_partial_before_the_reply_of_the_same_round() -> None:
    state = new_state()
    local = deliver_stream(state)
    step_payload(state)
    state.on_engine_output(0, True, b'P %d 2 [1,2]\nR %d "result":{"items":2}' % (local, local),
                           0.1)
    partial, reply = messages(state)
    assert partial.command == p.PARTIAL and partial.pairs() == [(p.encode_key(1), b"[1,2]")]
    assert reply.command == p.REPLY and reply.pairs(1) == [(p.encode_key(1),
                                                           b'"result":{"items":2}')]
    assert state.figures.stream_items == 2


def test_more_from_the_broker_is_a_grant_in_the_next_step_of_a_parked_stream() -> None:
    state = new_state()
    local = deliver_stream(state)
    step_payload(state)
    state.on_engine_output(0, True, b"P %d 4 [1,2,3,4]" % local, 0.1)
    assert state.requests[local].stage is Stage.PARKED
    state.on_grants([(p.encode_key(1), p.encode_grant(2))])
    assert step_payload(state) == {"m": [[local, 2]]}


def test_more_that_comes_before_the_stream_starts_goes_with_its_first_step() -> None:
    state = new_state()
    local = deliver_stream(state)
    state.on_grants([(p.encode_key(1), p.encode_grant(3))])
    payload = step_payload(state)
    assert [entry[0] for entry in payload["r"]] == [local] and payload["m"] == [[local, 3]]


def test_more_for_a_request_that_is_not_a_stream_is_ignored() -> None:
    state = new_state()
    meta = p.encode_request_meta(p.encode_key(5), 5000, 0, 0)
    state.on_requests([meta, b"f", b'{"jsonrpc":"2.0","id":5,"method":"f"}'], 0.0, WALL_MS)
    state.on_grants([(p.encode_key(5), p.encode_grant(3)), (p.encode_key(6), p.encode_grant(1))])
    assert "m" not in step_payload(state)


def test_a_stream_that_sent_items_fails_when_its_context_is_lost() -> None:
    state = new_state()
    local = deliver_stream(state)
    step_payload(state)
    state.on_engine_output(0, True, b"P %d 1 [1]" % local, 0.1)
    messages(state)
    state.on_engine_died(0, "killed", False, 0.2)
    [reply] = [m for m in messages(state) if m.command == p.REPLY]
    [(key, fragment)] = reply.pairs(1)
    assert key == p.encode_key(1)
    assert orjson.loads(b"{" + fragment + b"}")["error"]["code"] == ErrorCode.WORKER_LOST
    assert local not in state.requests


def test_a_stream_that_sent_nothing_runs_again_when_its_context_is_lost() -> None:
    state = new_state()
    local = deliver_stream(state)
    step_payload(state)
    state.on_engine_output(0, True, b"", 0.1)   # parked: its generator awaits something
    state.on_engine_died(0, "killed", False, 0.2)
    assert state.requests[local].stage is Stage.QUEUED


def test_an_item_larger_than_a_message_may_be_fails_the_stream() -> None:
    state = new_state(max_message_bytes=4096)
    local = deliver_stream(state)
    step_payload(state)
    big = b'["' + b"x" * 5000 + b'"]'
    state.on_engine_output(0, True, b"P %d 1 %b" % (local, big), 0.1)
    sent = messages(state)
    assert [m.command for m in sent] == [p.REPLY]
    [(_, fragment)] = sent[0].pairs(1)
    assert orjson.loads(b"{" + fragment + b"}")["error"]["code"] == ErrorCode.MESSAGE_TOO_LARGE


def open_nested_stream(state: WorkerState) -> tuple[int, bytes]:
    """A request whose code opened a nested stream (JS call 9); (local, call key)."""
    meta = p.encode_request_meta(p.encode_key(1), 5000, 0, 0)
    state.on_requests([meta, b"outer", b'{"jsonrpc":"2.0","id":1,"method":"outer"}'], 0.0,
                      WALL_MS)
    local = state.requests.by_key[p.encode_key(1)]
    step_payload(state)
    state.on_engine_output(0, True, b"C 9 %d %b" % (local, STREAM_CALL), 0.1)
    [call] = [m for m in messages(state) if m.command == p.CALL]
    [(call_meta, _)] = call.pairs()
    return local, p.decode_call_meta(call_meta)[0]


def test_a_nested_streams_items_feed_the_context_that_reads_them() -> None:
    state = new_state()
    _, call_key = open_nested_stream(state)
    state.on_partials([(call_key, b"[1,2]")])
    state.on_results([(call_key, b'"result":{"items":2}')])
    assert step_payload(state) == {"p": [[9, [1, 2]]], "s": [[9, {"result": {"items": 2}}]]}
    state.on_partials([(call_key, b"[3]")])   # after its end: nobody reads it
    state.schedule(0.0, WALL_MS)
    assert state.take_engine_messages() == []


def test_the_scripts_acknowledgements_and_early_exit_reach_the_broker() -> None:
    state = new_state()
    local, call_key = open_nested_stream(state)
    state.on_engine_output(0, False, b"M 9 2\nX 9", 0.2)
    more, abandon = [m for m in messages(state) if m.command != p.REPLY]
    assert more.command == p.MORE and more.pairs() == [(call_key, p.encode_grant(2))]
    assert abandon.command == p.ABANDON and abandon.frames == [call_key]
    state.on_results([(call_key, b'"error":{"code":-32011,"message":"Cancelled"}')])
    state.schedule(0.0, WALL_MS)
    assert state.take_engine_messages() == []   # abandoned: its end goes nowhere
    assert local in state.requests


def test_a_nested_stream_is_not_sent_again_to_a_new_broker_but_fails() -> None:
    state = new_state()
    open_nested_stream(state)
    assert state.handover.pending_calls() == []
    state.on_broker_lost()
    state.resend_calls()
    assert [m for m in messages(state) if m.command == p.CALL] == []
    payload = step_payload(state)
    [[js_call, outcome]] = payload["s"]
    assert js_call == 9 and outcome["error"]["code"] == ErrorCode.WORKER_LOST


def test_a_stream_we_run_stops_when_the_broker_is_lost() -> None:
    state = new_state()
    local = deliver_stream(state)
    step_payload(state)
    state.on_engine_output(0, True, b"P %d 1 [1]" % local, 0.1)
    state.on_broker_lost()
    assert local not in state.requests
    assert step_payload(state) == {"x": [local]}
    assert state.adoption_frames(WALL_MS, 0.0) == []
