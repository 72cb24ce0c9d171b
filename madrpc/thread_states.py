"""Python thread states kept alive for the V8 isolates' threads between their callbacks.

mini-racer runs each isolate on a thread Python did not start and reports every outcome
through a ctypes callback on that thread. Such a thread has no Python thread state, so
each callback creates one (with a fresh 16 KiB frame stack, mapped and unmapped) and
deletes it on return: tens of microseconds on the path of every call (single call p50
0.79 → 0.76 ms in the bench). Taking one more reference on the state
(``PyGILState_Ensure`` with no ``Release``) keeps it, and later callbacks reuse it.

The reference is never given back: a thread state belongs to its thread, and the thread
of a context being dropped may be gone or stuck (an aborted or terminated isolate). So
each pinned state outlives its thread, and :data:`MAX_PINNED_THREADS` bounds what that
costs over a process's life (about 20 KiB each); past it, threads run unpinned as before.
"""

from __future__ import annotations

import ctypes
import threading

__all__ = ["MAX_PINNED_THREADS", "pin_current_thread", "pinned_threads"]

MAX_PINNED_THREADS = 32
"""Thread states a process pins at most. An engine pins one per pooled context it builds
(one, plus one per rebuild after a reset); fresh contexts are never pinned."""

_local = threading.local()
_lock = threading.Lock()
_pinned = 0


def pin_current_thread() -> bool:
    """Keep the calling thread's Python thread state once the callback running now
    returns. Call with the GIL held, from a thread Python did not start (an isolate's).
    True when the thread is pinned (by this call or an earlier one)."""
    global _pinned
    if getattr(_local, "pinned", False):
        return True
    with _lock:
        if _pinned >= MAX_PINNED_THREADS:
            return False
        _pinned += 1
    ctypes.pythonapi.PyGILState_Ensure()
    _local.pinned = True   # lives in the thread state it keeps
    return True


def pinned_threads() -> int:
    """Thread states pinned so far in this process."""
    return _pinned
