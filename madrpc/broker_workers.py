"""The broker's worker table: registered workers in round-robin order, which methods
each serves, their credit, liveness and circuit breakers.

A table with public methods: what a worker's arrival or departure means for requests is
decided by :mod:`madrpc.broker_state`. Pure: no sockets, no clocks.

What the broker asks of it often costs the same with 10 workers or 10,000: the liveness
checks of every tick look only at the workers whose time has come (two heaps keyed by
when each worker falls silent and when it is due a heartbeat, each worker in each once),
and a worker is found by its id through an index.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from itertools import count
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
        self._ids: dict[str, set[bytes]] = {}
        """Worker id -> identities of the registered workers with that id (one, but for a
        worker whose update renamed it to another's id)."""
        self._silence: list[tuple[float, int, WorkerRecord]] = []
        """(no later than when it falls silent, order, worker): one entry per worker."""
        self._beats: list[tuple[float, int, WorkerRecord]] = []
        """(when it is due a heartbeat, order, worker): one entry per worker."""
        self._order = count()
        self.changes = 0
        """Bumped when a worker may take what it could not before without the dispatcher
        hearing of it (an admin resumed it): see :class:`~madrpc.broker_dispatch.Dispatcher`."""

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
        self._index(worker)
        heartbeat, order = worker.heartbeat, next(self._order)
        heapq.heappush(self._silence, (heartbeat.expiry, order, worker))
        heapq.heappush(self._beats, (heartbeat.next_send, order, worker))
        return worker

    def _index(self, worker: WorkerRecord) -> None:
        self._ids.setdefault(worker.id, set()).add(worker.identity)

    def _unindex(self, worker: WorkerRecord) -> None:
        identities = self._ids.get(worker.id)
        if identities is not None:
            identities.discard(worker.identity)
            if not identities:
                del self._ids[worker.id]

    def set_paused(self, worker: WorkerRecord, paused: bool) -> None:
        """Take a worker out of rotation (``_drain``) or put it back, also for later."""
        worker.paused = paused
        if paused:
            self._paused.add(worker.id)
            if len(self._paused) > MAX_BREAKERS:
                self._paused.pop()
        else:
            self._paused.discard(worker.id)
            self.changes += 1

    def update(
        self, worker: WorkerRecord, info: dict[str, Any], methods: frozenset[str], now: float
    ) -> None:
        """A registered worker reloaded its script: new methods, same requests and credit."""
        self._serving.subtract(worker.methods)
        self._serving.update(methods)
        worker.methods = methods
        self._unindex(worker)
        worker.info = {**info, "update": False}
        self._index(worker)
        worker.heartbeat.heard(now)

    def remove(self, identity: bytes) -> WorkerRecord | None:
        """Forget a worker (its heap entries go when they come up)."""
        worker = self._workers.pop(identity, None)
        if worker is not None:
            self._serving.subtract(worker.methods)
            self._unindex(worker)
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

    def with_id(self, worker_id: str) -> WorkerRecord | None:
        """The registered worker whose id is ``worker_id`` (the earliest in rotation if
        several are), without looking at the others."""
        identities = self._ids.get(worker_id)
        if not identities:
            return None
        if len(identities) == 1:
            return self._workers.get(next(iter(identities)))
        return next((w for w in self._workers.values() if w.identity in identities), None)

    def id_taken(self, worker_id: str, identity: bytes) -> bool:
        """Whether a registered worker other than ``identity`` has the id ``worker_id``
        (READY refuses a second worker with one id), without looking at the others."""
        return any(other != identity for other in self._ids.get(worker_id, ()))

    def find(self, wanted: str) -> WorkerRecord | None:
        """A worker by its id (``host:pid``) or its socket identity in hex (the first in
        rotation order that matches either)."""
        by_id = self.with_id(wanted)
        by_hex = self._workers.get(_from_hex(wanted))
        if by_hex is not None and by_hex.identity.hex() != wanted:
            by_hex = None   # "AB CD" is not how an identity is written
        if by_id is None or by_hex is None or by_id is by_hex:
            return by_id or by_hex
        for worker in self._workers.values():   # one's id is another's identity: rare
            if worker is by_id or worker is by_hex:
                return worker
        return None

    def silent(self, now: float) -> list[WorkerRecord]:
        """Workers not heard from for the liveness window, longest silent first.

        Looks only at workers whose entry has come up: an entry holds an expiry that
        hearing from the worker since can only have pushed back (``last_heard`` only
        grows), so one that has not come up is not silent; one that has is checked and,
        if heard from meanwhile, filed again under its new expiry."""
        found: list[tuple[float, int, WorkerRecord]] = []
        heap = self._silence
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            worker = entry[2]
            if self._workers.get(worker.identity) is not worker:
                continue   # it left (or registered again: that is a new record)
            expiry = worker.heartbeat.expiry
            if expiry <= now:
                found.append((expiry, entry[1], worker))
            else:
                heapq.heappush(heap, (expiry, entry[1], worker))
        found.sort(key=lambda entry: entry[:2])
        for entry in found:   # still registered until the caller removes them
            heapq.heappush(heap, entry)
        return [worker for _, _, worker in found]

    def heartbeat_due(self, now: float) -> list[WorkerRecord]:
        """Workers due a heartbeat now (each is then scheduled for the next), in the order
        they fell due."""
        due: list[WorkerRecord] = []
        later: list[tuple[float, int, WorkerRecord]] = []
        heap = self._beats
        while heap and heap[0][0] <= now:
            _, order, worker = heapq.heappop(heap)
            if self._workers.get(worker.identity) is not worker:
                continue
            if worker.heartbeat.due(now):
                due.append(worker)
            later.append((worker.heartbeat.next_send, order, worker))
        for entry in later:
            heapq.heappush(heap, entry)
        return due


def _from_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""
