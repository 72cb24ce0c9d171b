"""Everything the broker knows and every transition it makes. Pure: frames and ``now``
in, frames to send out.

Each event is one method (:meth:`BrokerState.on_client_frame`, :meth:`on_worker_message`,
:meth:`on_tick`, :meth:`on_keys_reloaded`); what must be sent is collected in an
:class:`~madrpc.broker_outbox.Outbox` and handed to the socket loop by
:meth:`take_sends`. The work is done by parts with public methods, a module each
(docs/architecture.md draws them): the frontend and the backend read what clients and
workers send, the core carries each request from admission to its answer.

Invariants (tested): a live request is either queued or held by exactly one live
worker; requests in flight to a worker plus its remaining credit never exceed the credit
it issued (a worker returns credit for requests that park awaiting nested calls, so it
may hold more requests than that); each client request gets at most one reply.
"""

from __future__ import annotations

from .broker_backend import Backend
from .broker_core import BrokerCore
from .broker_frontend import Frontend
from .broker_outbox import BACKEND, FRONTEND
from .config import BrokerConfig
from .curve import KeyRing

__all__ = ["BACKEND", "FRONTEND", "BrokerState"]


class BrokerState:
    """The broker's parts, and the events the socket loop feeds them."""

    def __init__(self, config: BrokerConfig, now: float, keys: KeyRing | None = None) -> None:
        self.config = config
        self.keys = keys
        """The allowed CURVE keys by role; None when the broker has no CURVE."""
        self.core = BrokerCore(config, now)
        self.backlog = self.core.backlog
        self.frontend = Frontend(self.core, keys)
        self.backend = Backend(self.core, keys)
        core = self.core
        self.run, self.requests, self.workers = core.run, core.requests, core.workers
        self.figures, self.report, self.outbox = core.figures, core.report, core.outbox

    def on_client_frame(self, frames: list[bytes], now: float, peer: str | None = None) -> None:
        """A message on the frontend (``peer``: the sender's CURVE key, z85)."""
        self.frontend.on_frame(frames, now, peer)

    def on_worker_message(self, identity: bytes, frames: list[bytes], now: float,
                          peer: str | None = None) -> None:
        """A message on the backend from worker ``identity`` (``peer``: its CURVE key)."""
        self.backend.on_message(identity, frames, now, peer)

    def on_unreachable(self, identity: bytes, now: float) -> None:
        """A send to this worker failed (ROUTER_MANDATORY): it is gone."""
        self.backend.on_unreachable(identity, now)

    def on_client_gone(self, identity: bytes, now: float) -> None:
        """A send to this client connection failed: it is gone, with its unread replies,
        and nobody reads its streams any more (they are cancelled)."""
        self.backlog.forget(identity)
        self.figures.dropped["reply to vanished client"] += 1
        for stream in self.requests.streams_of(identity):
            self.core.cancel(stream, now, "its client is gone")

    def on_tick(self, now: float) -> None:
        """Heartbeats, dead workers, deadlines, circuit breakers, idempotency expiry."""
        core = self.core
        core.figures.tick(now)
        self.backend.on_tick(now)
        core.expire_due(now)
        core.dispatcher.serve_all(now)   # e.g. a circuit that may close again
        core.idempotency.expire(now)

    def on_keys_reloaded(self, now: float) -> None:
        """The key directories were read again: revoked workers leave."""
        self.backend.on_keys_reloaded(now)

    def next_deadline(self) -> float | None:
        return self.requests.next_deadline()

    def take_sends(self) -> list[tuple[int, list[bytes]]]:
        """Everything to send since the last call, as (socket, frames) pairs."""
        return self.outbox.take()

    def goodbye_messages(self) -> list[list[bytes]]:
        """A DISCONNECT for every registered worker (the broker is stopping)."""
        return [[identity, *self.run.disconnect("shutting down")] for identity in self.workers]
