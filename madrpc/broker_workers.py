"""The broker's worker table: registered workers in round-robin order, which methods
each serves, their credit, liveness and circuit breakers.

A table with public methods: what a worker's arrival or departure means for requests is
decided by :mod:`madrpc.broker_state`. Pure: no sockets, no clocks.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from .broker_tables import WorkerRecord
from .config import BrokerConfig
from .errors import ProtocolError
from .liveness import Heartbeat
from .policy import CircuitBreaker
from .table_view import TableView

__all__ = ["MAX_BREAKERS", "WorkerTable", "ready_fields"]

MAX_BREAKERS = 10_000
"""Circuit breakers kept for worker processes (oldest forgotten first)."""


def ready_fields(info: Any) -> tuple[frozenset[str], int]:
    """(methods, credit) of a READY body; ProtocolError when it names neither properly."""
    methods = info.get("methods") if isinstance(info, dict) else None
    credit = info.get("credit") if isinstance(info, dict) else None
    if (
        not isinstance(methods, list)
        or not all(isinstance(m, str) for m in methods)
        or not isinstance(credit, int)
        or isinstance(credit, bool)
        or credit < 1
    ):
        raise ProtocolError("READY needs a list of method names and a positive credit")
    return frozenset(methods), credit


class WorkerTable(TableView[bytes, WorkerRecord]):
    """Workers by socket identity (a read-only mapping), in round-robin order."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._workers: OrderedDict[bytes, WorkerRecord] = OrderedDict()
        super().__init__(self._workers)
        self._serving: Counter[str] = Counter()
        """Method -> number of registered workers that serve it."""
        self._breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        """Worker id -> its breaker; it outlives reconnections of the same process."""
        self._paused: set[str] = set()
        """Ids of workers an admin drained: they stay drained when they register again."""

    # ------------------------------------------------------------ membership

    def add(
        self, identity: bytes, info: dict[str, Any], methods: frozenset[str], credit: int,
        now: float,
    ) -> WorkerRecord:
        """Register a worker (the caller removed any earlier one with this identity)."""
        config = self.config
        worker = WorkerRecord(
            identity, info, methods, credit,
            Heartbeat(config.heartbeat_interval_s, config.heartbeat_liveness, now), now,
            self._breaker_for(str(info.get("id") or identity.hex())),
        )
        worker.paused = worker.id in self._paused
        self._workers[identity] = worker
        self._serving.update(methods)
        return worker

    def set_paused(self, worker: WorkerRecord, paused: bool) -> None:
        """Take a worker out of rotation (``_drain``) or put it back, also for later."""
        worker.paused = paused
        if paused:
            self._paused.add(worker.id)
            if len(self._paused) > MAX_BREAKERS:
                self._paused.pop()
        else:
            self._paused.discard(worker.id)

    def update(
        self, worker: WorkerRecord, info: dict[str, Any], methods: frozenset[str], now: float
    ) -> None:
        """A registered worker reloaded its script: new methods, same requests and credit."""
        self._serving.subtract(worker.methods)
        self._serving.update(methods)
        worker.methods = methods
        worker.info = {**info, "update": False}
        worker.heartbeat.heard(now)

    def remove(self, identity: bytes) -> WorkerRecord | None:
        worker = self._workers.pop(identity, None)
        if worker is not None:
            self._serving.subtract(worker.methods)
        return worker

    def _breaker_for(self, worker_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(worker_id)
        if breaker is None:
            breaker = self._breakers[worker_id] = CircuitBreaker(
                failure_threshold=self.config.breaker_threshold
            )
            while len(self._breakers) > MAX_BREAKERS:
                self._breakers.popitem(last=False)
        self._breakers.move_to_end(worker_id)
        return breaker

    # ------------------------------------------------------------ choosing and watching

    def pick(self, method: str, now: float) -> WorkerRecord | None:
        """The next worker in rotation that serves ``method``, has credit and whose
        circuit allows a request; it moves to the back of the rotation."""
        for worker in self._workers.values():
            if (worker.credit > 0 and method in worker.methods and not worker.paused
                    and worker.breaker.allows(now)):
                self._workers.move_to_end(worker.identity)
                return worker
        return None

    def serving(self, method: str) -> int:
        """How many registered workers serve ``method``."""
        return self._serving[method]

    def served_methods(self) -> list[str]:
        return [method for method, count in self._serving.items() if count > 0]

    def find(self, wanted: str) -> WorkerRecord | None:
        """A worker by its id (``host:pid``) or its socket identity in hex."""
        for worker in self._workers.values():
            if wanted in (worker.id, worker.identity.hex()):
                return worker
        return None

    def silent(self, now: float) -> list[WorkerRecord]:
        """Workers not heard from for the liveness window."""
        return [w for w in self._workers.values() if w.heartbeat.expired(now)]

    def heartbeat_due(self, now: float) -> list[WorkerRecord]:
        """Workers due a heartbeat now (each is then scheduled for the next)."""
        return [w for w in self._workers.values() if w.heartbeat.due(now)]
