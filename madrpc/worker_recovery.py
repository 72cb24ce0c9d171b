"""A worker's recovery transitions (pure, like worker_state).

What happens when an engine's context is reset (watchdog, memory limit) or its process
dies, and when the broker is lost: requests are failed (the culprit), run again (the
others), handed over to a new broker run (ADOPT), or dropped when the same broker
re-dispatched them. Each function takes the :class:`~madrpc.worker_state.WorkerState`
it changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from . import protocol as p
from .errors import ErrorCode
from .worker_tables import EngineSlot, LocalRequest, Stage

if TYPE_CHECKING:
    from .worker_state import WorkerState

__all__ = [
    "KEY_MARK", "MAX_ENGINE_RESETS", "RECENT_RESULTS_S", "abandon_all", "adoption_frames",
    "drop_all", "idempotency_key", "on_broker_lost", "on_engine_died", "on_engine_reset",
    "recover", "resend_calls",
]

MAX_ENGINE_RESETS = 3
"""Engine resets a request may live through before it fails instead of running again."""
RECENT_RESULTS_S = 30.0
"""How long results of keyed requests are kept to hand to a restarted broker."""

def on_engine_reset(
    state: WorkerState, index: int, reason: str, culprit: int, outbox: bytes, detail: str,
    now: float, slot: bytes = b"",
) -> None:
    """The engine stopped a step (watchdog, memory limit, error) and dropped the slot's
    context; what ran in that context is failed (the culprit) or requeued."""
    engine = state.engines[index]
    state._read_outbox(engine, outbox, now, slot)
    request = state.requests.get(culprit) if culprit else None
    if request is not None:
        if reason == "timeout":
            message = f"Timeout: JavaScript terminated after running too long ({detail})"
            state._fail(request, ErrorCode.TIMEOUT, message, now)
        elif reason == "oom":
            limit_mb = request.memory_mb or state.config.max_memory_mb
            message = (
                f"Out of memory: the request exceeded the context memory limit "
                f"({limit_mb} MiB)"
            )
            state._fail(request, ErrorCode.OUT_OF_MEMORY, message, now)
    if reason == "error":
        for local in list(engine.step_requests):
            failed = state.requests.get(local)
            if failed is not None:
                state._fail(failed, ErrorCode.INTERNAL_ERROR, f"Internal error: {detail}", now)
    if state.fresh:   # only that request's own context is gone
        lost = state.requests.get(int(slot)) if slot else None
        if lost is not None:
            _requeue(state, lost, now, solo=False)
        engine.busy = False
        engine.step_requests = []
        _count_restart(state, engine)
    else:
        recover(state, engine, now, solo=False)
    engine.ready = True


def on_engine_died(
    state: WorkerState, index: int, detail: str, oom_likely: bool, now: float
) -> None:
    """The engine process exited; blame the request it ran alone, requeue the rest."""
    engine = state.engines[index]
    suspects = [local for local in engine.step_requests if local in state.requests]
    if engine.busy and len(suspects) == 1:
        request = state.requests[suspects[0]]
        code = ErrorCode.OUT_OF_MEMORY if oom_likely else ErrorCode.WORKER_LOST
        name = "Out of memory" if oom_likely else "Worker lost"
        state._fail(request, code, f"{name}: the engine process died running it ({detail})", now)
    recover(state, engine, now, solo=True)
    engine.ready = False


def _count_restart(state: WorkerState, engine: EngineSlot) -> None:
    state.engine_restarts += 1
    engine.restarts += 1


def recover(
    state: WorkerState, engine: EngineSlot, now: float, solo: bool, restart: bool = True
) -> None:
    """Requeue what the engine held (its contexts are gone) and start a new generation."""
    if restart:
        _count_restart(state, engine)
    engine.generation += 1
    engine.busy = False
    engine.step_requests = []
    engine.settles = {}
    engine.cancels = {}
    for local in sorted(engine.held, reverse=True):
        request = state.requests.get(local)
        if request is not None:
            _requeue(state, request, now, solo)
    engine.held.clear()


def _requeue(state: WorkerState, request: LocalRequest, now: float, solo: bool) -> None:
    """Run a request again from the start (its context was lost), a bounded number of times."""
    engine = state.engines.get(request.engine) if request.engine is not None else None
    if engine is not None:
        engine.held.discard(request.local)
    request.resets += 1
    request.engine = None
    if request.resets > MAX_ENGINE_RESETS:
        state._fail(
            request, ErrorCode.WORKER_LOST,
            f"Worker lost: its context was reset {request.resets} times while it ran", now,
        )
        return
    request.stage = Stage.QUEUED
    request.solo = request.solo or solo
    state.queue.appendleft(request.local)


def on_broker_lost(state: WorkerState) -> None:
    """The broker went silent: keep running what we hold; unsent messages are moot."""
    state._replies = []
    state._calls_out = []
    state.credit_to_return = 0
    holding = sum(1 for r in state.requests.values() if r.holds_credit)
    state.issued = state.config.initial_credit + holding


def adoption_frames(state: WorkerState, wall_ms: float, now: float) -> list[bytes]:
    """ADOPT body for a new broker: what we still hold, and keyed results it may lack."""
    frames: list[bytes] = []
    for request in state.requests.values():
        if request.cancelled:
            continue
        frames += [
            p.encode_adopt_meta(request.key, request.deadline_ms - wall_ms, request.depth),
            request.method.encode(),
            (idempotency_key(request.body) or "").encode(),
            b"",
        ]
    for key, (method, body, fragment, when) in state.recent.items():
        client_key = idempotency_key(body)
        if client_key is not None and now - when <= RECENT_RESULTS_S:
            frames += [p.encode_adopt_meta(key, 0, 0), method.encode(),
                       client_key.encode(), fragment]
    return frames


def resend_calls(state: WorkerState) -> None:
    """Nested calls still awaiting results go to the new broker again (same keys)."""
    for meta, body in state.call_bodies.values():
        state._calls_out += [meta, body]


def abandon_all(state: WorkerState) -> list[int]:
    """The broker declared us dead and re-dispatched what we held: drop it all.
    Returns the engines running a step (to abort)."""
    busy = [e.index for e in state.engines.values() if e.busy]
    drop_all(state)
    state.recent.clear()
    state.call_bodies.clear()
    return busy


def drop_all(state: WorkerState) -> None:
    """Forget every request (the broker that sent them is gone)."""
    for request in list(state.requests.values()):
        request.cancelled = True
        if request.stage is Stage.PARKED:
            state._cancel_in_engine(request)
    state.requests.clear()
    state.by_key.clear()
    state.queue.clear()
    for engine in state.engines.values():
        engine.held.clear()
    state.calls.clear()
    state._replies = []
    state._calls_out = []
    state.credit_to_return = 0
    state.issued = state.config.initial_credit


KEY_MARK = b'"idempotency_key"'
"""Bodies without it have no idempotency key (a cheap test before parsing)."""


def idempotency_key(body: bytes) -> str | None:
    """The request's ``madrpc.idempotency_key`` (parsed only when the body mentions one)."""
    if KEY_MARK not in body:
        return None
    try:
        options = orjson.loads(body).get("madrpc")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    key = options.get("idempotency_key") if isinstance(options, dict) else None
    return key if isinstance(key, str) else None
