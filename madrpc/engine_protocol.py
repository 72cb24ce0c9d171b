"""The worker <-> engine protocol (internal): constants, encoders and parsers. Pure code.

Each V8 context lives in an engine process (:mod:`madrpc.engine`) that talks to its
worker over a socket pair (:mod:`madrpc.engine_channel`, :mod:`madrpc.engine_pool`).
docs/protocol.md §6 has the full table; in short::

  engine -> worker  READY <json {methods, v8, pid}>      context built, script loaded
                    LOADERR <text>                        the script failed to load
                    OUT <mode> <outbox> <slot>            a step (S) or a flush (F) ended
                    RESET <reason> <culprit> <outbox> <detail> <slot> <mode>
                                                          a step (S) or flush (F) was stopped,
                                                          context gone
  worker -> engine  STEP <payload> <slot> [<memory limit bytes>]
                    INTERRUPT <local> <slot>              stop that request's code if it runs
                    DROP <slot>   ABORT   STOP

A *slot* names a context: :data:`POOLED` (``b""``) for the shared one, the request's local
key (decimal) in fresh-context mode. A STEP's payload and the outbox it returns are the
formats of ``js/bootstrap.js``: :func:`encode_step_payload` writes one and
:func:`parse_outbox` reads the other.

The payload is one JSON object; the runtime handles its members in this order::

  "x": [local..]                          cancel these requests
  "p": [[js_call, [item..]]..]            items of the nested stream call js_call
  "s": [[js_call, {fragment}]..]          nested calls finished (a stream: its end)
  "r": [[local, deadline, cpu, depth, body]..]   start these requests
  "m": [[local, n]..]                     request local's stream may send n more items

The outbox is newline-separated lines, each parsed into one entry::

  R <local> <fragment>          Reply        a request finished ("result":.. / "error":..)
  C <js_call> <owner> <body>    NestedCall   madrpc.call / madrpc.stream made a call
  L <level> <owner> <json>      ConsoleLine  a console line [method, id, text]
  P <local> <count> <json>      Items        items of request local's stream (a JSON array
                                             of count items); all precede its R line
  M <js_call> <n>               StreamAck    the script took n more items of js_call
  X <js_call>                   Abandon      the script left its nested stream js_call early
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, NamedTuple

import orjson

from .errors import ProtocolError

__all__ = [
    "ABORT", "DROP", "INTERRUPT", "LOADERR", "OUT", "POOLED", "READY", "RESET", "STEP",
    "STOP", "Abandon", "ConsoleLine", "Drop", "EngineMessage", "Interrupt", "Items",
    "LoadError", "Mode", "NestedCall", "OutboxEntry", "Output",
    "Ready", "Reply", "Reset", "ResetReason", "Step", "StepEntry", "StreamAck", "WorkerCommand",
    "answered", "decode_engine_message", "decode_worker_command", "drop_message",
    "encode_step_payload", "interrupt_message",
    "load_error_message", "output_message", "parse_outbox", "ready_message", "reset_message",
    "step_message",
]

# engine -> worker
READY = b"READY"
LOADERR = b"LOADERR"
OUT = b"OUT"
RESET = b"RESET"
# worker -> engine
STEP = b"STEP"
INTERRUPT = b"INTERRUPT"
DROP = b"DROP"
ABORT = b"ABORT"
STOP = b"STOP"

POOLED = b""
"""The slot of the one shared (pooled) context, reused across requests."""


class Mode(Enum):
    """What an engine is running: its OUT messages carry STEP or FLUSH."""

    STEP = b"S"
    """A step the worker sent (STEP)."""
    FLUSH = b"F"
    """Collecting output of code that ran outside a step (timers)."""
    RECOVERING = b"R"
    """Collecting what finished before a termination; a RESET follows (never on the wire)."""


class ResetReason(StrEnum):
    """Why an engine stopped a step and dropped its context."""

    TIMEOUT = "timeout"
    """The watchdog terminated JavaScript that ran into its request's deadline."""
    CPU_LIMIT = "cpu"
    """The watchdog terminated JavaScript that used up its request's CPU limit."""
    CANCELLED = "cancelled"
    """The worker asked to stop the request running now (INTERRUPT)."""
    OUT_OF_MEMORY = "oom"
    ERROR = "error"
    """The step itself failed (a runtime bug or a broken payload)."""
    ABORTED = "aborted"
    """The worker sent ABORT (it dropped every request)."""


# ---------------------------------------------------------------- engine -> worker


@dataclass(frozen=True, slots=True)
class Ready:
    info: dict[str, Any]
    """``{"methods": [...], "v8": "...", "pid": n}``."""


@dataclass(frozen=True, slots=True)
class LoadError:
    message: str


@dataclass(frozen=True, slots=True)
class Output:
    step_done: bool
    """True at the end of a STEP; False after a flush (the engine ran no step for it)."""
    outbox: bytes
    slot: bytes


@dataclass(frozen=True, slots=True)
class Reset:
    reason: ResetReason
    culprit: int
    """The local key of the request to blame; 0 for none."""
    outbox: bytes
    """What finished before the stop."""
    detail: str
    slot: bytes
    step_done: bool = True
    """True when it ended a STEP; False when it ended a flush (steps the worker sent
    meanwhile are still queued in the engine, and run in the new context)."""


EngineMessage = Ready | LoadError | Output | Reset


def ready_message(info: dict[str, Any]) -> list[bytes]:
    return [READY, orjson.dumps(info)]


def load_error_message(text: str) -> list[bytes]:
    return [LOADERR, text.encode()]


def output_message(mode: Mode, outbox: bytes, slot: bytes) -> list[bytes]:
    return [OUT, mode.value, outbox, slot]


def reset_message(
    reason: ResetReason, culprit: int, outbox: bytes, detail: str, slot: bytes,
    mode: Mode = Mode.STEP,
) -> list[bytes]:
    return [RESET, reason.value.encode(), b"%d" % culprit, outbox, detail.encode(), slot,
            mode.value]


def decode_engine_message(frames: Sequence[bytes]) -> EngineMessage:
    """An engine's message (without the ROUTER's identity frame); ProtocolError if bad."""
    command = frames[0] if frames else b""
    try:
        if command == OUT and len(frames) == 4:
            return Output(frames[1] == Mode.STEP.value, frames[2], frames[3])
        if command == RESET and len(frames) == 7:
            return Reset(ResetReason(frames[1].decode()), int(frames[2]), frames[3],
                         frames[4].decode(errors="replace"), frames[5],
                         frames[6] != Mode.FLUSH.value)
        if command == READY and len(frames) == 2:
            info = orjson.loads(frames[1])
            if isinstance(info, dict):
                return Ready(info)
        if command == LOADERR:
            return LoadError(frames[1].decode(errors="replace") if len(frames) > 1 else "?")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed engine {command[:16]!r} message: {exc}") from exc
    raise ProtocolError(f"unknown engine message {command[:16]!r} ({len(frames)} frames)")


# ---------------------------------------------------------------- worker -> engine


@dataclass(frozen=True, slots=True)
class Step:
    slot: bytes
    payload: bytes
    memory_limit_bytes: int = 0
    """A lower heap limit for this step only; 0 for the engine's own."""


@dataclass(frozen=True, slots=True)
class Drop:
    slot: bytes


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Stop request ``local``'s JavaScript if it runs in ``slot`` now or later in this step
    (it was cancelled): the engine answers with RESET cancelled."""

    local: int
    slot: bytes


WorkerCommand = Step | Drop | Interrupt | bytes
"""A decoded worker command; ABORT and STOP (no body) stay their command bytes."""


def step_message(payload: bytes, slot: bytes, memory_limit_bytes: int = 0) -> list[bytes]:
    frames = [STEP, payload, slot]
    if memory_limit_bytes:
        frames.append(b"%d" % memory_limit_bytes)
    return frames


def drop_message(slot: bytes) -> list[bytes]:
    return [DROP, slot]


def interrupt_message(local: int, slot: bytes) -> list[bytes]:
    return [INTERRUPT, b"%d" % local, slot]


def decode_worker_command(frames: Sequence[bytes]) -> WorkerCommand | None:
    """The worker's command, or None for frames that are not one (ignored)."""
    command = frames[0] if frames else b""
    if command == STEP and len(frames) >= 2:
        slot = frames[2] if len(frames) > 2 else POOLED
        limit = int(frames[3]) if len(frames) > 3 and frames[3].isdigit() else 0
        return Step(slot, frames[1], limit)
    if command == DROP and len(frames) >= 2:
        return Drop(frames[1])
    if command == INTERRUPT and len(frames) == 3 and frames[1].isdigit():
        return Interrupt(int(frames[1]), frames[2])
    if command in (ABORT, STOP):
        return command
    return None


# ---------------------------------------------------------------- step payload and outbox


class StepEntry(NamedTuple):
    """A request a step starts (its ``r`` member)."""

    local: int
    deadline_ms: float
    """Wall clock (ms since the epoch), as ``Date.now()`` counts."""
    cpu_limit_ms: float
    depth: int
    body: bytes
    """The JSON-RPC request as received."""


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
                          (b'"r":[', [(b"[%d,%d,%d,%d," % e[:4], e[4], b"]") for e in starts]),
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


class Reply(NamedTuple):
    """``R <local> <fragment>``: a request finished."""

    local: int
    fragment: bytes
    """``"result":...`` or ``"error":{...}``."""


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
