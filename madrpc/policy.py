"""Reliability policies as small pure pieces: circuit breaker and idempotency table.

Neither reads a clock or touches a socket; the broker passes ``now`` in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import ErrorCode

__all__ = ["NOT_KEPT", "TRANSIENT_CODES", "CircuitBreaker", "CircuitState", "IdempotencyTable"]

TRANSIENT_CODES = frozenset({
    ErrorCode.NO_WORKER, ErrorCode.OVERLOADED, ErrorCode.TIMEOUT,
    ErrorCode.WORKER_LOST, ErrorCode.SHUTTING_DOWN,
})
"""Errors that say nothing about the request itself: a retry may succeed."""
NOT_KEPT = TRANSIENT_CODES | {ErrorCode.CANCELLED}
"""Outcomes never kept for an idempotency key: a retry of the key runs the function."""


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


_CLOSED = CircuitState.CLOSED   # (looking a member up on an Enum class is slow)


@dataclass
class CircuitBreaker:
    """Takes a worker out of rotation after repeated transport failures.

    ``failure_threshold`` consecutive failures open the circuit for ``open_s``; after
    that one trial request is let through (half-open): success closes the circuit, a
    failure opens it again for twice as long (capped at ``max_open_s``).
    """

    failure_threshold: int = 5
    initial_open_s: float = 1.0
    max_open_s: float = 60.0
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    open_s: float = 0.0
    reopen_at: float = 0.0
    trial_in_flight: bool = False
    opened: int = field(default=0)
    """How many times the circuit opened (for _metrics)."""

    def allows(self, now: float) -> bool:
        if self.state is _CLOSED:   # the common case, on every dispatch: keep it cheap
            return True
        if self.state is CircuitState.OPEN and now >= self.reopen_at:
            self.state = CircuitState.HALF_OPEN
            self.trial_in_flight = False
        return self.state is CircuitState.HALF_OPEN and not self.trial_in_flight

    def on_dispatch(self, now: float) -> None:
        if self.state is not _CLOSED and self.state is CircuitState.HALF_OPEN:
            self.trial_in_flight = True

    def on_success(self, now: float) -> None:
        self.failures = 0
        if self.state is not _CLOSED:
            self.state = CircuitState.CLOSED
            self.open_s = 0.0
            self.trial_in_flight = False

    def on_failure(self, now: float) -> None:
        if self.state is CircuitState.OPEN:
            return   # late news from before it opened: the clock is already running
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.open_s = (
                self.initial_open_s if self.open_s == 0 else min(self.max_open_s, self.open_s * 2)
            )
            self.state = CircuitState.OPEN
            self.reopen_at = now + self.open_s
            self.trial_in_flight = False
            self.opened += 1

    def to_dict(self, now: float) -> dict[str, Any]:
        self.allows(now)
        return {
            "state": self.state.value,
            "consecutive_failures": self.failures,
            "opened": self.opened,
            "retry_in_s": round(max(0.0, self.reopen_at - now), 3)
            if self.state is CircuitState.OPEN else None,
        }


Outcome = tuple[int | None, bytes]
"""(error code or None, response fragment) of a finished request."""


@dataclass(slots=True)
class _Entry:
    running: bytes | None
    """Key of the request executing for this idempotency key, while it runs."""
    joined: list[bytes] = field(default_factory=list)
    outcome: Outcome | None = None
    expires_at: float = 0.0


class IdempotencyTable:
    """At-most-once execution per idempotency key within a window.

    A key is *running* (a request executes for it; later requests with the key join it)
    or *done* (its outcome is replayed until ``window_s`` after it finished). Transient
    failures (:data:`TRANSIENT_CODES`) are not stored, so a retry runs again; nor are
    outcomes over ``max_result_bytes``, and the stored ones hold at most ``max_bytes``
    (the oldest are forgotten first). Running and done keys live in separate tables, so
    expiry only ever looks at expired entries.
    """

    def __init__(self, window_s: float, max_entries: int, max_bytes: int | None = None,
                 max_result_bytes: int | None = None) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_result_bytes = max_result_bytes
        self.bytes = 0
        """Bytes of the outcomes stored now."""
        self.evicted = 0
        """Stored outcomes forgotten before their window ended (to stay within bounds)."""
        self.too_large = 0
        """Outcomes not stored for being over ``max_result_bytes``."""
        self._running: OrderedDict[str, _Entry] = OrderedDict()
        self._done: OrderedDict[str, _Entry] = OrderedDict()
        """Finished keys, oldest first (so expiry stops at the first live one)."""

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    def lookup(self, key: str, now: float) -> bytes | Outcome | None:
        """None if unknown, the running request's key, or the stored outcome."""
        entry = self._running.get(key)
        if entry is not None:
            return entry.running
        entry = self._done.get(key)
        if entry is None:
            return None
        if entry.outcome is not None and now < entry.expires_at:
            return entry.outcome
        self._forget_done(key)
        return None

    def _forget_done(self, key: str) -> None:
        entry = self._done.pop(key)
        if entry.outcome is not None:
            self.bytes -= len(entry.outcome[1])

    def start(self, key: str, request_key: bytes) -> None:
        if self._done and key in self._done:
            self._forget_done(key)
        running = self._running
        if key in running:
            running.move_to_end(key)
        running[key] = _Entry(request_key)
        if len(running) + len(self._done) > self.max_entries:
            while len(self) > self.max_entries:
                self._evict_one()

    def _evict_one(self) -> None:
        """Forget the oldest finished entry (the oldest running one if none finished)."""
        self.evicted += 1
        if self._done:
            self._forget_done(next(iter(self._done)))
        else:
            self._running.popitem(last=False)

    def transfer(self, key: str, request_key: bytes) -> None:
        """Hand a running key to another request; the previous one joins it."""
        entry = self._running.get(key)
        if entry is not None and entry.running is not None:
            entry.joined.append(entry.running)
            entry.running = request_key

    def joined_to(self, key: str, request_key: bytes) -> list[bytes]:
        """The requests that joined ``request_key``, running for ``key``."""
        entry = self._running.get(key)
        if entry is None or entry.running != request_key:
            return []
        return list(entry.joined)

    def join(self, key: str, request_key: bytes) -> None:
        entry = self._running.get(key)
        if entry is not None:
            entry.joined.append(request_key)

    def finish(self, key: str, request_key: bytes, outcome: Outcome, now: float) -> list[bytes]:
        """Record the outcome of the running request; return the keys that joined it."""
        entry = self._running.get(key)
        if entry is None or entry.running != request_key:
            return []
        del self._running[key]
        joined = entry.joined
        code, fragment = outcome
        size = len(fragment)
        if self.max_result_bytes is not None and size > self.max_result_bytes:
            self.too_large += 1
        elif code is None or code not in NOT_KEPT:
            entry.running, entry.joined = None, []
            entry.outcome, entry.expires_at = outcome, now + self.window_s
            self._done[key] = entry
            self.bytes += size
            if self.max_bytes is not None:
                while self.bytes > self.max_bytes and self._done:
                    self._forget_done(next(iter(self._done)))
                    self.evicted += 1
        return joined

    def expire(self, now: float) -> None:
        """Drop finished entries older than the window (oldest first)."""
        done = self._done
        while done:
            key, entry = next(iter(done.items()))
            if now < entry.expires_at:
                return
            self._forget_done(key)
