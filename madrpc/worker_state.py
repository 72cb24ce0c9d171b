"""A worker's transitions. Pure: decoded messages and ``now`` in, frames out.

The worker holds requests the broker sent (up to its credit, :mod:`madrpc.worker_credit`),
hands them to its engines in batches, and turns what the engines write (replies, stream
items, nested calls, console lines) into messages for the broker; its tables are
:class:`~madrpc.worker_base.WorkerTables`. When a context is lost (watchdog,
memory limit, crash) what ran there fails (the culprit) or runs again (the others); when
the broker is lost, what it held is kept for the next run (:mod:`madrpc.worker_handover`).
"""

from __future__ import annotations

import logging

from . import engine_protocol as ep
from . import protocol as p
from .engine_payload import (
    Abandon,
    Items,
    NestedCall,
    Reply,
    StepEntry,
    StreamAck,
    encode_step_payload,
    parse_outbox,
)
from .engine_protocol import ResetReason
from .errors import ErrorCode
from .jsonrpc import error_fragment, fit_frame, fragment_error_code
from .worker_base import WorkerTables
from .worker_calls import PendingCall
from .worker_tables import EngineSlot, LocalRequest, Stage, asks_for_stream

__all__ = ["EngineSlot", "LocalRequest", "Stage", "WorkerState"]

log = logging.getLogger(__name__)

MAX_ENGINE_RESETS = 3
"""Engine resets a request may live through before it fails instead of running again."""


class WorkerState(WorkerTables):
    """A worker's tables (see :class:`~madrpc.worker_base.WorkerTables`) and what changes them."""

    # ================================================================ from the broker

    def on_requests(self, frames: list[bytes], now: float, wall_ms: float) -> None:
        config = self.config
        for i in range(0, len(frames), 3):
            meta = p.decode_request_meta(frames[i])
            cpu_limit_ms = config.cpu_limit_s * 1000
            if meta.cpu_limit_ms:
                cpu_limit_ms = min(cpu_limit_ms, meta.cpu_limit_ms)
            memory_mb = meta.memory_mb if 0 < meta.memory_mb < config.max_memory_mb else 0
            body = frames[i + 2]
            self.requests.add(meta, frames[i + 1].decode(errors="replace"), body, now, wall_ms,
                              cpu_limit_ms, memory_mb)

    def on_results(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Results of nested calls: each waits for its context's next step."""
        for call_key, fragment in pairs:
            engine = self._awaiting(self.calls.answered(call_key))
            if engine is not None:
                engine[0].settle(engine[1].slot, engine[1].js_call, fragment)

    def on_partials(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Items of nested streams: each waits for its context's next step."""
        for call_key, items in pairs:
            engine = self._awaiting(self.calls.fed(call_key))
            if engine is not None:
                engine[0].feed(engine[1].slot, engine[1].js_call, items)

    def _awaiting(self, call: PendingCall | None) -> tuple[EngineSlot, PendingCall] | None:
        """The engine whose context still awaits ``call``'s answer, if one does."""
        if call is None:
            return None
        engine = self.engines.get(call.engine)
        if engine is None or engine.generation != call.generation:
            return None
        if self.fresh and int(call.slot) not in self.requests:
            return None   # that request (and its context) is gone
        return engine, call

    def on_grants(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """The consumers of streams we run took more items: the streams may send more."""
        for key, frame in pairs:
            request = self.requests.find(key)
            if request is None or request.cancelled or not request.is_stream():
                continue
            items = p.decode_grant(frame)
            engine = self.engines.get(request.engine) if request.engine is not None else None
            if request.stage is Stage.QUEUED or engine is None:
                request.granted += items   # handed to its first step
            else:
                engine.grant(self.slot_of(request), request.local, items)

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

    # ================================================================ scheduling

    def schedule(self, now: float, wall_ms: float) -> None:
        """Start a step on every idle engine that has something to do; then queue the next
        step on pooled engines whose running step is about to end."""
        idle = [e for e in self.engines.values() if e.idle]
        idle.sort(key=lambda e: (e.retiring, len(e.held)))
        for engine in idle:
            if self.fresh and engine.has_input:
                self._start_step(engine, [], now)   # resume one parked request
                continue
            batch = self._take_batch() if self.requests.queue and not engine.retiring else []
            if batch or engine.has_input:
                self._start_step(engine, batch, now)
        max_wait_s = self.config.queue_step_ms / 1000
        if self.fresh or not max_wait_s or not self.requests.queue:
            return
        for engine in self.engines.values():
            if engine.can_queue(max_wait_s):
                batch = self._take_batch()
                if not batch:
                    return
                self._start_step(engine, batch, now)

    def _take_batch(self) -> list[LocalRequest]:
        config = self.config
        return self.requests.take_batch(self.run_times.by_method, config.batch_threshold_ms / 1000,
                                        config.max_batch, batching=not self.fresh)

    def _start_step(self, engine: EngineSlot, batch: list[LocalRequest], now: float) -> None:
        """One step: the settles and cancels of one context slot, then new requests."""
        slot = self.slot_of(batch[0]) if batch else engine.input_slot()
        waiting = engine.take_input(slot)
        by_method = self.run_times.by_method
        estimate_s = sum(by_method.get(r.method, float("inf")) for r in batch)
        engine.begin_step(batch, now, estimate_s if batch else float("inf"))
        for request in batch:
            if request.granted:
                waiting.grants.append((request.local, request.granted))
                request.granted = 0
        payload = encode_step_payload(waiting.settles, waiting.cancels, [
            StepEntry(r.local, r.deadline_ms, r.cpu_limit_ms, r.depth, r.body) for r in batch
        ], waiting.grants, waiting.feeds)
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
        started_at, methods = engine.step_started, engine.step_methods
        ran = engine.end_step(now)
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
        self.run_times.learn(methods, (now - started_at) / len(ran))

    def _read_outbox(self, engine: EngineSlot, outbox: bytes, now: float, slot: bytes) -> None:
        for entry in parse_outbox(outbox):
            if isinstance(entry, Reply):
                self._complete(entry.local, entry.fragment, now)
            elif isinstance(entry, Items):
                self._stream_items(entry, now)
            elif isinstance(entry, NestedCall):
                self._nested_call(engine, entry, slot)
            elif isinstance(entry, StreamAck):
                self.calls.took(engine.index, engine.generation, slot, entry.js_call, entry.n)
            elif isinstance(entry, Abandon):
                self.calls.abandon(engine.index, engine.generation, slot, entry.js_call)
            else:
                self.logs.append(entry.decode())

    def _stream_items(self, entry: Items, now: float) -> None:
        request = self.requests.get(entry.local)
        if request is None or request.cancelled:
            return
        if len(entry.items) > self._frame_limit:   # one item larger than a message may be
            self._cancel_in_engine(request)
            self._fail(request, ErrorCode.MESSAGE_TOO_LARGE, "Message too large: a stream item "
                       f"exceeds the limit of {self._frame_limit} bytes", now)
            return
        request.items_sent += entry.count
        self.figures.stream_items += entry.count
        self._partials += [request.key, entry.items]

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

    def _nested_call(self, engine: EngineSlot, call: NestedCall, slot: bytes) -> None:
        body = fit_frame(call.body, self._frame_limit, "call")
        if body is not call.body:
            engine.settle(slot, call.js_call, body)
            return
        parent = self.requests.get(call.owner)
        stream = asks_for_stream(body)
        self.calls.open(PendingCall(engine.index, engine.generation, call.js_call, slot, stream),
                        parent.key if parent is not None else p.NO_PARENT, body)

    # ================================================================ lost contexts

    def on_engine_reset(
        self, index: int, reason: str, culprit: int, outbox: bytes, detail: str, now: float,
        slot: bytes = b"", step_done: bool = True,
    ) -> None:
        """The engine stopped a step (``step_done``) or a flush (watchdog, memory limit,
        error) and dropped the slot's context; what ran in that context is failed (the
        culprit) or requeued. Steps the engine was sent and has not started run in the
        new context."""
        engine = self.engines[index]
        self._read_outbox(engine, outbox, now, slot)
        request = self.requests.get(culprit) if culprit else None
        stopped = request.stopped_by(reason, detail, self.config.max_memory_mb) \
            if request is not None else None
        if request is not None and stopped is not None:
            self._fail(request, *stopped, now)
        if reason == ResetReason.ERROR and step_done:
            for local in list(engine.step_requests):
                failed = self.requests.get(local)
                if failed is not None:
                    self._fail(failed, ErrorCode.INTERNAL_ERROR, f"Internal error: {detail}", now)
        self._count_restart(engine)
        if step_done:
            engine.end_step(now)
        if self.fresh:   # only that request's own context is gone
            lost = self.requests.get(int(slot)) if slot else None
            if lost is not None and lost.local not in engine.step_requests:
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
        unstarted = engine.forget_steps()
        self._requeue_all(engine, now, solo=True, unstarted=set(unstarted))
        engine.ready = False

    def remove_engine(self, index: int, now: float) -> None:
        engine = self.engines.pop(index, None)
        if engine is not None:
            unstarted = engine.forget_steps()
            self._requeue_all(engine, now, solo=False, unstarted=set(unstarted))

    def _count_restart(self, engine: EngineSlot) -> None:
        self.figures.engine_restarts += 1
        engine.restarts += 1

    def _requeue_all(self, engine: EngineSlot, now: float, solo: bool,
                     unstarted: set[int] | None = None) -> None:
        """Run again what the engine held: its contexts are gone (``unstarted``: requests
        of a queued step, which never ran there)."""
        for local in engine.lose_contexts():
            request = self.requests.get(local)
            if request is not None:
                ran = not unstarted or local not in unstarted
                self._requeue(request, now, solo and ran, ran)

    def _requeue(self, request: LocalRequest, now: float, solo: bool, ran: bool = True) -> None:
        """Run a request again from the start (its context was lost), a bounded number of
        times (counting only the losses it ran in: ``ran``)."""
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is not None:
            engine.held.discard(request.local)
        if request.cancelled:   # nobody wants it any more
            self._forget(request)
            return
        if request.items_sent:   # its consumer has items already: they must not repeat
            request.engine = None
            self._fail(request, ErrorCode.WORKER_LOST, "Worker lost: the stream's context was "
                       f"lost after it had sent {request.items_sent} items", now)
            return
        request.resets += ran
        if request.resets > MAX_ENGINE_RESETS:
            request.engine = None
            self._fail(request, ErrorCode.WORKER_LOST,
                       f"Worker lost: its context was reset {request.resets} times while it ran",
                       now)
            return
        self.requests.requeue(request, solo)

    # ================================================================ broker lost

    def on_broker_lost(self) -> None:
        """The broker went silent: keep running what we hold; unsent messages are moot.
        Streams cannot go on (their consumers were clients of that broker run): ours stop,
        the nested ones our code reads fail."""
        self._replies = []
        self._partials = []
        self.calls.forget_unsent()
        self.on_cancels([r.key for r in self.requests.values() if r.is_stream()])
        for call in self.calls.take_streams():
            answer = self._awaiting(call)
            if answer is not None:
                answer[0].settle(call.slot, call.js_call, error_fragment(
                    ErrorCode.WORKER_LOST, "Worker lost: the broker was lost during the stream"))
        self.credit.restart(holding=self.requests.holding_credit())

    def adoption_frames(self, wall_ms: float, now: float) -> list[bytes]:
        """ADOPT body for a new broker: what we still hold, and keyed results it may lack."""
        return self.handover.adoption_frames(self.requests.values(), wall_ms, now)

    def resend_calls(self) -> None:
        """Nested calls still awaiting results go to the new broker again (same keys)."""
        self.calls.calls_out += self.handover.pending_calls()

    def abandon_all(self) -> list[int]:
        """The broker declared us dead and re-dispatched what we held: drop it all.
        Returns the engines running a step (to abort)."""
        busy = [e.index for e in self.engines.values() if e.busy]
        for engine in self.engines.values():
            engine.queued = None   # ABORT makes the engine drop its queued step
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
        self._partials = []
        self.credit.restart()

