"""An engine process: one V8 context serving its worker over a private ipc socket.

Started by the worker as ``python -m madrpc.engine ...``. A process per context means a
fatal V8 error (some out-of-memory paths abort the process instead of raising) costs one
context, never the worker, and the Python side of each context has its own GIL.

Engine <-> worker messages (DEALER here, ROUTER in the worker):
  engine -> worker  READY <json>          context built, script loaded
                    LOADERR <text>        the script failed to load (the engine exits 1)
                    OUT <S|F> <outbox>    a step (S) or a flush (F) finished
                    RESET <reason> <culprit> <outbox> <detail>
                                          a step was stopped (timeout, oom, error); the
                                          context has been rebuilt
  worker -> engine  STEP <payload>        run one step (js/bootstrap.js describes payload)
                    STOP                  exit
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import resource
import signal
import sys
import time
from collections import deque
from typing import Any

import orjson
import zmq

from .runtime import Event, EventKind, Runtime, ScriptError, init_engine, v8_version
from .sockets import make_socket, send_frames

__all__ = ["Engine", "main"]

log = logging.getLogger(__name__)

WATCHDOG_TICK_S = 0.01
"""How often a running step's time budget is checked."""
IDLE_TICK_S = 0.5
"""How often an idle engine checks that its worker is still alive."""
RESET_FLUSH_TIMEOUT_S = 1.0
"""After a termination, how long collecting the finished replies may take."""
DATA_LIMIT_HEADROOM_MB = 512
"""RLIMIT_DATA = 2 x the heap limit + this: a huge ArrayBuffer fails inside JavaScript."""
ENGINE_HWM = 10_000
"""Queue bound of the engine's socket (the worker sends one step at a time anyway)."""


class Engine:
    """The engine's socket loop around one :class:`Runtime`."""

    def __init__(
        self, endpoint: str, identity: bytes, script_path: str, max_memory_mb: int
    ) -> None:
        self.script_path = script_path
        self.max_memory_bytes = max_memory_mb * 1024 * 1024
        self._events: deque[Event] = deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._steps: deque[bytes] = deque()
        self._flush_wanted = False
        self._mode = b""
        self._segment = (-1, 0.0)
        self._flush_started = 0.0
        self._stopping: tuple[str, int, str] | None = None
        self._parent = os.getppid()
        with open(script_path, encoding="utf-8") as handle:
            self.source = handle.read()
        self.runtime = self._build()   # raises ScriptError before any socket exists
        self.context: zmq.Context[Any] = zmq.Context()
        self.socket = make_socket(
            self.context, zmq.DEALER, hwm=ENGINE_HWM, identity=identity, linger_ms=1000
        )
        self.socket.connect(endpoint)

    def _build(self) -> Runtime:
        return Runtime(
            self.source, self.script_path, self._on_event, max_memory_bytes=self.max_memory_bytes
        )

    def _on_event(self, event: Event) -> None:
        """Runs on the isolate's thread: hand over and wake the loop."""
        self._events.append(event)
        os.write(self._wake_write, b"!")

    def run(self) -> None:
        info = {"methods": self.runtime.methods, "v8": v8_version(), "pid": os.getpid()}
        send_frames(self.socket, [b"READY", orjson.dumps(info)], block=True)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        while True:
            timeout_s = WATCHDOG_TICK_S if self.runtime.busy else IDLE_TICK_S
            ready = dict(poller.poll(int(timeout_s * 1000)))
            if self._wake_read in ready:
                self._read_wakeups()
            while self._events:
                self._on_outcome(self._events.popleft())
            if self.socket in ready and not self._read_socket():
                return
            self._watchdog()
            self._start_next()
            if not self.runtime.busy and os.getppid() != self._parent:
                log.warning("engine %d: worker is gone, exiting", os.getpid())
                return

    def _read_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _read_socket(self) -> bool:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            if frames[0] == b"STEP" and len(frames) >= 2:
                self._steps.append(frames[1])
            elif frames[0] == b"STOP":
                return False

    def _start_next(self) -> None:
        runtime = self.runtime
        if runtime.busy:
            return
        if self._steps:
            self._mode = b"S"
            runtime.step(self._steps.popleft())
        elif self._flush_wanted:
            self._flush_wanted = False
            self._mode = b"F"
            runtime.flush()

    def _watchdog(self) -> None:
        """Terminate a JavaScript segment that outlived its budget."""
        runtime = self.runtime
        if not runtime.busy:
            return
        now = time.monotonic()
        if self._stopping is not None:
            if self._mode == b"R" and now - self._flush_started > RESET_FLUSH_TIMEOUT_S:
                runtime.terminate()
            return
        sequence, key, budget_ms = runtime.marker()
        if sequence != self._segment[0]:
            self._segment = (sequence, now)
            return
        elapsed_ms = (now - self._segment[1]) * 1000
        if key and elapsed_ms > budget_ms:
            detail = f"ran {elapsed_ms:.0f} ms, budget {budget_ms:.0f} ms"
            self._stopping = ("timeout", int(key), detail)
            runtime.terminate()

    def _on_outcome(self, event: Event) -> None:
        kind = event.kind
        if kind == EventKind.NOTIFY:
            self._flush_wanted = True
        elif kind == EventKind.DONE:
            if self._mode == b"R":
                self._reset(event.data)
            else:
                send_frames(self.socket, [b"OUT", self._mode, event.data], block=True)
        elif kind == EventKind.TERMINATED:
            if self._mode == b"R":
                self._reset(b"")
                return
            if self._stopping is None:
                self._stopping = ("timeout", self._running_key(), "terminated")
            self._mode = b"R"
            self._flush_started = time.monotonic()
            self.runtime.flush()   # collect what finished before the stop
        elif kind == EventKind.OUT_OF_MEMORY:
            self._stopping = ("oom", self._running_key(), "memory limit")
            self._reset(b"")
        else:  # ERROR: the step itself failed
            detail = event.data.decode(errors="replace")
            if self._mode == b"R":
                self._reset(b"")
            else:
                self._stopping = ("error", 0, detail)
                self._reset(b"")

    def _running_key(self) -> int:
        return int(self.runtime.marker()[1])

    def _reset(self, outbox: bytes) -> None:
        reason, culprit, detail = self._stopping or ("error", 0, "")
        self._stopping = None
        self._mode = b""
        self._flush_wanted = False
        self.runtime.close()
        self.runtime = self._build()
        self._segment = (-1, 0.0)
        log.info("engine %d: context rebuilt after %s (%s)", os.getpid(), reason, detail)
        send_frames(
            self.socket, [b"RESET", reason.encode(), b"%d" % culprit, outbox, detail.encode()],
            block=True,
        )

    def close(self) -> None:
        self.runtime.close()
        self.socket.close(linger=1000)
        self.context.term()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker that started it dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _limit_data(max_memory_mb: int) -> None:
    limit = (2 * max_memory_mb + DATA_LIMIT_HEADROOM_MB) * 1024 * 1024
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not set RLIMIT_DATA: %s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="madrpc.engine", description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--max-memory-mb", type=int, default=256)
    parser.add_argument("--v8-flag", action="append", default=[])
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s engine %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the worker decides when engines stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if args.max_memory_mb:
        _limit_data(args.max_memory_mb)
        flags = [f"--max-old-space-size={2 * args.max_memory_mb}", *args.v8_flag]
    else:
        flags = list(args.v8_flag)
    init_engine(flags)
    try:
        engine = Engine(args.endpoint, args.identity.encode(), args.script, args.max_memory_mb)
    except (ScriptError, OSError) as exc:
        context: zmq.Context[Any] = zmq.Context()
        socket = make_socket(
            context, zmq.DEALER, hwm=ENGINE_HWM, identity=args.identity.encode(), linger_ms=2000
        )
        socket.connect(args.endpoint)
        send_frames(socket, [b"LOADERR", str(exc).encode()], block=True)
        socket.close()
        context.term()
        return 1
    try:
        engine.run()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
