"""Helpers for driving BrokerState as a pure state machine in unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from madrpc import protocol as p
from madrpc.broker_state import BACKEND, FRONTEND, BrokerState
from madrpc.config import BrokerConfig
from madrpc.curve import KeyRing

W1 = b"worker-1"
W2 = b"worker-2"
W3 = b"worker-3"
RESULT = b'"result":3'
LOST = b'"error":{"code":-32005,"message":"Worker lost"}'

# ---------------------------------------------------------------- helpers


def new_state(keys: KeyRing | None = None, **overrides: Any) -> BrokerState:
    overrides.setdefault("adoption_grace_s", 0.0)
    return BrokerState(BrokerConfig(**overrides), now=0.0, keys=keys)


def ready(
    state: BrokerState,
    identity: bytes,
    methods: tuple[str, ...] = ("add",),
    credit: int = 10,
    now: float = 0.0,
    peer: str | None = None,
    **info: Any,
) -> None:
    body = {"methods": list(methods), "credit": credit, **info}
    state.on_worker_message(identity, p.json_message(p.READY, body), now, peer)


def call(
    state: BrokerState,
    method: str = "add",
    *,
    rid: Any = 1,
    client: bytes = b"client",
    now: float = 0.0,
    params: Any = (1, 2),
    peer: str | None = None,
    **options: Any,
) -> bytes:
    """Send one JSON-RPC request (a notification when ``rid`` is None); return its frame."""
    member: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        member["params"] = list(params) if isinstance(params, tuple) else params
    if rid is not None:
        member["id"] = rid
    if options:
        member["madrpc"] = options
    frame = orjson.dumps(member)
    state.on_client_frame([client, b"", frame], now, peer)
    return frame


def reply(
    state: BrokerState,
    identity: bytes,
    *pairs: tuple[bytes, bytes],
    credit: int = 1,
    now: float = 0.0,
    peer: str | None = None,
) -> None:
    body = [frame for pair in pairs for frame in pair]
    frames = p.message(p.REPLY, p.encode_credit(credit), *body)
    state.on_worker_message(identity, frames, now, peer)


def nested_call(
    state: BrokerState,
    identity: bytes,
    call_key: int,
    parent: bytes,
    method: str = "inner",
    now: float = 0.0,
    **options: Any,
) -> None:
    """A CALL as a worker's JavaScript emits it (no id: the broker routes the result)."""
    member: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": [1]}
    if options:
        member["madrpc"] = options
    frames = p.message(p.CALL, p.encode_call_meta(call_key, parent), orjson.dumps(member))
    state.on_worker_message(identity, frames, now)


@dataclass
class Sent:
    """What one take_sends() returned, sorted by destination."""

    replies: list[tuple[bytes, Any]] = field(default_factory=list)
    """(client identity, decoded response) for every frontend message."""
    backend: list[list[bytes]] = field(default_factory=list)

    def to(self, identity: bytes, command: bytes) -> list[list[bytes]]:
        """Body frames of each ``command`` message sent to ``identity``."""
        return [
            frames[3:] for frames in self.backend
            if frames[0] == identity and frames[1] == p.TAG and frames[2] == command
        ]

    def requests(self, identity: bytes) -> list[tuple[p.RequestMeta, bytes, bytes]]:
        out = []
        for body in self.to(identity, p.REQUEST):
            for i in range(0, len(body), 3):
                out.append((p.decode_request_meta(body[i]), body[i + 1], body[i + 2]))
        return out

    def keys(self, identity: bytes) -> list[bytes]:
        return [meta.key for meta, _, _ in self.requests(identity)]

    def results(self, identity: bytes) -> list[tuple[bytes, bytes]]:
        return [
            pair for body in self.to(identity, p.RESULT)
            for pair in zip(body[0::2], body[1::2], strict=True)
        ]

    def cancels(self, identity: bytes) -> list[bytes]:
        return [key for body in self.to(identity, p.CANCEL) for key in body]


def sent(state: BrokerState) -> Sent:
    out = Sent()
    for side, frames in state.take_sends():
        if side == FRONTEND:
            out.replies.append((frames[0], orjson.loads(frames[-1])))
        else:
            assert side == BACKEND
            out.backend.append(frames)
    return out


def error_code(response: Any) -> int:
    return int(response["error"]["code"])


def hold(state: BrokerState, identity: bytes, count: int = 1, method: str = "add",
         now: float = 0.0, **options: Any) -> list[bytes]:
    """Send ``count`` client requests and return the keys dispatched to ``identity``."""
    for i in range(count):
        call(state, method, rid=i + 1, client=b"c%d" % i, now=now, **options)
    keys = sent(state).keys(identity)
    assert len(keys) == count
    return keys


def check_invariants(state: BrokerState, issued: dict[bytes, int] | None = None) -> None:
    """The broker's documented invariants.

    Every live request is either queued (in its method's queue, held by nobody) or held
    in the in_flight set of exactly one live worker; ``state.requests.queued`` counts the
    queued ones; a worker never holds more than the credit it issued (``issued``: credit units
    the worker granted and has not had back, i.e. its capacity).
    """
    queued_entries = state.requests.waiting()
    assert len(queued_entries) == len({id(r) for r in queued_entries}), "queued twice"
    assert state.requests.queued == len(queued_entries)
    for request in queued_entries:
        assert state.requests.get(request.key) is request
        assert request.worker is None
    holders: dict[bytes, list[bytes]] = {}
    for identity, worker in state.workers.items():
        assert worker.credit >= 0
        for key in worker.in_flight:
            holders.setdefault(key, []).append(identity)
            assert key in state.requests, "a worker holds a dead request"
            assert state.requests[key].worker == identity
        for key in worker.calls:
            assert key in state.requests and state.requests[key].caller == identity
        if issued is not None:
            assert len(worker.in_flight) + worker.credit <= issued[identity]
    for key, request in state.requests.items():
        assert request.key == key
        if request.queued:
            assert key not in holders
        else:
            assert holders.get(key) == [request.worker], f"request {key.hex()} has no one owner"
    assert sum(1 for r in state.requests.values() if r.queued) == state.requests.queued
