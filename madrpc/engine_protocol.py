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
formats of ``js/bootstrap.js``, which :mod:`madrpc.engine_payload` writes and reads.

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

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import orjson

from .errors import ProtocolError

__all__ = [
    "ABORT", "DROP", "INTERRUPT", "LOADERR", "OUT", "POOLED", "READY", "RESET", "STEP",
    "STOP", "Drop", "EngineMessage", "Interrupt", "LoadError", "Mode", "Output", "Ready",
    "Reset", "ResetReason", "Step", "WorkerCommand", "decode_engine_message",
    "decode_worker_command", "drop_message", "interrupt_message", "load_error_message",
    "output_message", "ready_message", "reset_message", "step_message",
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


@dataclass(init=False, slots=True)
class Output:
    """One per step: its own ``__init__`` (see :mod:`madrpc.native_modules`)."""

    step_done: bool
    """True at the end of a STEP; False after a flush (the engine ran no step for it)."""
    outbox: bytes
    slot: bytes

    def __init__(self, step_done: bool, outbox: bytes, slot: bytes) -> None:
        self.step_done = step_done
        self.outbox = outbox
        self.slot = slot


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
