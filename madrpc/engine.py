"""An engine process: one V8 context serving its worker over an inherited socket.

Started by the worker as ``python -m madrpc.engine ...``. A process per context means a
fatal V8 error (some out-of-memory paths abort the process instead of raising) costs one
context, never the worker, and the Python side of each context has its own GIL.

It speaks the worker <-> engine protocol of :mod:`madrpc.engine_protocol` over its end
of a socket pair (:mod:`madrpc.engine_channel`): READY once loaded, OUT after each step
or flush, RESET when a step had to be stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque

from . import engine_protocol as ep
from .bundle import Bundle
from .bundle import decode as decode_bundle
from .engine_channel import Channel, ChannelClosed
from .engine_protocol import POOLED, Mode, ResetReason
from .engine_setup import die_with_parent, limit_data
from .errors import ScriptError
from .runtime import Event, EventKind, Runtime, init_engine, v8_version

__all__ = ["Engine", "main"]

log = logging.getLogger(__name__)

WATCHDOG_TICK_S = 0.01
"""How often a running step's time budget is checked."""
IDLE_TICK_S = 0.5
"""How often an idle engine checks that its worker is still alive."""
RESET_FLUSH_TIMEOUT_S = 1.0
"""After a termination, how long collecting the finished replies may take."""
ANSWER_LOCK_WAIT_S = 0.1
"""How long an isolate's thread that finished a step waits for the loop to end its turn
before it hands the outcome over instead of answering it itself (a bound, not a delay:
a turn takes microseconds)."""
WAKE_READ_BYTES = 4096
"""How much one read of the wake-up pipe takes (V8's thread writes one byte per event)."""
LOAD_ERROR_SEND_TIMEOUT_S = 2.0
"""How long a script that failed to load waits for the worker to take its LOADERR."""


class Engine:
    """The engine's loop around its V8 context(s), reading its link to the worker.

    Pooled (the default): one context, reused by every request; its slot is ``b""``.
    Fresh (``--fresh-context``): every request gets a context of its own, named by the
    request's key (its slot), built ahead of time while the engine is idle and dropped
    when the request has answered. Either way one step runs at a time; a pooled engine may
    hold the worker's next step, and starts it the moment the one before ends.
    """

    def __init__(
        self, channel: Channel, bundle: Bundle, max_memory_mb: int, fresh: bool = False,
    ) -> None:
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
        self._parent = os.getppid()
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
        self.channel = channel

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

    def run(self) -> None:
        info = {"methods": self.methods, "v8": v8_version(), "pid": os.getpid()}
        self.channel.send_blocking(ep.ready_message(info))
        link = self.channel.fileno()
        poller = select.poll()
        poller.register(link, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            timeout_s = WATCHDOG_TICK_S if self._running is not None else IDLE_TICK_S
            ready = dict(poller.poll(int(timeout_s * 1000)))
            with self._lock:
                if not self._serve(ready, link):
                    return

    def _serve(self, ready: dict[int, int], link: int) -> bool:
        """One turn of the loop (under the lock); False when the engine should exit."""
        if self._wake_read in ready:
            self._read_wakeups()
        while self._events:
            self.handed_over += 1
            self._on_outcome(*self._events.popleft())
        if link in ready and not self._read_link():
            return False
        self._watchdog()
        self._start_next()
        if self._running is None:
            if self.fresh and self._spare is None and not self._steps:
                self._spare = self._build(POOLED)   # ready for the next request
            if os.getppid() != self._parent:
                log.warning("engine %d: worker is gone, exiting", os.getpid())
                return False
        return True

    def _read_wakeups(self) -> None:
        try:   # one read takes every byte written so far (a read that fills up may leave more)
            while len(os.read(self._wake_read, WAKE_READ_BYTES)) == WAKE_READ_BYTES:
                pass
        except BlockingIOError:
            pass

    def _read_link(self) -> bool:
        """Act on what the worker sent; False when it said STOP or is gone."""
        try:
            messages = self.channel.receive()
        except ChannelClosed:
            log.warning("engine %d: the worker closed the link, exiting", os.getpid())
            return False
        for frames in messages:
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
        self.channel.send_blocking(ep.output_message(mode, outbox, slot))
        if self.fresh and (ep.answered(outbox, slot) or self._dropping == slot):
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
        self.channel.send_blocking(ep.reset_message(reason, culprit, outbox, detail, slot,
                                                    self._crossing))

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
        self.channel.close()


def _read_bundle(path: str, origin: str) -> Bundle:
    with open(path, "rb") as handle:
        return decode_bundle(handle.read(), origin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="madrpc.engine", description=__doc__)
    parser.add_argument("--fd", type=int, required=True,
                        help="This engine's end of its link to the worker (a socket).")
    parser.add_argument("--bundle", required=True,
                        help="The script bundle's file (madrpc.bundle.Bundle.encode).")
    parser.add_argument("--origin", default="",
                        help="The folder the bundle came from, for messages.")
    parser.add_argument("--max-memory-mb", type=int, default=256)
    parser.add_argument("--v8-flag", action="append", default=[])
    parser.add_argument("--fresh-context", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s engine %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the worker decides when engines stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    if args.max_memory_mb:
        limit_data(args.max_memory_mb)
        flags = [f"--max-old-space-size={2 * args.max_memory_mb}", *args.v8_flag]
    else:
        flags = list(args.v8_flag)
    init_engine(flags)
    channel = Channel(socket.socket(fileno=args.fd))
    try:
        engine = Engine(channel, _read_bundle(args.bundle, args.origin), args.max_memory_mb,
                        fresh=args.fresh_context)
    except (ScriptError, OSError) as exc:
        with contextlib.suppress(ChannelClosed, TimeoutError):
            channel.send(ep.load_error_message(str(exc)))
            channel.flush_blocking(LOAD_ERROR_SEND_TIMEOUT_S)
        channel.close()
        return 1
    try:
        engine.run()
    except ChannelClosed:
        log.warning("engine %d: the worker closed the link, exiting", os.getpid())
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
