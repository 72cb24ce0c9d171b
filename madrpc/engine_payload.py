"""The two formats of ``js/bootstrap.js`` a step carries (internal; pure code): the payload
the worker writes for a step (:func:`encode_step_payload`) and the outbox the engine returns
from it (:func:`parse_outbox`). :mod:`madrpc.engine_protocol` has the messages around them
and the table of both formats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

__all__ = [
    "Abandon", "ConsoleLine", "Items", "NestedCall", "OutboxEntry", "Reply", "StepEntry",
    "StreamAck", "answered", "encode_step_payload", "parse_outbox",
]



@dataclass(init=False, slots=True)
class StepEntry:
    """A request a step starts (its ``r`` member). One per request: its own ``__init__``
    (see :mod:`madrpc.native_modules`)."""

    local: int
    deadline_ms: float
    """Wall clock (ms since the epoch), as ``Date.now()`` counts."""
    cpu_limit_ms: float
    depth: int
    body: bytes
    """The JSON-RPC request as received."""

    def __init__(self, local: int, deadline_ms: float, cpu_limit_ms: float, depth: int,
                 body: bytes) -> None:
        self.local = local
        self.deadline_ms = deadline_ms
        self.cpu_limit_ms = cpu_limit_ms
        self.depth = depth
        self.body = body


def encode_step_payload(
    settles: Sequence[tuple[int, bytes]] = (),
    cancels: Sequence[int] = (),
    starts: Sequence[StepEntry] = (),
    grants: Sequence[tuple[int, int]] = (),
    feeds: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """``{"s": [[call, {fragment}]..], "x": [local..], "r": [[local, deadline, cpu, depth,
    body]..], "m": [[local, n]..], "p": [[call, items]..]}`` with empty members left out.
    Bodies, fragments and items (a JSON array each) are spliced in as they are (they are
    JSON already), with one copy in all: a 1 MiB body is copied once, not once per
    nesting level. The runtime's order (x, p, s, r, m) does not depend on this one."""
    pieces: list[bytes] = []
    for name, entries in ((b'"s":[', [(b"[%d,{" % c, f, b"}]") for c, f in settles]),
                          (b'"x":[', [(b"%d" % c,) for c in cancels]),
                          (b'"r":[', [(_start_prefix(e), e.body, b"]") for e in starts]),
                          (b'"m":[', [(b"[%d,%d]" % grant,) for grant in grants]),
                          (b'"p":[', [(b"[%d," % c, items, b"]") for c, items in feeds])):
        if not entries:
            continue
        pieces += (b"," if pieces else b"", name)
        for index, entry in enumerate(entries):
            if index:
                pieces.append(b",")
            pieces += entry
        pieces.append(b"]")
    return b"".join([b"{", *pieces, b"}"])


def _start_prefix(entry: StepEntry) -> bytes:
    """``[local,deadline,cpu,depth,`` (whole milliseconds): an f-string, which compiles to
    plain C, where ``bytes % tuple`` goes through Python's generic formatting."""
    return (f"[{entry.local},{int(entry.deadline_ms)},{int(entry.cpu_limit_ms)},"
            f"{entry.depth},").encode()


@dataclass(init=False, slots=True)
class Reply:
    """``R <local> <fragment>``: a request finished. One per request: its own ``__init__``
    (see :mod:`madrpc.native_modules`)."""

    local: int
    fragment: bytes
    """``"result":...`` or ``"error":{...}``."""

    def __init__(self, local: int, fragment: bytes) -> None:
        self.local = local
        self.fragment = fragment


class NestedCall(NamedTuple):
    """``C <call> <owner> <body>``: a request's code called ``madrpc.call``."""

    js_call: int
    owner: int
    """The local key of the request that made it; 0 for code outside any request."""
    body: bytes


class ConsoleLine(NamedTuple):
    """``L <level> <owner> <json>``: a console line, ``[method, id, text]``."""

    level: str
    owner: int
    text: bytes

    def decode(self) -> tuple[str, str, Any, str]:
        """(level, method, request id, text); a line that is not the JSON triple is text."""
        try:
            method, request_id, message = orjson.loads(self.text)
        except (ValueError, TypeError):
            method, request_id, message = "", None, self.text.decode(errors="replace")
        return self.level, str(method), request_id, str(message)


class Items(NamedTuple):
    """``P <local> <count> <json>``: items of request ``local``'s stream, ahead of its reply."""

    local: int
    count: int  # type: ignore[assignment]  # the field hides tuple.count, unused here
    """How many items ``items`` holds."""
    items: bytes
    """A JSON array of ``count`` items."""


class StreamAck(NamedTuple):
    """``M <js_call> <n>``: the script took ``n`` more items of its nested stream call."""

    js_call: int
    n: int


class Abandon(NamedTuple):
    """``X <js_call>``: the script left its nested stream call early (it wants no more)."""

    js_call: int


OutboxEntry = Reply | NestedCall | ConsoleLine | Items | StreamAck | Abandon


def parse_outbox(outbox: bytes) -> Iterator[OutboxEntry]:
    """The entries of an outbox in order; unknown lines are skipped. The long field of a
    line (a fragment, items, a body) is sliced from the outbox once, not split twice."""
    position, size = 0, len(outbox)
    while position < size:
        end = outbox.find(b"\n", position)
        if end < 0:
            end = size
        kind = outbox[position:position + 1]
        if kind == b"R":
            local, fragment = _fields(outbox, position, end, 1)
            yield Reply(int(local[0]), fragment)
        elif kind == b"P":
            numbers, items = _fields(outbox, position, end, 2)
            yield Items(int(numbers[0]), int(numbers[1]), items)
        elif kind == b"C":
            numbers, body = _fields(outbox, position, end, 2)
            yield NestedCall(int(numbers[0]), int(numbers[1]), body)
        elif kind == b"L":
            words, text = _fields(outbox, position, end, 2)
            yield ConsoleLine(words[0].decode(), int(words[1]), text)
        elif kind == b"M":
            numbers, n = _fields(outbox, position, end, 1)
            yield StreamAck(int(numbers[0]), int(n))
        elif kind == b"X":
            _, js_call = _fields(outbox, position, end, 0)
            yield Abandon(int(js_call))
        position = end + 1


def _fields(outbox: bytes, start: int, end: int, count: int) -> tuple[list[bytes], bytes]:
    """The ``count`` short space-separated fields after a line's kind letter, and the
    rest of the line (sliced once)."""
    fields = []
    position = start + 2
    for _ in range(count):
        space = outbox.index(b" ", position, end)
        fields.append(outbox[position:space])
        position = space + 1
    return fields, outbox[position:end]


def answered(outbox: bytes, slot: bytes) -> bool:
    """Whether ``outbox`` holds the reply of the request whose fresh context is ``slot``
    (its R line; the P lines of its stream do not count: they come before it)."""
    line = b"R " + slot + b" "
    return outbox.startswith(line) or b"\n" + line in outbox
