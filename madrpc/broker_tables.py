"""The rows of the broker's tables: its run, requests, batches, workers. Plain data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import protocol as p
from .errors import ErrorCode
from .jsonrpc import Call
from .liveness import Heartbeat
from .metrics import CallStats
from .policy import CircuitBreaker
from .protocol import NO_PARENT

__all__ = [
    "ADOPTED", "Batch", "BrokerRun", "ClientRecord", "Refusal", "Request", "WorkerRecord",
    "idempotency_scope",
]


class Refusal(NamedTuple):
    """Why a request cannot run or wait: the error to answer it with."""

    code: ErrorCode
    message: str
    data: Any = None


@dataclass(slots=True)
class ClientRecord:
    """A client: what it has in the grid, and its rate-limit bucket."""

    key: bytes
    """The client's CURVE public key (z85), or its connection's routing identity."""
    in_grid: int = 0
    """Its requests queued, running or waiting for a twin."""
    tokens: float = 0.0
    refilled_at: float = 0.0
    seen_at: float = 0.0


@dataclass
class BrokerRun:
    """This run of the broker: clients and workers notice a restart by its ``instance``."""

    started_at: float
    adoption_until: float
    """Until then, workers may still be handing over what they ran for a previous
    broker; clients and workers that saw the restart wait so long before resending."""
    instance: str = field(default_factory=lambda: os.urandom(8).hex())
    draining: bool = False
    """Shutting down: new requests are refused, running ones are answered."""

    def grace_s(self, now: float) -> float:
        """Time left in which re-registering workers may hand over what they hold."""
        return round(max(0.0, self.adoption_until - now), 3)

    def heartbeat(self, now: float) -> list[bytes]:
        """A HEARTBEAT to a worker: names this run and the grace left (it acknowledges
        READY too)."""
        return p.json_message(p.HEARTBEAT, {"broker": self.instance, "grace_s": self.grace_s(now)})

    def disconnect(self, reason: str) -> list[bytes]:
        """A DISCONNECT to a worker, with the reason and this run."""
        return p.json_message(p.DISCONNECT, {"reason": reason, "broker": self.instance})


@dataclass(slots=True)
class Batch:
    """A client's JSON-RPC batch: its parts fill in as members finish."""

    route: list[bytes]
    parts: list[bytes | None]
    waiting: int


@dataclass(init=False, slots=True)
class Request:
    """One request the broker holds. One is built per request, so it writes its own
    ``__init__`` (see :mod:`madrpc.native_modules`)."""

    key: bytes
    call: Call
    deadline: float
    depth: int
    received_at: float
    route: list[bytes] | None
    """Client route, for a client's request."""
    batch: Batch | None
    index: int
    caller: bytes | None
    """Worker identity and call key, for a nested call made by a worker."""
    call_key: bytes
    parent: bytes
    attempts: int
    worker: bytes | None
    dispatched_at: float
    queued: bool
    adopted: bool
    """Handed over by a worker after a broker restart: no body, no one to answer."""
    client: ClientRecord | None
    """The client whose share of the grid it takes (none for nested calls and built-ins)."""
    scope: str | None
    """Its idempotency key as the idempotency table knows it (see idempotency_scope)."""
    items: int
    """For a stream: items delivered so far (a stream that sent items never runs again)."""
    granted: int
    """For a stream: items its consumer allowed so far (the window, plus every MORE)."""

    def __init__(
        self, key: bytes, call: Call, deadline: float, depth: int, received_at: float,
        route: list[bytes] | None = None, batch: Batch | None = None, index: int = 0,
        caller: bytes | None = None, call_key: bytes = b"", parent: bytes = NO_PARENT, *,
        attempts: int = 0, worker: bytes | None = None, dispatched_at: float = 0.0,
        adopted: bool = False, scope: str | None = None,
    ) -> None:
        self.key = key
        self.call = call
        self.deadline = deadline
        self.depth = depth
        self.received_at = received_at
        self.route = route
        self.batch = batch
        self.index = index
        self.caller = caller
        self.call_key = call_key
        self.parent = parent
        self.attempts = attempts
        self.worker = worker
        self.dispatched_at = dispatched_at
        self.queued = False
        self.adopted = adopted
        self.client = None
        self.scope = scope
        self.items = 0
        self.granted = 0

    @property
    def window(self) -> int | None:
        """The stream window it asked for; None if it is not a stream."""
        return self.call.options.stream_window


@dataclass(slots=True)
class WorkerRecord:
    identity: bytes
    info: dict[str, Any]
    methods: frozenset[str]
    credit: int
    heartbeat: Heartbeat
    joined_at: float
    breaker: CircuitBreaker
    in_flight: set[bytes] = field(default_factory=set)
    calls: set[bytes] = field(default_factory=set)
    """Keys of nested calls this worker made and that are still live."""
    stats: dict[str, Any] = field(default_factory=dict)
    served: CallStats = field(default_factory=CallStats)
    draining: bool = False
    """The worker said it stops (DRAIN): it gets nothing new and returns no credit."""
    paused: bool = False
    """An admin drained it (``_drain``): it gets nothing new until resumed."""
    key: str | None = None
    """Its CURVE public key (z85) when the broker has CURVE: every message must carry it."""

    @property
    def id(self) -> str:
        """The worker's own name for itself (host:pid), else its socket identity in hex."""
        return str(self.info.get("id") or self.identity.hex())

    def add_credit(self, credit: int) -> None:
        if not self.draining:
            self.credit += credit


ADOPTED = "a"
"""The origin of requests and results a worker handed over after a broker restart: the
worker cannot say whose they were, so a request of any origin with the same method and
key may join or replay them (only within the adoption window are they taken)."""


def idempotency_scope(call: Call, origin: str) -> str | None:
    """The idempotency table's key: the call's key within its method and its ``origin``
    ("c" + the client's CURVE key for a client, "w" + the worker's for a nested call,
    :data:`ADOPTED`), so that nobody can reach another origin's keys."""
    key = call.options.idempotency_key
    return None if key is None else f"{origin}\x00{call.method}\x00{key}"
