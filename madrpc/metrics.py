"""Counters, mergeable latency histograms and rates. Pure: no sockets, no clocks read.

Latencies go into fixed log-scale buckets (:data:`BUCKETS_PER_OCTAVE` per doubling from
:data:`MIN_LATENCY_S`), so a percentile costs one pass over ~100 integers and histograms
from different workers merge by adding counts. A histogram travels as a sparse
``{bucket index: count}`` dict.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

__all__ = ["CallStats", "Histogram", "RateMeter", "bucket_of", "bucket_upper"]

MIN_LATENCY_S = 1e-6
"""Upper edge of bucket 0; anything faster lands there."""
BUCKETS_PER_OCTAVE = 8
"""Resolution: each bucket spans a factor of 2**(1/8) (~9%)."""
BUCKET_COUNT = 8 * 28
"""1 us * 2**28 is about 268 s; slower values land in the last bucket."""
_LOG_BASE = math.log(2) / BUCKETS_PER_OCTAVE
MAX_ERROR_CODES = 100
"""Distinct error codes a CallStats counts one by one; the rest are counted under 0."""


def bucket_upper(index: int) -> float:
    """Upper edge (seconds) of bucket ``index``."""
    return float(MIN_LATENCY_S * math.exp(index * _LOG_BASE))


_UPPERS = [bucket_upper(i) for i in range(BUCKET_COUNT)]
"""Every bucket's upper edge, computed once (percentiles read them, often)."""
_UPPER_EDGES = _UPPERS[:-1]
_LAST = BUCKET_COUNT - 1
_SUMMARY_QUANTILES = (50, 95, 99)


def bucket_of(value_s: float) -> int:
    """Index of the bucket holding ``value_s`` (a binary search over the edges)."""
    return bisect_left(_UPPER_EDGES, value_s)


class Histogram:
    """Latency histogram with log-scale buckets; percentiles within one bucket's width."""

    __slots__ = ("counts", "total", "sum_s")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * BUCKET_COUNT
        self.total = 0
        self.sum_s = 0.0

    def add(self, value_s: float) -> None:
        self.counts[bisect_left(_UPPER_EDGES, value_s)] += 1
        self.total += 1
        self.sum_s += value_s

    def merge(self, other: Histogram) -> None:
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.total += other.total
        self.sum_s += other.sum_s

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100) as a bucket's upper edge; None when empty."""
        return self.percentiles((q,))[0]

    def percentiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """:meth:`percentile` of each of ``qs``, from one pass over the buckets (a
        ``_metrics`` of 1,000 workers asks for three of each worker's)."""
        total = self.total
        if total == 0:
            return [None] * len(qs)
        running = list(accumulate(self.counts))
        return [_UPPERS[min(_LAST, bisect_left(running, max(1, math.ceil(total * q / 100))))]
                for q in qs]

    @property
    def mean(self) -> float | None:
        return self.sum_s / self.total if self.total else None

    def to_wire(self) -> dict[str, Any]:
        return {
            "b": {str(i): c for i, c in enumerate(self.counts) if c},
            "n": self.total,
            "s": self.sum_s,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Histogram:
        """Rebuild from :meth:`to_wire`; malformed input gives an empty histogram."""
        histogram = cls()
        if not isinstance(data, dict):
            return histogram
        buckets = data.get("b")
        if isinstance(buckets, dict):
            for key, count in buckets.items():
                try:
                    index = int(key)
                except (TypeError, ValueError):
                    continue
                if (
                    0 <= index < BUCKET_COUNT
                    and isinstance(count, int)
                    and not isinstance(count, bool)
                    and count > 0
                ):
                    histogram.counts[index] += count
                    histogram.total += count
        total_s = data.get("s")
        if isinstance(total_s, (int, float)):
            histogram.sum_s = float(total_s)
        return histogram

    def summary_ms(self) -> dict[str, float | None]:
        """p50/p95/p99 and mean, in milliseconds."""
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        p50, p95, p99 = self.percentiles(_SUMMARY_QUANTILES)
        return {"p50_ms": ms(p50), "p95_ms": ms(p95), "p99_ms": ms(p99), "mean_ms": ms(self.mean)}


class RateMeter:
    """Events per second over a sliding window of whole seconds; it also remembers each
    of the last ``history_s`` seconds (for :meth:`history`)."""

    __slots__ = ("window_s", "history_s", "_buckets")

    def __init__(self, window_s: int = 5, history_s: int = 0) -> None:
        self.window_s = window_s
        self.history_s = max(window_s, history_s)
        self._buckets: dict[int, int] = {}

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        self._buckets[second] = self._buckets.get(second, 0) + count
        if len(self._buckets) > self.history_s + 2:
            self._trim(second)

    def _trim(self, second: int) -> None:
        oldest = second - self.history_s
        for key in [k for k in self._buckets if k < oldest]:
            del self._buckets[key]

    def rate(self, now: float) -> float:
        """Mean events/s over the last ``window_s`` complete seconds."""
        second = int(now)
        total = sum(
            count for key, count in self._buckets.items() if second - self.window_s <= key < second
        )
        return total / self.window_s

    def history(self, now: float, seconds: int) -> list[int]:
        """Events in each of the last ``seconds`` complete seconds, oldest first."""
        second = int(now)
        return [self._buckets.get(second - offset, 0) for offset in range(seconds, 0, -1)]


@dataclass
class CallStats:
    """Requests, errors by code and latency for one method or one worker."""

    requests: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)

    def record(self, latency_s: float, error_code: int | None) -> None:
        self.requests += 1
        if error_code is not None:
            errors = self.errors
            if error_code not in errors and len(errors) >= MAX_ERROR_CODES:
                error_code = 0   # scripts choose codes: their number must stay bounded
            errors[error_code] += 1
        self.latency.add(latency_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "errors_by_code": {str(code): n for code, n in sorted(self.errors.items())},
            **self.latency.summary_ms(),
        }

    def to_wire(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": {str(code): n for code, n in self.errors.items()},
            "latency": self.latency.to_wire(),
        }

    @classmethod
    def from_wire(cls, data: Any) -> CallStats:
        stats = cls()
        if not isinstance(data, dict):
            return stats
        requests = data.get("requests")
        if isinstance(requests, int):
            stats.requests = requests
        errors = data.get("errors")
        if isinstance(errors, dict):
            for code, count in errors.items():
                try:
                    stats.errors[int(code)] += int(count)
                except (TypeError, ValueError):
                    continue
        stats.latency = Histogram.from_wire(data.get("latency"))
        return stats

    def merge(self, other: CallStats) -> None:
        self.requests += other.requests
        self.errors.update(other.errors)
        self.latency.merge(other.latency)
