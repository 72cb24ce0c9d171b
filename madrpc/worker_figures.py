"""A worker's own figures, sent to the broker with every heartbeat. Pure: ``now`` in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .metrics import CallStats, RateMeter
from .worker_requests import RequestBook
from .worker_tables import EngineSlot, Stage

__all__ = ["WorkerFigures"]


class WorkerFigures:
    """Requests completed, per-method latency and errors, the completion rate, restarts."""

    def __init__(self, collect_metrics: bool = True) -> None:
        self.collect_metrics = collect_metrics
        """Keep per-method histograms (off only to measure their cost)."""
        self.methods: dict[str, CallStats] = {}
        self.rate = RateMeter()
        self.completed = 0
        self._rated = 0
        """Completions already counted into ``rate`` (fed once per snapshot, not per reply)."""
        self.engine_restarts = 0
        self.stream_items = 0
        """Items this worker's streams sent."""

    def record(self, method: str, latency_s: float, code: int | None) -> None:
        """A request finished (``code``: its error code, None for a result)."""
        self.completed += 1
        if not self.collect_metrics:
            return
        stats = self.methods.get(method)
        if stats is None:
            stats = self.methods[method] = CallStats()
        stats.record(latency_s, code)

    def snapshot(
        self, now: float, engines: Iterable[EngineSlot], requests: RequestBook
    ) -> dict[str, Any]:
        """The heartbeat body: what the engines and requests are doing now, rates, totals
        and per-method figures."""
        engines = list(engines)
        if self.completed > self._rated:
            self.rate.add(now, self.completed - self._rated)
            self._rated = self.completed
        totals = CallStats()
        for stats in self.methods.values():
            totals.merge(stats)
        return {
            "busy": sum(1 for e in engines if e.busy),
            "contexts": sum(1 for e in engines if not e.retiring),
            "ready_contexts": sum(1 for e in engines if e.ready and not e.retiring),
            "held": len(requests),
            "queued": len(requests.queue),
            "parked": requests.count(Stage.PARKED),
            "req_per_s": self.rate.rate(now),
            "engine_restarts": self.engine_restarts,
            "stream_items": self.stream_items,
            "totals": totals.to_wire(),
            "methods": {name: stats.to_wire() for name, stats in self.methods.items()},
        }
