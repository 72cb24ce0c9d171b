"""Property-based fuzzing: random frames and random JSON never crash the decoders or the
broker, and always get a well-formed reply or a counted drop."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from madrpc import protocol as p
from madrpc.broker_state import FRONTEND, BrokerState
from madrpc.config import BrokerConfig
from madrpc.errors import ProtocolError
from madrpc.jsonrpc import Call, Invalid, parse_frame

EXAMPLES = settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
WORKER = b"\x00fuzz-worker"
CLIENT = b"\x00fuzz-client"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                           allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
methods = st.sampled_from(["add", "noop", "_ping", "_info", "missing", "", "__proto__"])
ids = st.none() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False) | st.booleans()
requests = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2.0])},
    optional={
        "method": methods | json_values,
        "params": json_values,
        "id": ids,
        "madrpc": st.dictionaries(
            st.sampled_from(["timeout_ms", "idempotency_key", "cpu_limit_ms", "max_memory_mb",
                             "other"]),
            json_values, max_size=3,
        ) | json_values,
    },
)
documents = requests | st.lists(requests | json_values, max_size=6) | json_values


def encode(document: Any) -> bytes:
    """JSON text of any document (the stdlib also writes integers beyond 64 bits)."""
    return json.dumps(document).encode()


@EXAMPLES
@given(st.binary(max_size=300))
def test_parse_frame_never_raises_on_random_bytes(frame: bytes) -> None:
    parsed = parse_frame(frame)
    assert isinstance(parsed, (Call, Invalid, list))


@EXAMPLES
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_the_worker_protocol_decoder_raises_only_protocol_errors(frames: list[bytes]) -> None:
    try:
        message = p.decode(frames)
    except ProtocolError:
        return
    assert message.command in p.COMMANDS


@EXAMPLES
@given(st.lists(st.sampled_from([p.TAG, b"MADRPC-W2", b"x"]), min_size=1, max_size=1),
       st.sampled_from(sorted(p.COMMANDS) + [b"BOGUS"]),
       st.lists(st.binary(max_size=24) | st.just(b"\x00" * 8) | st.just(b"\x00" * 4),
                max_size=7))
def test_the_broker_survives_any_worker_message(
    tag: list[bytes], command: bytes, body: list[bytes]
) -> None:
    state = fresh_broker()
    dropped = sum(state.figures.dropped.values())
    state.on_worker_message(WORKER, [*tag, command, *body], 1.0)
    state.on_tick(2.0)
    state.take_sends()
    assert sum(state.figures.dropped.values()) >= dropped


def fresh_broker() -> BrokerState:
    state = BrokerState(BrokerConfig(adoption_grace_s=0.0), 0.0)
    state.on_worker_message(
        WORKER, p.json_message(p.READY, {"methods": ["add", "noop"], "credit": 1000}), 0.0
    )
    state.take_sends()
    return state


def answer_everything(state: BrokerState, now: float) -> list[list[bytes]]:
    """Play a worker that answers every request at once; return frontend messages."""
    replies: list[list[bytes]] = []
    for _ in range(3):
        sends = state.take_sends()
        replies += [frames for side, frames in sends if side == FRONTEND]
        work = [frames for side, frames in sends
                if side != FRONTEND and frames[2:3] == [p.REQUEST]]
        if not work:
            break
        for frames in work:
            body = frames[3:]
            reply = [p.TAG, p.REPLY, p.encode_credit(len(body) // 3)]
            for i in range(0, len(body), 3):
                reply += [p.decode_request_meta(body[i]).key, b'"result":true']
            state.on_worker_message(WORKER, reply, now)
    return replies


def expects_reply(document: Any) -> bool:
    if isinstance(document, list):
        return len(document) == 0 or any(
            not isinstance(m, dict) or "id" in m or m.get("jsonrpc") != "2.0"
            or not isinstance(m.get("method"), str) for m in document)
    return not isinstance(document, dict) or "id" in document or (
        document.get("jsonrpc") != "2.0" or not isinstance(document.get("method"), str)
        or not document.get("method"))


def assert_parse_frame_takes(frame: bytes) -> None:
    """parse_frame does not raise: it gives calls, or invalid members with a JSON-RPC error
    code and a well-formed error response."""
    parsed = parse_frame(frame)
    members = parsed if isinstance(parsed, list) else [parsed]
    for member in members:
        assert isinstance(member, (Call, Invalid))
        if isinstance(member, Invalid):
            assert -32700 <= member.code <= -32000
            assert orjson.loads(member.response())["jsonrpc"] == "2.0"


@EXAMPLES
@given(documents)
def test_parse_frame_never_raises_on_random_json_and_the_broker_answers_it_well_formed(
    document: Any,
) -> None:
    """One test for both properties of a random JSON document (drawing the documents is
    most of the time these take): parse_frame never raises, and the broker answers every
    client frame that wants an answer with well-formed JSON-RPC."""
    assert_parse_frame_takes(encode(document))
    state = fresh_broker()
    state.on_client_frame([CLIENT, encode(document)], 1.0)
    replies = answer_everything(state, 1.0)
    for frames in replies:
        assert frames[0] == CLIENT
        reply = orjson.loads(frames[-1])
        for member in reply if isinstance(reply, list) else [reply]:
            assert member["jsonrpc"] == "2.0"
            assert "id" in member
            assert ("result" in member) != ("error" in member)
    if expects_reply(document) and not replies:
        raise AssertionError(f"no reply to {document!r}")


@EXAMPLES
@given(st.lists(st.binary(max_size=60), min_size=0, max_size=4))
def test_the_broker_answers_or_counts_random_client_frames(frames: list[bytes]) -> None:
    state = fresh_broker()
    dropped = sum(state.figures.dropped.values())
    state.on_client_frame([CLIENT, *frames], 1.0)
    replies = answer_everything(state, 1.0)
    if not frames:
        assert sum(state.figures.dropped.values()) == dropped + 1
        return
    for message in replies:
        orjson.loads(message[-1])
