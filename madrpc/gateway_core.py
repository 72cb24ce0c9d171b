"""The HTTP gateway's pure core: what one HTTP body becomes on the way to the broker, and
what the broker's answer becomes on the way back.

The gateway is one client of the broker (one DEALER connection) for every HTTP caller,
so the ids callers chose could collide (everybody sends ``"id": 1``). Each request with
an id therefore travels under a gateway id, unique on the connection, and gets its own
id back in the answer; ``_cancel`` and ``_more`` name gateway ids. Everything else in
a request (params, ``madrpc`` options, unknown members) travels as the caller wrote it,
and requests are validated here with the broker's own parser (:mod:`madrpc.jsonrpc`), so
an invalid one gets the very error the broker would send. No sockets, no HTTP here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from .errors import ErrorCode
from .jsonrpc import (
    NULL,
    Call,
    Invalid,
    error_response,
    json_dumps,
    load_frame,
    parse_document,
)

__all__ = [
    "ANSWER_GRACE_S",
    "CLOSED_METHODS",
    "Plan",
    "Refusal",
    "assemble_batch",
    "cancel_frame",
    "is_partial",
    "more_frame",
    "partial_items",
    "plan_body",
    "restore_id",
]

ANSWER_GRACE_S = 5.0
"""How long past a call's deadline the gateway waits for the broker's answer (which the
broker always sends by the deadline) before it answers -32013 itself."""
CLOSED_METHODS = {
    "_cancel": "close the HTTP connection to cancel a call",
    "_more": "the gateway acknowledges a stream's items as it writes them",
    "_drain": "manage workers through the broker's frontend with an admin key",
    "_deploy": "deploy with `madrpc deploy` against the broker's frontend",
}
"""Built-in methods HTTP callers may not use, and what to do instead: the first two name
requests by id (which only the gateway knows), the others are for administrators."""
PREFIX = b'{"jsonrpc":"2.0","id":'
"""How every response the broker builds begins (:func:`madrpc.jsonrpc.response`)."""
_PARTIAL = b'"madrpc":{"items":'


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP body answered by the gateway itself: an HTTP status and a JSON-RPC body."""

    status: int
    body: bytes


@dataclass(slots=True)
class Plan:
    """What to send the broker for one HTTP body, and how to answer from its reply."""

    frame: bytes | None
    """The body to send the broker; None when nothing needs the grid."""
    names: dict[bytes, bytes] = field(default_factory=dict)
    """Gateway id (encoded) -> the caller's id (encoded), for every forwarded request
    with an id, in the order of the body."""
    batch: list[bytes | None] | None = None
    """For a batch: per member of the answer, the gateway's own answer (an invalid or
    closed member), or None where the broker's answer for the next gateway id goes."""
    timeout_s: float = 0.0
    """The latest deadline of the forwarded calls (seconds from now)."""
    stream_window: int | None = None
    """For a lone stream request: the items the worker may run ahead of what was written."""

    @property
    def expects_reply(self) -> bool:
        return bool(self.names)

    @property
    def calls(self) -> int:
        """Requests with an id this body puts in the grid."""
        return len(self.names)


def plan_body(body: bytes, next_id: Callable[[], int], default_timeout_s: float,
              max_batch: int = 10_000) -> Plan | Refusal:
    """Validate one HTTP body as the broker would and give each request a gateway id.

    ``next_id`` hands out gateway ids; ``default_timeout_s`` is the deadline of a call
    that names none (the broker's ``--default-timeout``)."""
    document = load_frame(body)
    if isinstance(document, Invalid):
        return Refusal(400, document.response())
    parsed = parse_document(document, body, max_batch=max_batch)
    if isinstance(parsed, Invalid):
        return Refusal(400, parsed.response())
    if isinstance(parsed, Call):
        return _plan_single(document, parsed, next_id, default_timeout_s)
    return _plan_batch(document, parsed, next_id, default_timeout_s)


def _plan_single(document: dict[str, Any], call: Call, next_id: Callable[[], int],
                 default_timeout_s: float) -> Plan | Refusal:
    closed = _closed(call)
    if closed is not None:
        return Refusal(403 if call.method in ("_drain", "_deploy") else 400, closed)
    if call.is_notification:
        assert call.body is not None
        return Plan(call.body)
    plan = Plan(None, stream_window=call.options.stream_window)
    frame = _forward(document, call, plan, next_id, default_timeout_s)
    if isinstance(frame, Invalid):
        return Refusal(400, frame.response())
    plan.frame = frame
    return plan


def _plan_batch(document: list[Any], members: list[Call | Invalid], next_id: Callable[[], int],
                default_timeout_s: float) -> Plan:
    plan = Plan(None, batch=[])
    assert plan.batch is not None
    forwarded: list[bytes] = []
    for raw, member in zip(document, members, strict=True):
        if isinstance(member, Invalid):
            plan.batch.append(member.response())
            continue
        closed = _closed(member)
        if closed is not None:
            if not member.is_notification:
                plan.batch.append(closed)
            continue
        if member.is_notification:
            forwarded.append(json_dumps(raw))
            continue
        frame = _forward(raw, member, plan, next_id, default_timeout_s)
        if isinstance(frame, Invalid):
            plan.batch.append(frame.response())
            continue
        forwarded.append(frame)
        plan.batch.append(None)
    if forwarded:
        plan.frame = b"[" + b",".join(forwarded) + b"]"
    return plan


def _forward(raw: dict[str, Any], call: Call, plan: Plan, next_id: Callable[[], int],
             default_timeout_s: float) -> bytes | Invalid:
    """``raw`` re-encoded under a new gateway id, which ``plan`` learns."""
    assert call.id_json is not None
    gateway_id = next_id()
    raw["id"] = gateway_id
    try:
        frame = json_dumps(raw)
    except orjson.JSONEncodeError as exc:   # orjson writes less nesting than it reads
        return Invalid(call.id_json, ErrorCode.INVALID_REQUEST,
                       f"Invalid Request: params cannot be forwarded: {exc}")
    plan.names[str(gateway_id).encode()] = call.id_json
    timeout_ms = call.options.timeout_ms
    plan.timeout_s = max(plan.timeout_s,
                         default_timeout_s if timeout_ms is None else timeout_ms / 1000)
    return frame


def _closed(call: Call) -> bytes | None:
    """The error answering a call to a method the gateway does not open, else None."""
    advice = CLOSED_METHODS.get(call.method)
    if advice is None:
        return None
    code = ErrorCode.FORBIDDEN if call.method in ("_drain", "_deploy") else \
        ErrorCode.INVALID_REQUEST
    prefix = "Forbidden" if code == ErrorCode.FORBIDDEN else "Invalid Request"
    return error_response(call.id_json or NULL, code,
                          f"{prefix}: {call.method} is not available over HTTP; {advice}")


# ------------------------------------------------------------------- the way back


def restore_id(response: bytes, names: dict[bytes, bytes]) -> bytes:
    """``response`` with the caller's id in place of the gateway id it carries."""
    start = len(PREFIX)
    if response.startswith(PREFIX):
        end = response.find(b",", start)
        original = names.get(response[start:end]) if end > 0 else None
        if original is not None:
            return PREFIX + original + response[end:]
    return _restore_parsed(response, names)


def _restore_parsed(response: bytes, names: dict[bytes, bytes]) -> bytes:
    """The slow way, for a response not built by :func:`madrpc.jsonrpc.response`."""
    try:
        document = orjson.loads(response)
    except orjson.JSONDecodeError:
        return response
    if isinstance(document, dict) and "id" in document:
        original = names.get(json_dumps(document["id"]))
        if original is not None:
            document["id"] = orjson.Fragment(original)
            return json_dumps(document)
    return response


_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])


def assemble_batch(plan: Plan, reply: bytes | None) -> bytes | None:
    """The answer to a batch: the gateway's own answers and the broker's ``reply`` (its
    array, in the order of the forwarded members), in the order of the body. None when
    nothing is to be answered (every member was a notification)."""
    assert plan.batch is not None
    answers: Iterable[bytes] = ()
    if reply is not None:
        try:
            answers = [restore_id(bytes(part), plan.names) for part in _RAW_LIST.decode(reply)]
        except msgspec.DecodeError:   # one error for the whole batch (the broker's --max-batch)
            return reply
    parts = iter(answers)
    assembled = [own if own is not None else next(parts, None) for own in plan.batch]
    present = [part for part in assembled if part is not None]
    return b"[" + b",".join(present) + b"]" if present else None


# ------------------------------------------------------------------------ streams


def is_partial(response: bytes) -> bool:
    """Whether ``response`` is a stream's partial reply (items), not its final answer."""
    end = response.find(b",", len(PREFIX))
    return end > 0 and response.startswith(_PARTIAL, end + 1)


class _Items(msgspec.Struct):
    items: list[msgspec.Raw]


class _Partial(msgspec.Struct):
    madrpc: _Items


_PARTIAL_DECODER = msgspec.json.Decoder(_Partial)


def partial_items(response: bytes) -> int:
    """How many items a partial reply carries (0 if it is malformed)."""
    try:
        return len(_PARTIAL_DECODER.decode(response).madrpc.items)
    except msgspec.DecodeError:
        return 0


def more_frame(gateway_id: bytes, count: int) -> bytes:
    """The ``_more`` notification acknowledging ``count`` items of a stream."""
    return b'{"jsonrpc":"2.0","method":"_more","params":{"id":' + gateway_id + \
        b',"n":' + str(count).encode() + b"}}"


def cancel_frame(gateway_ids: Iterable[bytes]) -> bytes | None:
    """``_cancel`` notifications for ``gateway_ids`` (one batch), or None if there are none."""
    parts = [b'{"jsonrpc":"2.0","method":"_cancel","params":{"id":' + gateway_id + b"}}"
             for gateway_id in gateway_ids]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"
