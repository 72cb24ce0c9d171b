"""What an engine process sets up about itself before it loads V8: to die with the worker
that started it, and a data segment limit that makes a huge allocation fail inside
JavaScript instead of taking the machine's memory."""

from __future__ import annotations

import ctypes
import logging
import resource
import signal
import sys

__all__ = ["DATA_LIMIT_HEADROOM_MB", "die_with_parent", "limit_data"]

log = logging.getLogger(__name__)

DATA_LIMIT_HEADROOM_MB = 512
"""RLIMIT_DATA = 2 x the heap limit + this: a huge ArrayBuffer fails inside JavaScript."""
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the worker that started it dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass


def limit_data(max_memory_mb: int) -> None:
    """Cap this process's data segment for a V8 heap of ``max_memory_mb``."""
    limit = (2 * max_memory_mb + DATA_LIMIT_HEADROOM_MB) * 1024 * 1024
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not set RLIMIT_DATA: %s", exc)
