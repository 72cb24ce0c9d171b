"""Where a large step payload is cut to cross into V8 in pieces (pure).

mini-racer copies each string it hands to V8 into a buffer of its own first. Its
allocator (Chromium's PartitionAlloc) keeps and reuses buffers up to ~960 KiB; a larger
one is mapped fresh for each value and unmapped after it, so the kernel faults in and
clears every page of it each time. For a 1 MiB request that was ~0.8 ms of the engine's
time per call, and every step payload from ~960 KiB on took ~25% longer per byte than one
just below. :class:`madrpc.runtime.Runtime` hands a payload longer than
``STEP_PIECE_BYTES`` over in pieces (the runtime's ``step`` joins them), each cut where a
UTF-8 character starts, so no piece ends in half a character.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STEP_PIECE_BYTES", "utf8_pieces"]

STEP_PIECE_BYTES: Final = 512 * 1024
"""The longest piece of a step payload handed to V8 at once (bytes of UTF-8): well under
the size from which mini-racer's buffers are mapped afresh for every value."""

_CONTINUATION_MASK: Final = 0xC0
_CONTINUATION: Final = 0x80


def utf8_pieces(data: bytes, most: int = STEP_PIECE_BYTES) -> list[tuple[int, int]]:
    """``(start, end)`` of the consecutive pieces ``data`` is cut into: each at most
    ``most`` bytes (at least 4), each ending where a UTF-8 character starts (or at the
    end), together the whole of ``data``; one piece when it is not longer than ``most``."""
    if most < 4:
        raise ValueError(f"pieces of at least 4 bytes (a whole UTF-8 character), not {most}")
    bounds: list[tuple[int, int]] = []
    start = 0
    size = len(data)
    while size - start > most:
        end = start + most
        while data[end] & _CONTINUATION_MASK == _CONTINUATION and end > start + 1:
            end -= 1   # data[end] continues the character before it: cut before that one
        bounds.append((start, end))
        start = end
    bounds.append((start, size))
    return bounds
