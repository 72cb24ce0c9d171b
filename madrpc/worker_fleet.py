"""A worker's engines as a whole: starting the first ones, rolling over to new code,
retiring the old ones and replacing those that die.

The mechanism is :class:`~madrpc.engine_pool.EnginePool`'s and the bookkeeping
:class:`~madrpc.worker_state.WorkerState`'s; this part says what to do with both. What
an engine *says* is the worker's business: ``read_engines`` hands its messages over.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from .bundle import Bundle
from .engine_pool import EnginePool
from .errors import WorkerStartError
from .worker_state import WorkerState

__all__ = ["ENGINE_START_TIMEOUT_S", "LOADERR_GRACE_MS", "EngineFleet"]

log = logging.getLogger(__name__)

ENGINE_START_TIMEOUT_S = 60.0
"""How long engines may take to build their context and load the script."""
LOADERR_GRACE_MS = 1000
"""After an engine exits at start-up, how long its load error report may take to arrive."""
_OOM_SIGNALS = {-signal.SIGTRAP, -signal.SIGABRT, -signal.SIGKILL, -signal.SIGSEGV}


class EngineFleet:
    """Start, roll over, retire and replace the worker's engine processes."""

    def __init__(self, pool: EnginePool, state: WorkerState, contexts: int,
                 stop_requested: threading.Event,
                 read_engines: Callable[[float, bool], None]) -> None:
        self.pool = pool
        self.state = state
        self.contexts = contexts
        self._stop_requested = stop_requested
        self._read_engines = read_engines
        """Reads what the engines said: (now, starting) -> None; raises WorkerStartError
        at start-up when an engine could not load the script."""

    def start(self, bundle: Bundle, name: str) -> None:
        """One engine per context with ``bundle``; returns once one is ready (raises
        WorkerStartError when none can start; ``name`` names the script in messages)."""
        pool, state = self.pool, self.state
        pool.use(bundle)
        for _ in range(self.contexts):
            pool.spawn(state.add_engine())
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while not any(e.ready for e in state.engines.values()):
            if self._stop_requested.is_set():
                raise WorkerStartError("stopped while starting")
            if time.monotonic() > deadline:
                raise WorkerStartError(
                    f"engines did not start within {ENGINE_START_TIMEOUT_S:.0f} s")
            if pool.wait(0.1):
                self._read_engines(time.monotonic(), True)
            dead = pool.first_exit()
            if dead is not None:
                # Its LOADERR may still be on the way: read it before giving up.
                if pool.wait(LOADERR_GRACE_MS / 1000):
                    self._read_engines(time.monotonic(), True)
                raise WorkerStartError(
                    f"engine process exited with status {dead.popen.returncode} while "
                    f"loading {name}")

    def stop_all(self, now: float) -> None:
        """Stop every engine (a first version that failed to load)."""
        for slot in list(self.state.engines):
            self.pool.release(slot)
            self.state.remove_engine(slot, now)

    def roll_to(self, bundle: Bundle) -> None:
        """Start one engine per context with ``bundle``; each old engine retires
        (finishing what it holds, on the version it started) when a new one is ready."""
        self.pool.use(bundle)
        for engine in list(self.state.engines.values()):
            if not engine.retiring:
                self.pool.spawn(self.state.add_engine(), replaces=engine.index)

    def check(self, now: float) -> None:
        """Stop engines that retired and hold nothing; replace engines that died."""
        pool, state = self.pool, self.state
        for slot in state.idle_retired():
            pool.release(slot)
            state.remove_engine(slot, now)
        for proc, code in pool.exited():
            detail = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
            engine = state.engines.get(proc.slot)
            if engine is None or engine.retiring or proc.replaces is not None:
                pool.current.pop(proc.slot, None)
                state.remove_engine(proc.slot, now)
                continue
            log.warning("engine %d (pid %d) died: %s; starting a new one",
                        proc.slot, proc.popen.pid, detail)
            state.on_engine_died(proc.slot, detail, code in _OOM_SIGNALS, now)
            pool.spawn(proc.slot)
