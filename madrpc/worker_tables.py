"""The rows of a worker's tables: its requests and its engine slots. Pure data with the
small transitions that touch one row only."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from .engine_protocol import ResetReason
from .errors import ErrorCode

__all__ = [
    "STREAM_MARK", "EngineSlot", "LocalRequest", "Stage", "StepInput", "asks_for_stream",
    "madrpc_options",
]

STREAM_MARK = b'"stream":'
"""Bodies without it do not ask for a stream (a cheap test before anything else). Looked for
with ``rfind``: clients put their ``madrpc`` options last, after the params; and ``mark in
body`` would first try the mark as an integer, building and dropping a TypeError (~1 µs)."""


class Stage(Enum):
    QUEUED = "queued"
    """Waiting for an engine."""
    RUNNING = "running"
    """In the step an engine is running now."""
    PARKED = "parked"
    """Started, now awaiting nested calls or timers: it holds no engine and no credit."""


@dataclass(init=False, slots=True)
class LocalRequest:
    """One request the worker holds. One is built per request, so it writes its own
    ``__init__`` (see :mod:`madrpc.native_modules`)."""

    local: int
    """The worker's own key for it (the engines' key, in step payloads and outboxes)."""
    key: bytes
    """The broker's key for it."""
    method: str
    body: bytes
    deadline_ms: float
    """Wall-clock deadline (ms since the epoch), as JavaScript's Date.now() counts."""
    cpu_limit_ms: float
    depth: int
    received_at: float
    memory_mb: int
    """A lower heap limit the request asked for (0: the worker's); it then runs alone."""
    stage: Stage
    engine: int | None
    holds_credit: bool
    cancelled: bool
    resets: int
    """Times its context was lost while it ran (it then runs again from the start)."""
    solo: bool
    """Run it in a step of its own (a lowered memory limit, or a suspect in a crash)."""
    stream_asked: bool | None
    """Whether its client asked for a stream of its items; None until :meth:`is_stream`
    first reads the body."""
    items_sent: int
    """Stream items sent so far: once there are some, it is never run again from the start."""
    granted: int
    """Grants (MORE) that came before it started, handed to its first step."""

    def __init__(
        self, local: int, key: bytes, method: str, body: bytes, deadline_ms: float,
        cpu_limit_ms: float, depth: int, received_at: float, memory_mb: int = 0,
        solo: bool = False,
    ) -> None:
        self.local = local
        self.key = key
        self.method = method
        self.body = body
        self.deadline_ms = deadline_ms
        self.cpu_limit_ms = cpu_limit_ms
        self.depth = depth
        self.received_at = received_at
        self.memory_mb = memory_mb
        self.stage = Stage.QUEUED
        self.engine = None
        self.holds_credit = True
        self.cancelled = False
        self.resets = 0
        self.solo = solo
        self.stream_asked = None
        self.items_sent = 0
        self.granted = 0

    def is_stream(self) -> bool:
        """Whether its client asked for a stream of its items (``madrpc.stream`` in its
        body). Read from the body the first time it matters (a grant, a lost broker), not
        on arrival: finding the mark costs a scan of the whole body, ~0.45 ms for 1 MiB of
        params."""
        if self.stream_asked is None:
            self.stream_asked = asks_for_stream(self.body)
        return self.stream_asked

    def stopped_by(self, reason: str, detail: str, max_memory_mb: int) -> tuple[int, str] | None:
        """(code, message) of the error it gets for having made its engine stop a step;
        None when the reason is not its own doing."""
        if reason == ResetReason.CPU_LIMIT:
            return ErrorCode.CPU_LIMIT, (f"CPU limit exceeded: JavaScript used "
                                         f"{self.cpu_limit_ms:.0f} ms of CPU in all ({detail})")
        if reason == ResetReason.TIMEOUT:
            return ErrorCode.TIMEOUT, (f"Timeout: the request's deadline passed while its "
                                       f"JavaScript ran ({detail})")
        if reason == ResetReason.OUT_OF_MEMORY:
            limit_mb = self.memory_mb or max_memory_mb
            return ErrorCode.OUT_OF_MEMORY, (f"Out of memory: the request exceeded the context "
                                             f"memory limit ({limit_mb} MiB)")
        return None


def asks_for_stream(body: bytes) -> bool:
    """Whether a request body asks for a stream (``madrpc.stream`` true or an object);
    parsed only when the body mentions one."""
    stream = madrpc_options(body, STREAM_MARK).get("stream")
    return stream is True or isinstance(stream, dict)


def madrpc_options(body: bytes, mark: bytes) -> dict[str, Any]:
    """A request body's ``madrpc`` member, parsed only when the body holds ``mark``
    (found with ``rfind``, see :data:`STREAM_MARK`); ``{}`` when it is absent or not an
    object, or the body is not JSON."""
    if body.rfind(mark) < 0:
        return {}
    try:
        options = orjson.loads(body).get("madrpc")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return options if isinstance(options, dict) else {}


Settle = tuple[int, bytes]
"""(JS call id, result fragment) of a nested call, for the next step."""
Feed = tuple[int, bytes]
"""(JS call id, JSON array of items) of a nested stream, for the next step."""
Grant = tuple[int, int]
"""(local key, items) a request's stream may send more, for the next step."""


@dataclass(init=False, slots=True)
class StepInput:
    """What waits for a context's next step besides new requests (one per step: its own
    ``__init__``, see :mod:`madrpc.native_modules`)."""

    settles: list[Settle]
    cancels: list[int]
    """Local keys of cancelled parked requests to drop."""
    feeds: list[Feed]
    grants: list[Grant]

    def __init__(
        self, settles: list[Settle] | None = None, cancels: list[int] | None = None,
        feeds: list[Feed] | None = None, grants: list[Grant] | None = None,
    ) -> None:
        self.settles = settles if settles is not None else []
        self.cancels = cancels if cancels is not None else []
        self.feeds = feeds if feeds is not None else []
        self.grants = grants if grants is not None else []


@dataclass
class EngineSlot:
    """One engine process (one V8 context, or one per request in fresh-context mode)."""

    index: int
    identity: bytes = b""
    ready: bool = False
    busy: bool = False
    """Running a step now (one at a time)."""
    queued: list[int] | None = None
    """Local keys of the step sent while it was busy (pooled engines only): the engine
    starts it the moment the running step ends. None when no step is queued."""
    queued_methods: set[str] = field(default_factory=set)
    step_estimate_s: float = 0.0
    """How long the running step should take, from its methods' mean run times (inf when
    one is unknown)."""
    queued_estimate_s: float = 0.0
    retiring: bool = False
    """Replaced by a newer engine (script reload): finishes what it holds, takes nothing new."""
    generation: int = 0
    """Bumped whenever its contexts are lost: results for an older generation are moot."""
    restarts: int = 0
    step_requests: list[int] = field(default_factory=list)
    step_methods: set[str] = field(default_factory=set)
    step_started: float = 0.0
    held: set[int] = field(default_factory=set)
    """Local keys of the requests started in its contexts and not finished."""
    inputs: dict[bytes, StepInput] = field(default_factory=dict)
    """Nested-call results, cancellations, stream items and grants waiting for the next
    step, by context slot."""
    served: int = 0

    @property
    def idle(self) -> bool:
        return self.ready and not self.busy

    def can_queue(self, max_wait_s: float) -> bool:
        """Busy with a step that should end within ``max_wait_s``, with no step queued
        and no input waiting: a step sent now would start with no gap."""
        return (self.ready and self.busy and self.queued is None and not self.retiring
                and not self.inputs and self.step_estimate_s <= max_wait_s)

    @property
    def has_input(self) -> bool:
        """Something waits for a step."""
        return bool(self.inputs)

    @property
    def drained(self) -> bool:
        """Retiring and holding nothing any more: safe to stop."""
        return self.retiring and not self.busy and not self.held and not self.inputs

    def _input(self, slot: bytes) -> StepInput:
        waiting = self.inputs.get(slot)
        if waiting is None:
            waiting = self.inputs[slot] = StepInput()
        return waiting

    def settle(self, slot: bytes, js_call: int, fragment: bytes) -> None:
        self._input(slot).settles.append((js_call, fragment))

    def cancel(self, slot: bytes, local: int) -> None:
        self._input(slot).cancels.append(local)

    def feed(self, slot: bytes, js_call: int, items: bytes) -> None:
        self._input(slot).feeds.append((js_call, items))

    def grant(self, slot: bytes, local: int, items: int) -> None:
        self._input(slot).grants.append((local, items))

    def input_slot(self) -> bytes:
        """A context slot with input waiting."""
        return next(iter(self.inputs), b"")

    def take_input(self, slot: bytes) -> StepInput:
        """What waits for ``slot``, now handed to a step."""
        return self.inputs.pop(slot, None) or StepInput()

    def forget_input(self, slot: bytes) -> None:
        """The slot's context goes (fresh-context mode): nothing more for it."""
        self.inputs.pop(slot, None)

    def begin_step(self, requests: list[LocalRequest], now: float,
                   estimate_s: float = float("inf")) -> None:
        """A step starts (or, while busy, is queued behind the running one)."""
        for request in requests:
            request.stage = Stage.RUNNING
            request.engine = self.index
            self.held.add(request.local)
        if self.busy:
            self.queued = [r.local for r in requests]
            self.queued_methods = {r.method for r in requests}
            self.queued_estimate_s = estimate_s
            return
        self.busy = True
        self.step_requests = [r.local for r in requests]
        self.step_methods = {r.method for r in requests}
        self.step_started = now
        self.step_estimate_s = estimate_s

    def end_step(self, now: float) -> list[int]:
        """The running step is over: the local keys it started. A queued step starts."""
        ran = self.step_requests
        if self.queued is not None:
            self.step_requests, self.queued = self.queued, None
            self.step_methods = self.queued_methods
            self.step_estimate_s = self.queued_estimate_s
            self.step_started = now
        else:
            self.busy = False
            self.step_requests = []
        return ran

    def forget_steps(self) -> list[int]:
        """The process is gone with the steps it was sent: the local keys of the queued
        one (which never started)."""
        unstarted = self.queued or []
        self.busy = False
        self.step_requests = []
        self.queued = None
        return unstarted

    def lose_contexts(self) -> list[int]:
        """Its contexts are gone (reset, crash, retirement): a new generation begins.
        Returns what it held, newest first, except the steps the engine still has to run
        (a step or a queued step it was sent: they run in the new context)."""
        self.generation += 1
        self.inputs = {}
        pending = set(self.step_requests) | set(self.queued or [])
        lost = sorted(self.held - pending, reverse=True)
        self.held &= pending
        return lost
