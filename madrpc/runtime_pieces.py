"""Long step payloads and outboxes cross between Python and V8 in pieces (pure parts).

mini-racer copies each string it hands to V8 into a buffer of its own first. Its
allocator (Chromium's PartitionAlloc) keeps and reuses buffers up to ~960 KiB; a larger
one is mapped fresh for each value and unmapped after it, so the kernel faults in and
clears every page of it each time. For a 1 MiB request that was ~0.8 ms of the engine's
time per call, and every step payload from ~960 KiB on took ~25% longer per byte than one
just below. :class:`madrpc.runtime.Runtime` hands a payload longer than
``STEP_PIECE_BYTES`` over in pieces (the runtime's ``step`` joins them), each cut where a
UTF-8 character starts, so no piece ends in half a character.

mini-racer builds a step's result the same way, so a long outbox leaves V8 in pieces
too: ``js/bootstrap.js`` keeps it and returns ``OUT_PIECES_MARK`` and the number of
pieces; the runtime then fetches them one crossing each (each started from the callback
of the one before, on the isolate's thread) and :class:`OutboxPieces` puts them together.
"""

from __future__ import annotations

from typing import Final

__all__ = ["OUT_PIECES_MARK", "STEP_PIECE_BYTES", "OutboxPieces", "utf8_pieces"]

STEP_PIECE_BYTES: Final = 512 * 1024
"""The longest piece of a step payload handed to V8 at once (bytes of UTF-8): well under
the size from which mini-racer's buffers are mapped afresh for every value."""

OUT_PIECES_MARK: Final = b"\0"
"""A step's outcome that starts with this byte (then the number of pieces, in digits)
stands for a long outbox that JavaScript holds: ``OUT_PIECE_UNITS`` in js/bootstrap.js
is each piece's length (256 Ki UTF-16 code units: at most 768 KiB of UTF-8). No outbox
starts with it: each line starts with a command letter."""

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


class OutboxPieces:
    """The pieces of a long outbox as they arrive, put back together."""

    def __init__(self) -> None:
        self._left = 0
        self._pieces: list[bytes] = []

    @staticmethod
    def is_mark(outcome: bytes) -> bool:
        return outcome[:1] == OUT_PIECES_MARK

    def expect(self, mark: bytes) -> None:
        """``mark`` (an outcome for which :meth:`is_mark`) says how many pieces follow."""
        self._left = int(mark[1:])
        if self._left <= 0:
            raise ValueError(f"an outbox in {self._left} pieces")

    def add(self, piece: bytes) -> bytes | None:
        """Take the next piece: the whole outbox once it was the last, else None."""
        self._pieces.append(piece)
        self._left -= 1
        return None if self._left > 0 else self.before(b"")

    def before(self, outbox: bytes) -> bytes:
        """``outbox`` after the pieces taken so far (none, unless fetching them was
        stopped: then JavaScript sends the rest, and its later output, with its next
        outcome)."""
        self._left = 0
        if not self._pieces:
            return outbox
        pieces, self._pieces = self._pieces, []
        return b"".join([*pieces, outbox])
