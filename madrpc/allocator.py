"""glibc's allocator, set for a process that moves large messages (the broker, a worker).

By default glibc hands memory above a moving threshold straight back to the kernel when it
is freed: an ``mmap``'d block is unmapped, and free space at the top of a heap beyond twice
that threshold is trimmed. A broker or worker passing 1 MiB messages allocates and frees
a few such buffers per call, so every call faults all their pages in again (about 740
page faults per 1 MiB round trip in the broker, 480 in the worker; on a virtual machine
that is most of their system time). Fixing both thresholds keeps those pages for the next
message. What a process may keep is bounded: freed memory beyond ``TRIM_THRESHOLD_BYTES``
at the top of a heap still goes back, and blocks over ``MMAP_THRESHOLD_BYTES`` are still
mapped and unmapped each time.

Only the server roles' processes call :func:`keep_freed_memory`, never a library import
in someone else's process. glibc's own environment variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``) take precedence: a process started with either is left as
it is.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "keep_freed_memory"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024
"""Blocks below this come from the heap (and are reused); larger ones are mapped each time."""
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024
"""Free memory at the top of a heap kept for reuse before glibc returns the rest."""
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""mallopt(3)'s parameter numbers (glibc's malloc.h)."""
GLIBC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; True if they were set (False
    on another C library, or when the environment already sets either)."""
    if any(name in os.environ for name in GLIBC_ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    if not done:
        log.debug("mallopt refused the allocator thresholds")
    return done
