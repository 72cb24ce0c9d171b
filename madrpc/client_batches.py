"""How ``Client.map`` sends its calls: encoded requests joined into JSON-RPC batches.
Pure.

One frame carrying 32 requests costs the client one send and the broker one receive
and one parse instead of 32, and comes back as one frame; the broker still dispatches
each member on its own (and answers the batch once all are done).
"""

from __future__ import annotations

__all__ = ["batch_frames"]


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
