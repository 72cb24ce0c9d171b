"""What a client has been through, for its user to see: ``Client.stats()`` and
``AsyncClient.stats()`` (the figures of the grid itself are ``_metrics``)."""

from __future__ import annotations

from dataclasses import dataclass

from .client_core import CallBook

__all__ = ["ClientStats", "stats_of"]


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of one client's connection and the calls it holds."""

    in_flight: int
    """Calls and streams waiting for their answer."""
    retries: int
    """Calls sent again: after their retry timer, a transient error ("Overloaded", no
    worker yet), a new connection or a broker restart. With idempotency keys (the
    default) a call sent again still runs once."""
    reconnects: int
    """Times the client replaced its socket after hearing nothing from the broker."""
    broker_answered: bool
    """Whether a broker has answered anything on this connection yet."""
    last_heard_s: float | None
    """Seconds since the broker last answered anything (None: it never has)."""


def stats_of(book: CallBook, now: float) -> ClientStats:
    """The stats of the client whose calls ``book`` holds, at monotonic time ``now``."""
    heard = book.last_heard
    return ClientStats(
        in_flight=len(book.calls), retries=book.retries, reconnects=book.reconnects,
        broker_answered=heard > 0, last_heard_s=max(0.0, now - heard) if heard > 0 else None,
    )
