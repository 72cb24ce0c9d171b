"""When a client's calls are due to be sent again: a heap, soonest first. Pure.

A client polls its socket in short slices and asks, each time, when the next call needs
attention; scanning every call in flight for that cost O(calls) per poll, which a
``map`` with 1,000 calls in flight paid thousands of times a second. Here each change is
O(log n): an entry whose call completed or was rescheduled since is stale and skipped
when it comes up. A call's ``resend_at`` is never past its deadline, so the same heap
tells when calls expire.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

__all__ = ["STALE_TIMERS_FACTOR", "STALE_TIMERS_SLACK", "ResendTimers", "Timed"]

STALE_TIMERS_FACTOR = 2
STALE_TIMERS_SLACK = 1024
"""The heap is rebuilt from the calls in flight when it holds more than factor x calls +
slack entries (those of completed calls would otherwise wait for their time)."""


class Timed(Protocol):
    """What the timers read of a call (:class:`~madrpc.client_core.PendingCall`)."""

    @property
    def id(self) -> int: ...
    @property
    def resend_at(self) -> float: ...
    @property
    def attempts(self) -> int: ...


Call = TypeVar("Call", bound=Timed)


class ResendTimers(Generic[Call]):
    """(resend_at, call id) for the calls of one book (``calls``, by id)."""

    def __init__(self, calls: Mapping[int, Call]) -> None:
        self._calls = calls
        self._heap: list[tuple[float, int]] = []

    def schedule(self, call: Call) -> None:
        """``call`` was sent, or its resend moved: it is due at ``call.resend_at``."""
        heap = self._heap
        if len(heap) > STALE_TIMERS_FACTOR * len(self._calls) + STALE_TIMERS_SLACK:
            heap[:] = [(c.resend_at, c.id) for c in self._calls.values() if c.attempts]
            heapq.heapify(heap)
        heapq.heappush(heap, (call.resend_at, call.id))

    def take_ripe(self, now: float) -> list[Call]:
        """Calls due by ``now``, taken off the heap (schedule them again when resent)."""
        heap, ripe = self._heap, {}
        while heap and heap[0][0] <= now:
            call = self._live(heapq.heappop(heap))
            if call is not None:
                ripe[call.id] = call
        return list(ripe.values())

    def soonest(self) -> float | None:
        """When the next call is due (None when none is scheduled)."""
        heap = self._heap
        while heap and self._live(heap[0]) is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _live(self, entry: tuple[float, int]) -> Call | None:
        call = self._calls.get(entry[1])
        return call if call is not None and call.resend_at == entry[0] else None
