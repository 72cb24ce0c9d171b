"""The broker's request table: live requests by key, one FIFO queue per method, the
deadline heap, and requests that wait for a running twin (same idempotency key).

A table with public methods and no policy: who gets a request is decided by
:mod:`madrpc.broker_dispatch`, when it is answered by :mod:`madrpc.broker_state`.
Pure: no sockets, no clocks.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator

from . import protocol as p
from .broker_tables import Request
from .table_view import TableView

__all__ = ["DEADLINE_SLACK", "RequestTable"]

DEADLINE_SLACK = 1024
"""Deadline-heap entries of answered requests tolerated beyond twice the live ones; past
that the heap is rebuilt from the live requests (answered ones leave it at once)."""


class RequestTable(TableView[bytes, Request]):
    """Live requests by key (a read-only mapping), their queues and their deadlines.

    A live request is queued (waiting for a worker) or in flight (held by one). Queues
    keep answered requests until they reach the head, where they are skipped: forgetting
    a queued request costs nothing, and a method's queue goes when nothing live waits in
    it. Answered requests stay in the deadline heap until it compacts itself.
    """

    def __init__(self) -> None:
        super().__init__({})
        self._queues: defaultdict[str, deque[Request]] = defaultdict(deque)
        self._waiting: Counter[str] = Counter()
        """Live requests in each method's queue (its deque also holds answered ones)."""
        self.queued = 0
        """Live requests waiting in a queue."""
        self._deadlines: list[tuple[float, bytes]] = []
        self.joined: dict[bytes, Request] = {}
        """Requests waiting for a running twin with the same idempotency key."""
        self._children: dict[bytes, set[bytes]] = {}
        """Parent key -> keys of the live or joined nested calls it made."""
        self._streams: dict[tuple[bytes, bytes], bytes] = {}
        """(client connection, request id) -> key of a live client stream, for ``_more``."""
        self._next_key = random.getrandbits(62)

    @property
    def in_flight(self) -> int:
        """Live requests held by workers."""
        return len(self._rows) - self.queued

    # ------------------------------------------------------------ changes

    def new_key(self) -> bytes:
        """A key no live request has (a counter from a random start)."""
        key = p.encode_key(self._next_key)
        self._next_key = (self._next_key + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return key

    def watch(self, request: Request) -> None:
        """Expire the request at its deadline (see :meth:`expired`)."""
        deadlines = self._deadlines
        if (len(deadlines) & 0xFF == 0
                and len(deadlines) > 2 * (len(self._rows) + len(self.joined)) + DEADLINE_SLACK):
            deadlines[:] = [(r.deadline, r.key) for r in (*self._rows.values(),
                                                          *self.joined.values())]
            heapq.heapify(deadlines)
        heapq.heappush(deadlines, (request.deadline, request.key))

    def add(self, request: Request) -> None:
        self._rows[request.key] = request
        self._index(request)

    def join(self, request: Request) -> None:
        """The request waits for the twin running its idempotency key."""
        self.joined[request.key] = request
        self._index(request)

    def _index(self, request: Request) -> None:
        if request.parent != p.NO_PARENT:
            self._children.setdefault(request.parent, set()).add(request.key)
        elif request.window is not None and request.route is not None:
            self._streams[_stream_id(request)] = request.key

    def _unindex(self, request: Request) -> None:
        if request.window is not None and request.route is not None:
            stream_id = _stream_id(request)
            if self._streams.get(stream_id) == request.key:   # not a newer one's, same id
                del self._streams[stream_id]
        if request.parent != p.NO_PARENT:
            siblings = self._children.get(request.parent)
            if siblings is not None:
                siblings.discard(request.key)
                if not siblings:
                    del self._children[request.parent]

    def enqueue(self, request: Request, front: bool = False) -> None:
        queue = self._queues[request.call.method]
        if front:   # a re-dispatched request goes first
            queue.appendleft(request)
        else:
            queue.append(request)
        request.queued = True
        self.queued += 1
        self._waiting[request.call.method] += 1

    def take_oldest(self, methods: Iterable[str]) -> Request | None:
        """Dequeue the longest-waiting request for any of ``methods``."""
        oldest: deque[Request] | None = None
        for method in methods:
            queue = self._queues.get(method)
            while queue and not queue[0].queued:
                queue.popleft()   # answered while it waited
            if queue and (oldest is None or queue[0].received_at < oldest[0].received_at):
                oldest = queue
        if oldest is None:
            return None
        request = oldest.popleft()
        self._unqueue(request)
        return request

    def _unqueue(self, request: Request) -> None:
        request.queued = False
        self.queued -= 1
        method = request.call.method
        self._waiting[method] -= 1
        if self._waiting[method] == 0:   # only answered requests left in it: let it go
            del self._waiting[method]
            del self._queues[method]

    def forget(self, request: Request) -> None:
        """No longer live nor joined (answered or dropped)."""
        if (self._rows.pop(request.key, None) is not None
                or self.joined.pop(request.key, None) is not None):
            self._unindex(request)
        if request.queued:
            self._unqueue(request)

    def set_aside(self, request: Request) -> None:
        """No longer live: it will wait for a twin instead (see :meth:`join`)."""
        self._rows.pop(request.key, None)
        self._unindex(request)
        if request.queued:
            self._unqueue(request)

    def find(self, identity: bytes, id_json: bytes) -> Request | None:
        """The live or joined request a client connection sent with this id (a scan:
        cancelling is rare, and an index would cost every request)."""
        for request in (*self._rows.values(), *self.joined.values()):
            route = request.route
            if route is not None and route[0] == identity and request.call.id_json == id_json:
                return request
        return None

    def find_stream(self, identity: bytes, id_json: bytes) -> Request | None:
        """The live stream a client connection opened with this id."""
        key = self._streams.get((identity, id_json))
        return self._rows.get(key) if key is not None else None

    def streams_of(self, identity: bytes) -> list[Request]:
        """The live streams a client connection opened."""
        return [request for (owner, _), key in self._streams.items() if owner == identity
                if (request := self._rows.get(key)) is not None]

    def find_keyed(self, method: str, idempotency_key: str) -> Request | None:
        """A live or joined request for ``method`` with this idempotency key, of any origin
        (a scan, for the rare hand-over after a broker restart)."""
        for request in (*self._rows.values(), *self.joined.values()):
            call = request.call
            if call.method == method and call.options.idempotency_key == idempotency_key:
                return request
        return None

    def children(self, key: bytes) -> list[Request]:
        """The live or joined nested calls the request ``key`` made."""
        found = []
        for child_key in self._children.get(key, ()):
            child = self._rows.get(child_key) or self.joined.get(child_key)
            if child is not None:
                found.append(child)
        return found

    # ------------------------------------------------------------ queries

    def queued_for(self, method: str) -> int:
        return sum(1 for r in self._queues.get(method, ()) if r.queued)

    def queued_methods(self) -> list[str]:
        """Methods with something waiting in their queue."""
        return list(self._waiting)

    def waiting(self) -> list[Request]:
        """Every queue entry still waiting, all methods (an entry twice would be a bug)."""
        return [r for queue in self._queues.values() for r in queue if r.queued]

    def never_dispatched(self, method: str) -> list[Request]:
        """Queued requests for ``method`` that no worker ever held."""
        return [r for r in self._queues.get(method, ()) if r.queued and r.attempts == 0]

    def expired(self, now: float) -> Iterator[Request]:
        """Live or joined requests whose deadline has passed, one at a time (a request
        answered while an earlier one is handled is not yielded)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, key = heapq.heappop(deadlines)
            request = self._rows.get(key) or self.joined.get(key)
            if request is not None:
                yield request

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def deadline_entries(self) -> int:
        """Entries in the deadline heap (answered requests' included, until it compacts)."""
        return len(self._deadlines)


def _stream_id(request: Request) -> tuple[bytes, bytes]:
    assert request.route is not None and request.call.id_json is not None
    return request.route[0], request.call.id_json
