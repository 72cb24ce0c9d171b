"""A worker's pacing: how long its methods take, and how much credit the broker holds.

Credit: a request holds one unit of the worker's credit from the moment the broker sends
it until it finishes *or parks* (awaits nested calls); then the unit goes back to the
broker with the next REPLY or CREDIT, so a fan-out never starves the grid of workers.
The total issued follows the work: ``contexts x (1 + prefetch)`` while requests are quick
(so they arrive in batches), ``contexts x 2`` while they are slow (so no worker hoards
long jobs); units are withheld or added as the mean run time crosses the threshold.

Pure: no sockets, no clocks.
"""

from __future__ import annotations

__all__ = ["EWMA_WEIGHT", "CreditLedger", "RunTimes"]

EWMA_WEIGHT = 0.2
"""Weight of the newest sample in a method's mean run time."""


class RunTimes:
    """Mean run time per method and over all requests (exponentially weighted)."""

    def __init__(self) -> None:
        self.by_method: dict[str, float] = {}
        self.recent_s: float | None = None
        """Mean run time of recent requests, whatever their method."""

    def learn(self, methods: set[str], per_request_s: float) -> None:
        """A step that ran ``methods`` took ``per_request_s`` per request."""
        self.recent_s = _blend(self.recent_s, per_request_s)
        for method in methods:
            self.by_method[method] = _blend(self.by_method.get(method), per_request_s)

    def estimate_s(self, method: str) -> float | None:
        return self.by_method.get(method)

    def quick(self, threshold_ms: float) -> bool:
        """Requests lately took less than ``threshold_ms`` each."""
        return self.recent_s is not None and self.recent_s * 1000 < threshold_ms


def _blend(old: float | None, sample: float) -> float:
    return sample if old is None else old + EWMA_WEIGHT * (sample - old)


class CreditLedger:
    """The credit this worker granted the broker: how much is issued, and how much is
    waiting to be returned (sent with the next REPLY or CREDIT)."""

    def __init__(self, initial: int, prefetch: int) -> None:
        self.initial = initial
        self.prefetch = prefetch
        self.issued = initial
        """Units granted to the broker and not yet withheld."""
        self.to_return = 0
        """Units freed since the last message to the broker."""

    def target(self, contexts: int, quick: bool) -> int:
        """How much credit the broker should hold for ``contexts`` contexts."""
        return max(1, contexts) * (1 + (self.prefetch if quick else 1))

    def release(self, target: int, draining: bool) -> None:
        """A request gave its unit back: return it, or withhold it while above target."""
        if draining or self.issued > target:
            self.issued -= 1
        else:
            self.to_return += 1

    def top_up(self, target: int, draining: bool) -> None:
        """Grant what is missing to reach ``target``."""
        if not draining and self.issued < target:
            self.to_return += target - self.issued
            self.issued = target

    def take_return(self) -> int:
        """Units to announce now."""
        units, self.to_return = self.to_return, 0
        return units

    def restart(self, holding: int = 0) -> None:
        """A new broker connection: it will be told the initial credit (plus what the
        requests we still hold took), and nothing is pending any more."""
        self.issued = self.initial + holding
        self.to_return = 0
