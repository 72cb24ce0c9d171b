"""A worker's tables and transitions. Pure: decoded messages and ``now`` in, frames out.

The worker holds requests the broker sent (up to its credit, :mod:`madrpc.worker_credit`),
hands them to its engines in batches, and turns what the engines write (replies, nested
calls, console lines) into messages for the broker. When a context is lost (watchdog,
memory limit, crash) what ran there fails (the culprit) or runs again (the others); when
the broker is lost, what it held is kept for the next run (:mod:`madrpc.worker_handover`).
"""

from __future__ import annotations

import logging
from typing import Any

from . import engine_protocol as ep
from . import protocol as p
from .config import WorkerConfig
from .engine_protocol import ResetReason
from .errors import ErrorCode
from .jsonrpc import error_fragment, fit_frame, fragment_error_code
from .worker_credit import CreditLedger, RunTimes
from .worker_figures import WorkerFigures
from .worker_handover import HandOver
from .worker_requests import RequestBook
from .worker_tables import EngineSlot, LocalRequest, Stage

__all__ = ["EngineSlot", "LocalRequest", "Stage", "WorkerState"]

log = logging.getLogger(__name__)

ENVELOPE_BYTES = 1024
"""Room for what the broker wraps around a frame (id, jsonrpc) within the size limit."""
MAX_ENGINE_RESETS = 3
"""Engine resets a request may live through before it fails instead of running again."""


class WorkerState:
    """Everything a worker knows about its requests and engines."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.engines: dict[int, EngineSlot] = {}
        self._next_slot = 0
        self.requests = RequestBook()
        self.fresh = config.fresh_context
        self.calls: dict[int, tuple[int, int, int, bytes]] = {}
        """Nested call key -> (engine index, engine generation, JS call id, context slot)."""
        self.run_times = RunTimes()
        self.credit = CreditLedger(config.initial_credit, config.prefetch)
        self.handover = HandOver()
        self.figures = WorkerFigures(config.collect_metrics)
        self._next_call = 1
        self._replies: list[bytes] = []
        self._calls_out: list[bytes] = []
        self._engine_out: list[tuple[int, list[bytes]]] = []
        self.logs: list[tuple[str, str, Any, str]] = []
        """(level, method, request id, text) of console lines, for the worker's log."""
        self.draining = False
        self._frame_limit = config.max_message_bytes - ENVELOPE_BYTES
        """Largest result or call body the broker will take, with room for its envelope."""

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
        return [e.index for e in self.engines.values() if e.drained]

    def remove_engine(self, index: int, now: float) -> None:
        engine = self.engines.pop(index, None)
        if engine is not None:
            self._requeue_all(engine, now, solo=False)

    def on_engine_ready(self, index: int, identity: bytes) -> None:
        engine = self.engines[index]
        engine.identity = identity
        engine.ready = True
        engine.busy = False

    # ================================================================ from the broker

    def on_requests(self, frames: list[bytes], now: float, wall_ms: float) -> None:
        config = self.config
        for i in range(0, len(frames), 3):
            meta = p.decode_request_meta(frames[i])
            cpu_limit_ms = config.cpu_limit_s * 1000
            if meta.cpu_limit_ms:
                cpu_limit_ms = min(cpu_limit_ms, meta.cpu_limit_ms)
            memory_mb = meta.memory_mb if 0 < meta.memory_mb < config.max_memory_mb else 0
            self.requests.add(meta, frames[i + 1].decode(errors="replace"), frames[i + 2],
                              now, wall_ms, cpu_limit_ms, memory_mb)

    def on_results(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Results of nested calls: each waits for its context's next step."""
        for call_key, fragment in pairs:
            number = p.decode_key(call_key)
            self.handover.call_answered(number)
            entry = self.calls.pop(number, None)
            if entry is None:
                continue
            index, generation, js_call, slot = entry
            engine = self.engines.get(index)
            if engine is None or engine.generation != generation:
                continue
            if self.fresh and int(slot) not in self.requests:
                continue   # that request (and its context) is gone
            engine.settle(slot, js_call, fragment)

    def on_cancels(self, keys: list[bytes]) -> None:
        """The broker cancelled these requests: forget them, and stop them in their engine."""
        for key in keys:
            request = self.requests.find(key)
            if request is None:
                continue
            request.cancelled = True
            if request.stage is Stage.QUEUED:
                self._forget(request)
            elif request.stage is Stage.PARKED:
                self._cancel_in_engine(request)
                self._forget(request)
            elif request.engine is not None:   # RUNNING: stopped if its code runs now
                self._engine_out.append((request.engine, ep.interrupt_message(
                    request.local, self.slot_of(request))))

    def slot_of(self, request: LocalRequest) -> bytes:
        """The context a request runs in: its own in fresh-context mode, else the shared one."""
        return b"%d" % request.local if self.fresh else ep.POOLED

    def _cancel_in_engine(self, request: LocalRequest) -> None:
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is None:
            return
        slot = self.slot_of(request)
        if self.fresh:
            engine.settles.pop(slot, None)
            self._engine_out.append((engine.index, ep.drop_message(slot)))
        else:
            engine.cancel(slot, request.local)

    def _forget(self, request: LocalRequest) -> None:
        self.requests.pop(request.local)
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is not None:
            engine.held.discard(request.local)
        self._release_credit(request)

    def _release_credit(self, request: LocalRequest) -> None:
        if request.holds_credit:
            request.holds_credit = False
            self.credit.release(self.target_credit, self.draining)

    @property
    def free_credit(self) -> int:
        """Credit not taken by a request we hold (what READY announces)."""
        return self.credit.issued - self.requests.holding_credit()

    @property
    def target_credit(self) -> int:
        """How much credit the broker should hold for this worker, given recent run times."""
        contexts = sum(1 for e in self.engines.values() if not e.retiring)
        return self.credit.target(contexts, self.run_times.quick(self.config.batch_threshold_ms))

    # ================================================================ scheduling

    def schedule(self, now: float, wall_ms: float) -> None:
        """Start a step on every idle engine that has something to do."""
        idle = [e for e in self.engines.values() if e.idle]
        idle.sort(key=lambda e: (e.retiring, len(e.held)))
        for engine in idle:
            if self.fresh and engine.has_input:
                self._start_step(engine, [], now)   # resume one parked request
                continue
            batch = self._take_batch() if self.requests.queue and not engine.retiring else []
            if batch or engine.has_input:
                self._start_step(engine, batch, now)

    def _take_batch(self) -> list[LocalRequest]:
        config = self.config
        return self.requests.take_batch(self.run_times.by_method, config.batch_threshold_ms / 1000,
                                        config.max_batch, batching=not self.fresh)

    def _start_step(self, engine: EngineSlot, batch: list[LocalRequest], now: float) -> None:
        """One step: the settles and cancels of one context slot, then new requests."""
        slot = self.slot_of(batch[0]) if batch else engine.input_slot()
        settles, cancels = engine.take_input(slot)
        engine.begin_step(batch, now)
        payload = ep.encode_step_payload(settles, cancels, [
            ep.StepEntry(r.local, r.deadline_ms, r.cpu_limit_ms, r.depth, r.body) for r in batch
        ])
        memory_limit = batch[0].memory_mb * 1024 * 1024 if len(batch) == 1 else 0
        self._engine_out.append((engine.index, ep.step_message(payload, slot, memory_limit)))

    # ================================================================ from engines

    def on_engine_output(
        self, index: int, step_done: bool, outbox: bytes, now: float, slot: bytes = b""
    ) -> None:
        engine = self.engines[index]
        self._read_outbox(engine, outbox, now, slot)
        if step_done:
            self._end_step(engine, now)

    def _end_step(self, engine: EngineSlot, now: float) -> None:
        started_at = engine.step_started
        ran = engine.end_step()
        if not ran:
            return
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
        self.run_times.learn(engine.step_methods, (now - started_at) / len(ran))

    def _read_outbox(self, engine: EngineSlot, outbox: bytes, now: float, slot: bytes) -> None:
        for entry in ep.parse_outbox(outbox):
            if isinstance(entry, ep.Reply):
                self._complete(entry.local, entry.fragment, now)
            elif isinstance(entry, ep.NestedCall):
                self._nested_call(engine, entry, slot)
            else:
                self.logs.append(entry.decode())

    def _complete(self, local: int, fragment: bytes, now: float) -> None:
        request = self.requests.pop(local)
        if request is None:
            return
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is not None:
            engine.held.discard(local)
            engine.served += 1
        self._release_credit(request)
        if request.cancelled:
            return
        fragment = fit_frame(fragment, self._frame_limit, "result")
        self._replies += [request.key, fragment]
        self.handover.remember_result(request, fragment, now)
        self.figures.record(request.method, now - request.received_at,
                            fragment_error_code(fragment))

    def _fail(self, request: LocalRequest, code: int, message: str, now: float) -> None:
        self._complete(request.local, error_fragment(code, message), now)

    def _nested_call(self, engine: EngineSlot, call: ep.NestedCall, slot: bytes) -> None:
        body = fit_frame(call.body, self._frame_limit, "call")
        if body is not call.body:
            engine.settle(slot, call.js_call, body)
            return
        call_key = self._next_call
        self._next_call += 1
        self.calls[call_key] = (engine.index, engine.generation, call.js_call, slot)
        parent = self.requests.get(call.owner)
        meta = p.encode_call_meta(call_key, parent.key if parent is not None else p.NO_PARENT)
        self.handover.track_call(call_key, meta, body)
        self._calls_out += [meta, body]

    # ================================================================ lost contexts

    def on_engine_reset(
        self, index: int, reason: str, culprit: int, outbox: bytes, detail: str, now: float,
        slot: bytes = b"",
    ) -> None:
        """The engine stopped a step (watchdog, memory limit, error) and dropped the slot's
        context; what ran in that context is failed (the culprit) or requeued."""
        engine = self.engines[index]
        self._read_outbox(engine, outbox, now, slot)
        request = self.requests.get(culprit) if culprit else None
        stopped = request.stopped_by(reason, detail, self.config.max_memory_mb) \
            if request is not None else None
        if request is not None and stopped is not None:
            self._fail(request, *stopped, now)
        if reason == ResetReason.ERROR:
            for local in list(engine.step_requests):
                failed = self.requests.get(local)
                if failed is not None:
                    self._fail(failed, ErrorCode.INTERNAL_ERROR, f"Internal error: {detail}", now)
        self._count_restart(engine)
        if self.fresh:   # only that request's own context is gone
            engine.end_step()
            lost = self.requests.get(int(slot)) if slot else None
            if lost is not None:
                self._requeue(lost, now, solo=False)
        else:
            self._requeue_all(engine, now, solo=False)
        engine.ready = True

    def on_engine_died(self, index: int, detail: str, oom_likely: bool, now: float) -> None:
        """The engine process exited; blame the request it ran alone, requeue the rest."""
        engine = self.engines[index]
        suspects = [local for local in engine.step_requests if local in self.requests]
        if engine.busy and len(suspects) == 1:
            code = ErrorCode.OUT_OF_MEMORY if oom_likely else ErrorCode.WORKER_LOST
            name = "Out of memory" if oom_likely else "Worker lost"
            self._fail(self.requests[suspects[0]], code,
                       f"{name}: the engine process died running it ({detail})", now)
        self._count_restart(engine)
        self._requeue_all(engine, now, solo=True)
        engine.ready = False

    def _count_restart(self, engine: EngineSlot) -> None:
        self.figures.engine_restarts += 1
        engine.restarts += 1

    def _requeue_all(self, engine: EngineSlot, now: float, solo: bool) -> None:
        """Run again what the engine held: its contexts are gone."""
        for local in engine.lose_contexts():
            request = self.requests.get(local)
            if request is not None:
                self._requeue(request, now, solo)

    def _requeue(self, request: LocalRequest, now: float, solo: bool) -> None:
        """Run a request again from the start (its context was lost), a bounded number of times."""
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is not None:
            engine.held.discard(request.local)
        if request.cancelled:   # nobody wants it any more
            self._forget(request)
            return
        request.resets += 1
        if request.resets > MAX_ENGINE_RESETS:
            request.engine = None
            self._fail(request, ErrorCode.WORKER_LOST,
                       f"Worker lost: its context was reset {request.resets} times while it ran",
                       now)
            return
        self.requests.requeue(request, solo)

    # ================================================================ broker lost

    def on_broker_lost(self) -> None:
        """The broker went silent: keep running what we hold; unsent messages are moot."""
        self._replies = []
        self._calls_out = []
        self.credit.restart(holding=self.requests.holding_credit())

    def adoption_frames(self, wall_ms: float, now: float) -> list[bytes]:
        """ADOPT body for a new broker: what we still hold, and keyed results it may lack."""
        return self.handover.adoption_frames(self.requests.values(), wall_ms, now)

    def resend_calls(self) -> None:
        """Nested calls still awaiting results go to the new broker again (same keys)."""
        self._calls_out += self.handover.pending_calls()

    def abandon_all(self) -> list[int]:
        """The broker declared us dead and re-dispatched what we held: drop it all.
        Returns the engines running a step (to abort)."""
        busy = [e.index for e in self.engines.values() if e.busy]
        self.drop_all()
        self.handover.clear()
        return busy

    def drop_all(self) -> None:
        """Forget every request (the broker that sent them is gone)."""
        for request in self.requests.clear():
            request.cancelled = True
            if request.stage is Stage.PARKED:
                self._cancel_in_engine(request)
        for engine in self.engines.values():
            engine.held.clear()
        self.calls.clear()
        self._replies = []
        self._calls_out = []
        self.credit.restart()

    # ================================================================ output

    def take_broker_messages(self) -> list[list[bytes]]:
        self.credit.top_up(self.target_credit, self.draining)
        messages: list[list[bytes]] = []
        if self._replies or self.credit.to_return:
            credit = p.encode_credit(self.credit.take_return())
            messages.append([p.TAG, p.REPLY, credit, *self._replies])
            self._replies = []
        if self._calls_out:
            messages.append([p.TAG, p.CALL, *self._calls_out])
            self._calls_out = []
        return messages

    def take_engine_messages(self) -> list[tuple[int, list[bytes]]]:
        out = self._engine_out
        self._engine_out = []
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        """Figures for the broker (sent with heartbeats)."""
        return self.figures.snapshot(now, self.engines.values(), self.requests)
