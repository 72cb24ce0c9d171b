"""The broker's own figures for ``_metrics``: counters, errors, drops, per-method latency,
the request rate. Pure: ``now`` in."""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from typing import Any

from .metrics import MAX_ERROR_CODES, CallStats, Histogram, RateMeter

__all__ = ["RATE_HISTORY_S", "REFUSED_PEER_MEMORY", "BrokerFigures"]

RATE_HISTORY_S = 60
"""Seconds of req/s history kept, one count per second (``_metrics`` ``rate_history``)."""

REFUSED_PEER_MEMORY = 10_000
"""Refused peers remembered (each is reported once), oldest forgotten first."""


class BrokerFigures:
    """Counts and latencies of one broker run."""

    def __init__(self, collect_metrics: bool = True) -> None:
        self.collect_metrics = collect_metrics
        """Keep latency histograms and rates (off only to measure their cost)."""
        self.counters: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.dropped: Counter[str] = Counter()
        """Messages dropped, by reason."""
        self.methods: defaultdict[str, CallStats] = defaultdict(CallStats)
        self.rate = RateMeter(history_s=RATE_HISTORY_S)
        self._rated = 0
        """Requests already counted into ``rate`` (it is fed once per tick, not per request)."""
        self._refused_peers: OrderedDict[bytes, bool] = OrderedDict()
        self.process_stats: dict[str, Any] = {}
        """CPU% and RSS of the broker process, refreshed by the socket loop."""

    def error(self, code: int) -> None:
        """Count an error answer of ``code``."""
        errors = self.errors
        if code not in errors and len(errors) >= MAX_ERROR_CODES:
            code = 0
        errors[code] += 1

    def refused(self, identity: bytes) -> bool:
        """Count a refused message; True the first time this peer is refused (lately)."""
        self.dropped["bad worker frames"] += 1
        peers = self._refused_peers
        if identity in peers:
            peers.move_to_end(identity)
            return False
        peers[identity] = True
        if len(peers) > REFUSED_PEER_MEMORY:
            peers.popitem(last=False)
        return True

    def record(self, method: str, latency_s: float, code: int | None) -> None:
        """A request was answered (``code``: its error code, None for a result)."""
        if self.collect_metrics:
            self.methods[method].record(latency_s, code)

    def tick(self, now: float) -> None:
        """Feed the rate meter with the requests counted since the last tick."""
        if self.collect_metrics:
            requests = self.counters["requests"]
            if requests > self._rated:
                self.rate.add(now, requests - self._rated)
                self._rated = requests

    def latency(self) -> Histogram:
        """All methods' latencies in one histogram."""
        total = Histogram()
        for stats in self.methods.values():
            total.merge(stats.latency)
        return total
