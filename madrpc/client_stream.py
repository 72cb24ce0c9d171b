"""A stream call's state on the client: the items that arrived and wait to be taken,
and the credit owed to the broker for the items taken.

Pure (no sockets, no clocks): :class:`~madrpc.client_core.CallBook` keeps one
:class:`StreamState` per stream call and turns its decisions into frames. The wire
contract is in docs/protocol.md: partial replies carry items, the final reply is
``{"items": N}`` (or an error), and the client grants more with ``_more`` once its user
has taken ``ceil(window / 2)`` items since the last grant.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, RpcError
from .jsonrpc import DEFAULT_STREAM_WINDOW, MAX_STREAM_WINDOW

__all__ = ["StreamState", "check_window"]


def check_window(window: Any) -> int:
    """The stream window to ask for: ``window``, or the default when it is None;
    ValueError unless it is an integer in [1, MAX_STREAM_WINDOW]."""
    if window is None:
        return DEFAULT_STREAM_WINDOW
    if isinstance(window, bool) or not isinstance(window, int) or not (
            1 <= window <= MAX_STREAM_WINDOW):
        raise ValueError(f"window must be an integer in [1, {MAX_STREAM_WINDOW}]")
    return window


@dataclass(eq=False)
class StreamState:
    """What the client knows of one stream: items not yet taken, counts, credit owed."""

    window: int
    """Items the producer may run ahead of what the user has taken."""
    items: deque[Any] = field(default_factory=deque)
    """Items that arrived and wait for the user, oldest first."""
    received: int = 0
    """Items that arrived in all (taken or not)."""
    taken_since_ack: int = 0
    """Items the user took since the last ``_more`` (the credit not yet given back)."""

    @property
    def ack_every(self) -> int:
        """After how many taken items a ``_more`` goes out: ``ceil(window / 2)``."""
        return -(-self.window // 2)

    def add(self, items: list[Any]) -> None:
        """Keep the items of a partial reply, in order."""
        self.items.extend(items)
        self.received += len(items)

    def take(self) -> tuple[Any, int]:
        """The oldest waiting item (IndexError when none waits), and how many items to
        acknowledge now: the count taken since the last acknowledgement once it reaches
        :attr:`ack_every`, else 0."""
        item = self.items.popleft()
        self.taken_since_ack += 1
        if self.taken_since_ack < self.ack_every:
            return item, 0
        count, self.taken_since_ack = self.taken_since_ack, 0
        return item, count

    def end_error(self, result: Any, method: str) -> RpcError | None:
        """None if ``result``, the stream's final result, is ``{"items": N}`` with N the
        number of items that arrived; else the error the stream ends with."""
        count = result.get("items") if isinstance(result, dict) else None
        if isinstance(count, bool) or not isinstance(count, int):
            return RpcError(ErrorCode.INTERNAL_ERROR,
                            f"Internal error: the stream of {method!r} ended with "
                            f'{result!r}, not {{"items": N}}')
        if count != self.received:
            return RpcError(ErrorCode.INTERNAL_ERROR,
                            f"Internal error: items were lost: the stream of {method!r} "
                            f"sent {count} item(s), {self.received} arrived")
        return None
