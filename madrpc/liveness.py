"""Heartbeat liveness and exponential back-off. Pure: the caller passes ``now``."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "Heartbeat"]


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off, capped, with optional full jitter (AWS style)."""

    initial_s: float
    max_s: float
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based), without jitter."""
        exponent = min(max(0, attempt), 64)   # beyond this the cap applies anyway
        return min(self.max_s, self.initial_s * self.multiplier**exponent)

    def jittered(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, delay(attempt)]."""
        return (rng or random).uniform(0, self.delay(attempt))


class Heartbeat:
    """When to send the next heartbeat, and when the peer counts as dead."""

    __slots__ = ("interval_s", "liveness", "last_heard", "next_send")

    def __init__(self, interval_s: float, liveness: int, now: float) -> None:
        self.interval_s = interval_s
        self.liveness = liveness
        self.last_heard = now
        self.next_send = now + interval_s

    def heard(self, now: float) -> None:
        self.last_heard = now

    @property
    def expiry(self) -> float:
        return self.last_heard + self.interval_s * self.liveness

    def expired(self, now: float) -> bool:
        return now >= self.expiry

    def due(self, now: float) -> bool:
        """True (and schedules the next one) when a heartbeat should go out now."""
        if now >= self.next_send:
            self.next_send = now + self.interval_s
            return True
        return False
