"""How ``map`` sends its calls, for both clients: booked in the call book, encoded, and
joined into JSON-RPC batches (:func:`batch_frames` is pure; :func:`send_batch` takes the
client's send function).

One frame carrying 32 requests costs the client one send and the broker one receive
and one parse instead of 32, and comes back as one frame; the broker still dispatches
each member on its own (and answers the batch once all are done).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .client_args import AUTO_KEY
from .client_core import CallBook, PendingCall
from .errors import MadrpcError

__all__ = ["batch_frames", "send_batch"]


def send_batch(
    book: CallBook, send: Callable[[bytes], None], method: str, items: list[Any],
    timeout: float | None, now: float, cpu_limit_ms: float | None,
    max_memory_mb: float | None, max_bytes: int,
) -> list[PendingCall]:
    """Book a call of ``method`` per item and ``send`` them as JSON-RPC batches of at most
    ``max_bytes``. A failure to encode or send ends every call of the batch with it, and
    is raised: nothing is left behind."""
    calls: list[PendingCall] = []
    try:
        frames = []
        for params in items:
            calls.append(book.new_call(method, params, timeout, now, AUTO_KEY, cpu_limit_ms,
                                       max_memory_mb))
            frames.append(book.encode(calls[-1], now))
        for frame in batch_frames(frames, max_bytes):
            send(frame)
    except MadrpcError as exc:
        for call in calls:
            book.abandon(call, exc)
        raise
    return calls


def batch_frames(frames: list[bytes], max_bytes: int) -> list[bytes]:
    """Encoded requests joined into JSON-RPC batches of at most ``max_bytes`` each, in
    order; a request that fits with no other goes alone, as itself."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 1
    for frame in frames:
        if group and size + len(frame) + 1 > max_bytes:
            out.append(_join(group))
            group, size = [], 1
        group.append(frame)
        size += len(frame) + 1
    if group:
        out.append(_join(group))
    return out


def _join(group: list[bytes]) -> bytes:
    return group[0] if len(group) == 1 else b"[" + b",".join(group) + b"]"
