"""The requests a worker holds: by its own key, by the broker's key, and the run queue.

A table with its own small policy: which queued requests go into one engine step
(:meth:`RequestBook.take_batch`). Pure: no sockets, no clocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from . import protocol as p
from .table_view import TableView
from .worker_tables import LocalRequest, Stage

__all__ = ["RequestBook"]


class RequestBook(TableView[int, LocalRequest]):
    """Requests by local key (a read-only mapping), plus lookups and the run queue."""

    def __init__(self) -> None:
        super().__init__({})
        self.by_key: dict[bytes, int] = {}
        """Broker key -> local key."""
        self.queue: deque[int] = deque()
        """Local keys waiting for an engine, oldest first (stale entries are skipped)."""
        self._next_local = 1

    def add(
        self, meta: p.RequestMeta, method: str, body: bytes, now: float, wall_ms: float,
        cpu_limit_ms: float, memory_mb: int,
    ) -> LocalRequest:
        """A request from the broker, queued behind the others."""
        local = self._next_local
        self._next_local += 1
        request = LocalRequest(
            local, meta.key, method, body, wall_ms + meta.timeout_ms, cpu_limit_ms,
            meta.depth, now, memory_mb, solo=memory_mb > 0,
        )
        self._rows[local] = request
        self.by_key[meta.key] = local
        self.queue.append(local)
        return request

    def find(self, broker_key: bytes) -> LocalRequest | None:
        local = self.by_key.get(broker_key)
        return self._rows.get(local) if local is not None else None

    def pop(self, local: int) -> LocalRequest | None:
        """Remove and return the request (None if it is not held)."""
        request = self._rows.pop(local, None)
        if request is not None:
            self.by_key.pop(request.key, None)
        return request

    def requeue(self, request: LocalRequest, solo: bool) -> None:
        """Back to the front of the queue, to run again from the start."""
        request.stage = Stage.QUEUED
        request.engine = None
        request.solo = request.solo or solo
        self.queue.appendleft(request.local)

    def take_batch(
        self, estimate_s: Mapping[str, float], threshold_s: float, max_batch: int,
        batching: bool = True,
    ) -> list[LocalRequest]:
        """Requests for one step: the oldest, plus quick ones after it while their
        estimated run times (``estimate_s`` by method) add up to at most ``threshold_s``.
        A request of unknown speed, a slow one or a solo one runs alone."""
        batch: list[LocalRequest] = []
        spent = 0.0
        queue = self.queue
        requests = self._rows
        while queue and len(batch) < max_batch:
            request = requests.get(queue[0])
            if request is None or request.stage is not Stage.QUEUED:
                queue.popleft()
                continue
            estimate = estimate_s.get(request.method)
            quick = (batching and estimate is not None and estimate < threshold_s
                     and not request.solo)
            if batch and (not quick or spent + (estimate or 0.0) > threshold_s):
                break
            queue.popleft()
            batch.append(request)
            spent += estimate or 0.0
            if not quick:
                break
        return batch

    def holding_credit(self) -> int:
        """Requests that hold a unit of the worker's credit."""
        return sum(1 for r in self._rows.values() if r.holds_credit)

    def count(self, stage: Stage) -> int:
        return sum(1 for r in self._rows.values() if r.stage is stage)

    def clear(self) -> list[LocalRequest]:
        """Forget every request; returns them."""
        held = list(self._rows.values())
        self._rows.clear()
        self.by_key.clear()
        self.queue.clear()
        return held
