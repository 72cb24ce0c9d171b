"""An engine's core: one V8 context (or one per request) serving a worker's steps.

It knows nothing of how it is reached. Whoever holds it passes in the worker's messages
(:meth:`Engine.serve`) and a ``send`` for its answers: the engine process over its socket
pair (:mod:`madrpc.engine`), or a test driving it in-process
(``tests/integration/test_engine_loop.py``). It speaks the worker <-> engine protocol of
:mod:`madrpc.engine_protocol`: READY once loaded, OUT after each step or flush, RESET
when a step had to be stopped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from . import engine_protocol as ep
from .bundle import Bundle
from .engine_channel import ChannelClosed
from .engine_payload import answered
from .engine_protocol import POOLED, Mode, ResetReason
from .runtime import Event, EventKind, Runtime, v8_version

__all__ = ["Engine"]

log = logging.getLogger(__name__)

RESET_FLUSH_TIMEOUT_S = 1.0
"""After a termination, how long collecting the finished replies may take."""
ANSWER_LOCK_WAIT_S = 0.1
"""How long an isolate's thread that finished a step waits for the loop to end its turn
before it hands the outcome over instead of answering it itself (a bound, not a delay:
a turn takes microseconds)."""
WAKE_READ_BYTES = 4096
"""How much one read of the wake-up pipe takes (V8's thread writes one byte per event)."""


class Engine:
    """The engine's loop around its V8 context(s), reading its link to the worker.

    Pooled (the default): one context, reused by every request; its slot is ``b""``.
    Fresh (``--fresh-context``): every request gets a context of its own, named by the
    request's key (its slot), built ahead of time while the engine is idle and dropped
    when the request has answered. Either way one step runs at a time; a pooled engine may
    hold the worker's next step, and starts it the moment the one before ends.
    """

    def __init__(
        self, send: Callable[[list[bytes]], None], bundle: Bundle, max_memory_mb: int,
        fresh: bool = False,
    ) -> None:
        self._send = send
        """Delivers a message to the worker (may run on an isolate's thread); raises
        ChannelClosed when the worker is gone."""
        self.bundle = bundle
        self.max_memory_bytes = max_memory_mb * 1024 * 1024
        self.fresh = fresh
        self._events: deque[tuple[bytes, Event]] = deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._steps: deque[tuple[bytes, bytes, int]] = deque()
        self._flush_wanted: set[bytes] = set()
        self._running: bytes | None = None
        """Slot of the step or flush in progress."""
        self._dropping: bytes | None = None
        self._mode: Mode | None = None
        self._crossing = Mode.STEP
        """What the crossing in progress started as (STEP or FLUSH), for its RESET."""
        self._segment = (-1, 0.0)
        self._flush_started = 0.0
        self._stopping: tuple[ResetReason, int, str] | None = None
        """Why the running step is being stopped: (reason, culprit, detail)."""
        self._interrupts: set[int] = set()
        """Local keys of cancelled requests to stop if their code runs in this step."""
        self._lock = threading.Lock()
        """Held by the loop while it works, and by an isolate's thread finishing a step."""
        self.handed_over = 0
        """Outcomes the loop acted on (woken by an isolate's thread that did not answer
        them itself)."""
        self.runtimes: dict[bytes, Runtime] = {}
        self._spare: Runtime | None = self._build(POOLED)   # ScriptError before any socket
        self.methods = self._spare.methods
        if not fresh:
            self.runtimes[POOLED], self._spare = self._spare, None

    def _build(self, slot: bytes) -> Runtime:
        return Runtime(
            self.bundle, "", lambda event: self._on_event(slot, event),
            max_memory_bytes=self.max_memory_bytes, pin_thread=not self.fresh,
        )

    def _on_event(self, slot: bytes, event: Event) -> None:
        """Runs on an isolate's thread: a pooled step that ended normally is answered
        from here, between two turns of the loop (one thread wake-up fewer per step);
        anything else is handed over to the loop, which is woken. The wait is bounded, so
        a loop that holds the lock while it drops this context cannot deadlock with it."""
        if event.kind == EventKind.DONE and not self.fresh \
                and self._lock.acquire(timeout=ANSWER_LOCK_WAIT_S):
            try:
                if self._finishes_normally(slot):
                    self._finish(slot, event.data)
                    return
            except ChannelClosed:
                return   # the loop sees the closed link too
            finally:
                self._lock.release()
        self._events.append((slot, event))
        os.write(self._wake_write, b"!")

    def _finishes_normally(self, slot: bytes) -> bool:
        return (slot == self._running and self._stopping is None and not self._events
                and self._mode in (Mode.STEP, Mode.FLUSH))

    def _runtime_for(self, slot: bytes) -> Runtime:
        runtime = self.runtimes.get(slot)
        if runtime is None:
            spare, self._spare = self._spare, None
            if spare is None:
                spare = self._build(slot)
            else:   # re-label the spare's events with the slot it now serves
                spare.relabel(lambda event: self._on_event(slot, event))
            runtime = self.runtimes[slot] = spare
        return runtime

    @property
    def wake_fd(self) -> int:
        """Readable when an isolate's thread handed an outcome over: call :meth:`serve`
        with ``woken``."""
        return self._wake_read

    @property
    def running(self) -> bool:
        """A step or flush is in progress: its budget wants checking, so the loop should
        call :meth:`serve` often."""
        return self._running is not None

    def ready_message(self) -> list[bytes]:
        """READY: the script's functions, V8's version and this process."""
        return ep.ready_message({"methods": self.methods, "v8": v8_version(),
                                 "pid": os.getpid()})

    def serve(self, commands: Iterable[list[bytes]], woken: bool) -> bool:
        """One turn: act on what isolates handed over (``woken``: :attr:`wake_fd` was
        readable) and on the worker's ``commands``, check the running step's budget and
        start the next one. False once the worker said STOP."""
        with self._lock:
            if woken:
                self._read_wakeups()
            while self._events:
                self.handed_over += 1
                self._on_outcome(*self._events.popleft())
            for frames in commands:
                if not self._command(frames):
                    return False
            self._watchdog()
            self._start_next()
            if self._running is None and self.fresh and self._spare is None \
                    and not self._steps:
                self._spare = self._build(POOLED)   # ready for the next request
        return True

    def _read_wakeups(self) -> None:
        try:   # one read takes every byte written so far (a read that fills up may leave more)
            while len(os.read(self._wake_read, WAKE_READ_BYTES)) == WAKE_READ_BYTES:
                pass
        except BlockingIOError:
            pass

    def _command(self, frames: list[bytes]) -> bool:
        """Act on one message from the worker; False when it said STOP."""
        command = ep.decode_worker_command(frames)
        if isinstance(command, ep.Step):
            slot = command.slot if self.fresh else POOLED
            self._steps.append((slot, command.payload, command.memory_limit_bytes))
        elif isinstance(command, ep.Drop):
            self._drop(command.slot)
        elif isinstance(command, ep.Interrupt):
            if self.fresh:
                if command.slot == self._running:
                    self._interrupts.add(command.local)
            elif self._running is not None or self._steps:   # now, or in a queued step
                self._interrupts.add(command.local)
        elif command == ep.ABORT:
            self._abort()
        elif command == ep.STOP:
            return False
        return True

    def _abort(self) -> None:
        """The worker dropped every request: stop the running step; its context is reset."""
        self._steps.clear()
        if self._running is not None and self._stopping is None:
            self._stopping = (ResetReason.ABORTED, 0, "the worker abandoned its requests")
            self.runtimes[self._running].terminate()

    def _drop(self, slot: bytes) -> None:
        """Fresh mode: a request was cancelled; its context goes (now, or after its step)."""
        self._steps = deque(step for step in self._steps if step[0] != slot)
        self._flush_wanted.discard(slot)
        if slot == self._running:
            self._dropping = slot
        elif slot in self.runtimes and slot != POOLED:
            self.runtimes.pop(slot).close()

    def _start_next(self) -> None:
        if self._running is not None:
            return
        if self._steps:
            slot, payload, limit = self._steps.popleft()
            self._running, self._mode = slot, Mode.STEP
            self._crossing = Mode.STEP
            runtime = self._runtime_for(slot)
            runtime.set_memory_limit(limit or self.max_memory_bytes)
            runtime.step(payload)
            return
        while self._flush_wanted:
            slot = self._flush_wanted.pop()
            waiting = self.runtimes.get(slot)
            if waiting is not None:
                self._running, self._mode = slot, Mode.FLUSH
                self._crossing = Mode.FLUSH
                waiting.flush()
                return

    def _watchdog(self) -> None:
        """Terminate a JavaScript segment that outlived its budget."""
        if self._running is None:
            return
        runtime = self.runtimes[self._running]
        now = time.monotonic()
        if self._stopping is not None:
            if self._mode is Mode.RECOVERING and now - self._flush_started > RESET_FLUSH_TIMEOUT_S:
                runtime.terminate()
            return
        sequence, key, budget_ms, cpu_bound = runtime.marker()
        if key and key in self._interrupts:
            self._stopping = (ResetReason.CANCELLED, int(key), "cancelled")
            runtime.terminate()
            return
        if sequence != self._segment[0]:
            self._segment = (sequence, now)
            return
        elapsed_ms = (now - self._segment[1]) * 1000
        if key and elapsed_ms > budget_ms:
            reason = ResetReason.CPU_LIMIT if cpu_bound else ResetReason.TIMEOUT
            detail = f"ran {elapsed_ms:.0f} ms of a {budget_ms:.0f} ms budget"
            self._stopping = (reason, int(key), detail)
            runtime.terminate()

    def _on_outcome(self, slot: bytes, event: Event) -> None:
        kind = event.kind
        if kind == EventKind.NOTIFY:
            self._flush_wanted.add(slot)
            return
        if slot != self._running:
            return   # a context already dropped
        runtime = self.runtimes[slot]
        if kind == EventKind.DONE:
            if self._mode is Mode.RECOVERING:
                self._reset(slot, event.data)
                return
            self._finish(slot, event.data)
        elif kind == EventKind.TERMINATED:
            if self._mode is Mode.RECOVERING:
                self._reset(slot, b"")
                return
            if self._stopping is None:
                self._stopping = (ResetReason.TIMEOUT, int(runtime.marker()[1]), "terminated")
            self._mode = Mode.RECOVERING
            self._flush_started = time.monotonic()
            runtime.flush()   # collect what finished before the stop
        elif kind == EventKind.OUT_OF_MEMORY or runtime.memory_limit_reached():
            self._stopping = (ResetReason.OUT_OF_MEMORY, int(runtime.marker()[1]), "memory limit")
            self._reset(slot, b"")
        else:  # ERROR: the step itself failed
            if self._mode is not Mode.RECOVERING:
                self._stopping = (ResetReason.ERROR, 0, event.data.decode(errors="replace"))
            self._reset(slot, b"")

    def _finish(self, slot: bytes, outbox: bytes) -> None:
        """A step or flush ended normally: send its outbox on."""
        mode = self._mode or Mode.STEP
        self._running, self._mode = None, None
        self._forget_interrupts()
        if not self.fresh:   # a queued step starts before the worker hears of this one
            self._start_next()
        self._send(ep.output_message(mode, outbox, slot))
        if self.fresh and (answered(outbox, slot) or self._dropping == slot):
            self._dropping = None
            self.runtimes.pop(slot).close()
            self._flush_wanted.discard(slot)

    def _reset(self, slot: bytes, outbox: bytes) -> None:
        """Drop the slot's context (a pooled one is rebuilt) and report what was lost."""
        reason, culprit, detail = self._stopping or (ResetReason.ERROR, 0, "")
        self._stopping = None
        self._running = None
        self._mode = None
        self._forget_interrupts()
        self._flush_wanted.discard(slot)
        self.runtimes.pop(slot).close()
        if not self.fresh:
            self.runtimes[POOLED] = self._build(POOLED)
        self._segment = (-1, 0.0)
        log.info("engine %d: context dropped after %s (%s)", os.getpid(), reason, detail)
        self._send(ep.reset_message(reason, culprit, outbox, detail, slot, self._crossing))

    def _forget_interrupts(self) -> None:
        """A crossing ended: interrupts only matter to the steps still queued (a pooled
        engine may hold the worker's next step already)."""
        if not self._steps:
            self._interrupts.clear()

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.close()
        if self._spare is not None:
            self._spare.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
