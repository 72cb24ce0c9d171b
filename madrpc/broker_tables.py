"""The rows of the broker's tables: requests, batches, workers. Plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .jsonrpc import Call
from .liveness import Heartbeat
from .metrics import CallStats
from .policy import CircuitBreaker

__all__ = ["Batch", "NO_PARENT", "Request", "WorkerRecord", "idempotency_scope"]

NO_PARENT = bytes(8)
"""The parent key of a request that no other request made."""
CLIENT_MEMORY = 10_000
"""Distinct client identities remembered for the 'clients seen' figure."""
MAX_BREAKERS = 10_000
"""Circuit breakers kept for worker processes (oldest forgotten first)."""


@dataclass(slots=True)
class Batch:
    """A client's JSON-RPC batch: its parts fill in as members finish."""

    route: list[bytes]
    parts: list[bytes | None]
    waiting: int


@dataclass(slots=True)
class Request:
    key: bytes
    call: Call
    deadline: float
    depth: int
    received_at: float
    route: list[bytes] | None = None
    """Client route, for a client's request."""
    batch: Batch | None = None
    index: int = 0
    caller: bytes | None = None
    """Worker identity and call key, for a nested call made by a worker."""
    call_key: bytes = b""
    parent: bytes = NO_PARENT
    attempts: int = 0
    worker: bytes | None = None
    dispatched_at: float = 0.0
    queued: bool = False
    adopted: bool = False
    """Handed over by a worker after a broker restart: no body, no one to answer."""


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


def idempotency_scope(call: Call) -> str | None:
    """The idempotency table's key: the client's key, within the method it names."""
    key = call.options.idempotency_key
    return None if key is None else f"{call.method}\x00{key}"
