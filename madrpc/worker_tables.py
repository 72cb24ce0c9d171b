"""The rows of a worker's tables: its requests and its engine slots. Plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = ["EngineSlot", "LocalRequest", "Stage"]


class Stage(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PARKED = "parked"


@dataclass(slots=True)
class LocalRequest:
    local: int
    key: bytes
    method: str
    body: bytes
    deadline_ms: float
    """Wall-clock deadline (ms since the epoch), as JavaScript's Date.now() counts."""
    cpu_limit_ms: float
    depth: int
    received_at: float
    memory_mb: int = 0
    """A lower heap limit the request asked for (0: the worker's); it then runs alone."""
    stage: Stage = Stage.QUEUED
    engine: int | None = None
    holds_credit: bool = True
    cancelled: bool = False
    resets: int = 0
    solo: bool = False


@dataclass
class EngineSlot:
    """One engine process (one V8 context)."""

    index: int
    identity: bytes = b""
    ready: bool = False
    busy: bool = False
    retiring: bool = False
    """Replaced by a newer engine (script reload): finishes what it holds, takes nothing new."""
    generation: int = 0
    restarts: int = 0
    step_requests: list[int] = field(default_factory=list)
    step_methods: set[str] = field(default_factory=set)
    step_started: float = 0.0
    held: set[int] = field(default_factory=set)
    settles: dict[bytes, list[tuple[int, bytes]]] = field(default_factory=dict)
    """Nested-call results waiting for the next step, by context slot."""
    cancels: dict[bytes, list[int]] = field(default_factory=dict)
    served: int = 0
