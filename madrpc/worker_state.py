"""A worker's tables and transitions. Pure: decoded messages and ``now`` in, frames out.

The worker holds requests the broker sent (up to its credit), hands them to its engines
(one V8 context each, in its own process) in batches, and turns what the engines write
(replies, nested calls, console lines) into messages for the broker.

Credit: a request holds one unit of the worker's credit from the moment the broker sends
it until it finishes *or parks* (awaits nested calls); then the unit goes back to the
broker with the next REPLY or CREDIT, so a fan-out never starves the grid of workers.
The total issued follows the work: ``contexts x (1 + prefetch)`` while requests are quick
(so they arrive in batches), ``contexts x 2`` while they are slow (so no worker hoards
long jobs); units are withheld or added as the mean run time crosses the threshold.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any

import orjson

from . import protocol as p
from . import worker_recovery
from .config import WorkerConfig
from .errors import ErrorCode
from .jsonrpc import error_fragment, fragment_error_code
from .metrics import CallStats, RateMeter
from .worker_recovery import RECENT_RESULTS_S
from .worker_tables import EngineSlot, LocalRequest, Stage

__all__ = ["EngineSlot", "LocalRequest", "WorkerState"]

log = logging.getLogger(__name__)

NO_PARENT = bytes(8)
EWMA_WEIGHT = 0.2
"""Weight of the newest sample in a method's mean run time."""
MAX_RECENT_RESULTS = 10_000
ENVELOPE_BYTES = 1024
"""Room kept for what the broker wraps around a frame (id, jsonrpc) within the size limit."""


class WorkerState:
    """Everything a worker knows about its requests and engines."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.engines: dict[int, EngineSlot] = {}
        self._next_slot = 0
        self.requests: dict[int, LocalRequest] = {}
        self.by_key: dict[bytes, int] = {}
        self.queue: deque[int] = deque()
        self.fresh = config.fresh_context
        self.calls: dict[int, tuple[int, int, int, bytes]] = {}
        """Nested call key -> (engine index, engine generation, JS call id, context slot)."""
        self.method_time_s: dict[str, float] = {}
        self.recent_run_s: float | None = None
        """Mean run time of recent requests (EWMA), whatever their method."""
        self.issued = config.initial_credit
        """Credit units granted to the broker and not yet withheld."""
        self.credit_to_return = 0
        self._next_local = 1
        self._next_call = 1
        self._replies: list[bytes] = []
        self._calls_out: list[bytes] = []
        self._engine_out: list[tuple[int, list[bytes]]] = []
        self.logs: list[tuple[str, str, Any, str]] = []
        """(level, method, request id, text) of console lines, for the worker's log."""
        self.draining = False
        self.recent: OrderedDict[bytes, tuple[str, bytes, bytes, float]] = OrderedDict()
        """Broker key -> (method, request body, fragment, when) of finished keyed requests,
        kept for a restarted broker (their replies may have died with the old one). The
        key is read from the body only then, never on the per-request path."""
        self.call_bodies: dict[int, tuple[bytes, bytes]] = {}
        """Nested calls awaiting their result: call key -> (CALL meta, body), to send again
        after a broker restart."""
        # figures for heartbeats
        self.methods: dict[str, CallStats] = {}
        self.rate = RateMeter()
        self.completed = 0
        self._rated = 0
        self.engine_restarts = 0

    # ================================================================ engine slots

    def add_engine(self) -> int:
        """A new engine slot (its process reports READY later)."""
        index = self._next_slot
        self._next_slot += 1
        self.engines[index] = EngineSlot(index)
        return index

    def retire_engine(self, index: int) -> None:
        self.engines[index].retiring = True

    def idle_retired(self) -> list[int]:
        """Retiring engines that hold nothing any more: safe to stop."""
        return [
            e.index for e in self.engines.values()
            if e.retiring and not e.busy and not e.held and not e.settles
        ]

    def remove_engine(self, index: int, now: float) -> None:
        engine = self.engines.get(index)
        if engine is None:
            return
        worker_recovery.recover(self, engine, now, solo=False, restart=False)
        del self.engines[index]

    # ================================================================ from the broker

    def on_requests(self, frames: list[bytes], now: float, wall_ms: float) -> None:
        for i in range(0, len(frames), 3):
            meta = p.decode_request_meta(frames[i])
            local = self._next_local
            self._next_local += 1
            cpu_limit_ms = self.config.cpu_limit_s * 1000
            if meta.cpu_limit_ms:
                cpu_limit_ms = min(cpu_limit_ms, meta.cpu_limit_ms)
            memory_mb = 0
            if 0 < meta.memory_mb < self.config.max_memory_mb:
                memory_mb = meta.memory_mb
            request = LocalRequest(
                local, meta.key, frames[i + 1].decode(errors="replace"), frames[i + 2],
                wall_ms + meta.timeout_ms, cpu_limit_ms, meta.depth, now, memory_mb,
                solo=memory_mb > 0,
            )
            self.requests[local] = request
            self.by_key[meta.key] = local
            self.queue.append(local)

    def on_results(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for call_key, fragment in pairs:
            number = p.decode_key(call_key)
            self.call_bodies.pop(number, None)
            entry = self.calls.pop(number, None)
            if entry is None:
                continue
            index, generation, js_call, slot = entry
            engine = self.engines.get(index)
            if engine is None or engine.generation != generation:
                continue
            if self.fresh and int(slot) not in self.requests:
                continue   # that request (and its context) is gone
            engine.settles.setdefault(slot, []).append((js_call, fragment))

    def on_cancels(self, keys: list[bytes]) -> None:
        for key in keys:
            local = self.by_key.get(key)
            request = self.requests.get(local) if local is not None else None
            if request is None:
                continue
            request.cancelled = True
            if request.stage is Stage.QUEUED:
                self._forget(request)
            elif request.stage is Stage.PARKED:
                self._cancel_in_engine(request)
                self._forget(request)
            # RUNNING: the engine's watchdog stops it at its deadline; its reply is dropped.

    def slot_of(self, request: LocalRequest) -> bytes:
        """The context a request runs in: its own in fresh-context mode, else the shared one."""
        return b"%d" % request.local if self.fresh else b""

    def _cancel_in_engine(self, request: LocalRequest) -> None:
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is None:
            return
        slot = self.slot_of(request)
        if self.fresh:
            engine.settles.pop(slot, None)
            self._engine_out.append((engine.index, [b"DROP", slot]))
        else:
            engine.cancels.setdefault(slot, []).append(request.local)

    def _forget(self, request: LocalRequest) -> None:
        self.requests.pop(request.local, None)
        self.by_key.pop(request.key, None)
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is not None:
            engine.held.discard(request.local)
        self._release_credit(request)

    def _release_credit(self, request: LocalRequest) -> None:
        if request.holds_credit:
            request.holds_credit = False
            if self.draining or self.issued > self.target_credit:
                self.issued -= 1
            else:
                self.credit_to_return += 1

    @property
    def free_credit(self) -> int:
        """Credit not taken by a request we hold (what READY announces)."""
        return self.issued - sum(1 for r in self.requests.values() if r.holds_credit)

    @property
    def target_credit(self) -> int:
        """How much credit the broker should hold for this worker, given recent run times."""
        contexts = sum(1 for e in self.engines.values() if not e.retiring) or 1
        quick = (
            self.recent_run_s is not None
            and self.recent_run_s * 1000 < self.config.batch_threshold_ms
        )
        return contexts * (1 + (self.config.prefetch if quick else 1))

    def _top_up_credit(self) -> None:
        target = self.target_credit
        if not self.draining and self.issued < target:
            self.credit_to_return += target - self.issued
            self.issued = target

    # ================================================================ scheduling

    def schedule(self, now: float, wall_ms: float) -> None:
        """Start a step on every idle engine that has something to do."""
        idle = [e for e in self.engines.values() if e.ready and not e.busy]
        idle.sort(key=lambda e: (e.retiring, len(e.held)))
        for engine in idle:
            if self.fresh and (engine.settles or engine.cancels):
                self._start_step(engine, [], now)   # resume one parked request
                continue
            batch = self._take_batch() if self.queue and not engine.retiring else []
            if not batch and not engine.settles and not engine.cancels:
                continue
            self._start_step(engine, batch, now)

    def _estimate_s(self, method: str) -> float | None:
        return self.method_time_s.get(method)

    def _take_batch(self) -> list[LocalRequest]:
        """Requests for one step: the oldest, plus quick ones after it (see batch_threshold_ms)."""
        batch: list[LocalRequest] = []
        threshold_s = self.config.batch_threshold_ms / 1000
        spent = 0.0
        queue = self.queue
        while queue and len(batch) < self.config.max_batch:
            request = self.requests.get(queue[0])
            if request is None or request.stage is not Stage.QUEUED:
                queue.popleft()
                continue
            estimate = self._estimate_s(request.method)
            quick = (
                estimate is not None and estimate < threshold_s and not request.solo
                and not self.fresh
            )
            if batch and (not quick or spent + (estimate or 0.0) > threshold_s):
                break
            queue.popleft()
            batch.append(request)
            spent += estimate or 0.0
            if not quick:
                break
        return batch

    def _start_step(self, engine: EngineSlot, batch: list[LocalRequest], now: float) -> None:
        """One step: the settles and cancels of one context slot, then new requests."""
        if batch:
            slot = self.slot_of(batch[0])
        else:
            slot = next(iter(engine.settles), None) or next(iter(engine.cancels), b"")
        parts: list[bytes] = []
        settles = engine.settles.pop(slot, None)
        if settles:
            parts.append(b'"s":[' + b",".join(b"[%d,{%b}]" % (c, f) for c, f in settles) + b"]")
        cancels = engine.cancels.pop(slot, None)
        if cancels:
            parts.append(b'"x":[' + b",".join(b"%d" % c for c in cancels) + b"]")
        if batch:
            entries = []
            for request in batch:
                request.stage = Stage.RUNNING
                request.engine = engine.index
                engine.held.add(request.local)
                entries.append(
                    b"[%d,%d,%d,%d,%b]" % (
                        request.local, request.deadline_ms, request.cpu_limit_ms,
                        request.depth, request.body,
                    )
                )
            parts.append(b'"r":[' + b",".join(entries) + b"]")
        engine.busy = True
        engine.step_requests = [r.local for r in batch]
        engine.step_methods = {r.method for r in batch}
        engine.step_started = now
        frames = [b"STEP", b"{" + b",".join(parts) + b"}", slot]
        if len(batch) == 1 and batch[0].memory_mb:
            frames.append(b"%d" % (batch[0].memory_mb * 1024 * 1024))
        self._engine_out.append((engine.index, frames))

    # ================================================================ from engines

    def on_engine_ready(self, index: int, identity: bytes) -> None:
        engine = self.engines[index]
        engine.identity = identity
        engine.ready = True
        engine.busy = False

    def on_engine_output(
        self, index: int, step_done: bool, outbox: bytes, now: float, slot: bytes = b""
    ) -> None:
        engine = self.engines[index]
        self._read_outbox(engine, outbox, now, slot)
        if step_done:
            self._end_step(engine, now)

    def _end_step(self, engine: EngineSlot, now: float) -> None:
        ran = engine.step_requests
        if ran:
            per_request = (now - engine.step_started) / len(ran)
            for local in ran:
                request = self.requests.get(local)
                if request is None or request.stage is not Stage.RUNNING:
                    continue
                if request.cancelled:   # cancelled while it ran: drop it from the context
                    self._cancel_in_engine(request)
                    self._forget(request)
                else:
                    request.stage = Stage.PARKED   # awaiting nested calls or timers
                    self._release_credit(request)
            self._learn(engine.step_methods, per_request)
        engine.busy = False
        engine.step_requests = []

    def _learn(self, methods: set[str], per_request_s: float) -> None:
        """Update each method's mean run time (used to decide what may be batched)."""
        recent = self.recent_run_s
        self.recent_run_s = (
            per_request_s if recent is None else recent + EWMA_WEIGHT * (per_request_s - recent)
        )
        for method in methods:
            old = self.method_time_s.get(method)
            self.method_time_s[method] = (
                per_request_s if old is None else old + EWMA_WEIGHT * (per_request_s - old)
            )

    def _read_outbox(
        self, engine: EngineSlot, outbox: bytes, now: float, slot: bytes = b""
    ) -> None:
        if not outbox:
            return
        for line in outbox.split(b"\n"):
            kind = line[:1]
            if kind == b"R":
                _, local, fragment = line.split(b" ", 2)
                self._complete(int(local), fragment, now)
            elif kind == b"C":
                _, js_call, owner, body = line.split(b" ", 3)
                self._nested_call(engine, int(js_call), int(owner), body, slot)
            elif kind == b"L":
                _, level, _owner, text = line.split(b" ", 3)
                self._console(level.decode(), text)

    def _complete(self, local: int, fragment: bytes, now: float) -> None:
        request = self.requests.pop(local, None)
        if request is None:
            return
        self.by_key.pop(request.key, None)
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is not None:
            engine.held.discard(local)
            engine.served += 1
        self._release_credit(request)
        if request.cancelled:
            return
        fragment = self._fit(fragment, "result")
        self._replies += [request.key, fragment]
        if worker_recovery.KEY_MARK in request.body:
            self._remember(request, fragment, now)
        self._record(request, now, fragment_error_code(fragment))

    def _remember(self, request: LocalRequest, fragment: bytes, now: float) -> None:
        recent = self.recent
        recent[request.key] = (request.method, request.body, fragment, now)
        while recent:
            oldest = next(iter(recent.values()))
            if len(recent) <= MAX_RECENT_RESULTS and now - oldest[3] <= RECENT_RESULTS_S:
                break
            recent.popitem(last=False)

    def _record(self, request: LocalRequest, now: float, code: int | None) -> None:
        self.completed += 1
        if not self.config.collect_metrics:
            return
        stats = self.methods.get(request.method)
        if stats is None:
            stats = self.methods[request.method] = CallStats()
        stats.record(now - request.received_at, code)

    def _fail(self, request: LocalRequest, code: int, message: str, now: float) -> None:
        self._complete(request.local, error_fragment(code, message), now)

    def _fit(self, frame: bytes, what: str) -> bytes:
        """``frame``, or a -32008 error fragment when it is too big for the broker to accept."""
        limit = self.config.max_message_bytes - ENVELOPE_BYTES
        if len(frame) <= limit:
            return frame
        return error_fragment(
            ErrorCode.MESSAGE_TOO_LARGE,
            f"Message too large: the {what} is {len(frame)} bytes, the limit is {limit}",
        )

    def _nested_call(
        self, engine: EngineSlot, js_call: int, owner: int, body: bytes, slot: bytes
    ) -> None:
        if self._fit(body, "call") is not body:
            engine.settles.setdefault(slot, []).append((js_call, self._fit(body, "call")))
            return
        call_key = self._next_call
        self._next_call += 1
        self.calls[call_key] = (engine.index, engine.generation, js_call, slot)
        parent = self.requests.get(owner)
        parent_key = parent.key if parent is not None else NO_PARENT
        meta = p.encode_call_meta(call_key, parent_key)
        self.call_bodies[call_key] = (meta, body)
        self._calls_out += [meta, body]

    def _console(self, level: str, text: bytes) -> None:
        try:
            method, request_id, message = orjson.loads(text)
        except (ValueError, TypeError):
            method, request_id, message = "", None, text.decode(errors="replace")
        self.logs.append((level, str(method), request_id, str(message)))

    # ================================================================ output

    def take_broker_messages(self) -> list[list[bytes]]:
        self._top_up_credit()
        messages: list[list[bytes]] = []
        if self._replies or self.credit_to_return:
            messages.append(
                [p.TAG, p.REPLY, p.encode_credit(self.credit_to_return), *self._replies]
            )
            self._replies = []
            self.credit_to_return = 0
        if self._calls_out:
            messages.append([p.TAG, p.CALL, *self._calls_out])
            self._calls_out = []
        return messages

    def take_engine_messages(self) -> list[tuple[int, list[bytes]]]:
        out = self._engine_out
        self._engine_out = []
        return out

    # ================================================================ recovery
    # (engine resets and deaths, broker loss and hand-over: see worker_recovery)

    def on_engine_reset(
        self, index: int, reason: str, culprit: int, outbox: bytes, detail: str, now: float,
        slot: bytes = b"",
    ) -> None:
        """The engine stopped a step (watchdog, memory limit, error) and dropped the slot's
        context; what ran in that context is failed (the culprit) or requeued."""
        worker_recovery.on_engine_reset(self, index, reason, culprit, outbox, detail, now, slot)

    def on_engine_died(self, index: int, detail: str, oom_likely: bool, now: float) -> None:
        """The engine process exited; blame the request it ran alone, requeue the rest."""
        worker_recovery.on_engine_died(self, index, detail, oom_likely, now)

    def on_broker_lost(self) -> None:
        """The broker went silent: keep running what we hold; unsent messages are moot."""
        worker_recovery.on_broker_lost(self)

    def adoption_frames(self, wall_ms: float, now: float) -> list[bytes]:
        """ADOPT body for a new broker: what we still hold, and keyed results it may lack."""
        return worker_recovery.adoption_frames(self, wall_ms, now)

    def resend_calls(self) -> None:
        """Nested calls still awaiting results go to the new broker again (same keys)."""
        worker_recovery.resend_calls(self)

    def abandon_all(self) -> list[int]:
        """The broker declared us dead and re-dispatched what we held: drop it all.
        Returns the engines running a step (to abort)."""
        return worker_recovery.abandon_all(self)

    def drop_all(self) -> None:
        """Forget every request (the broker that sent them is gone)."""
        worker_recovery.drop_all(self)
    # ================================================================ figures

    @property
    def busy_engines(self) -> int:
        return sum(1 for e in self.engines.values() if e.busy)

    def snapshot(self, now: float) -> dict[str, Any]:
        """Figures for the broker (sent with heartbeats)."""
        if self.completed > self._rated:
            self.rate.add(now, self.completed - self._rated)
            self._rated = self.completed
        totals = CallStats()
        for stats in self.methods.values():
            totals.merge(stats)
        return {
            "busy": self.busy_engines,
            "contexts": sum(1 for e in self.engines.values() if not e.retiring),
            "ready_contexts": sum(1 for e in self.engines.values() if e.ready and not e.retiring),
            "held": len(self.requests),
            "queued": len(self.queue),
            "parked": sum(1 for r in self.requests.values() if r.stage is Stage.PARKED),
            "req_per_s": self.rate.rate(now),
            "engine_restarts": self.engine_restarts,
            "totals": totals.to_wire(),
            "methods": {name: stats.to_wire() for name, stats in self.methods.items()},
        }
