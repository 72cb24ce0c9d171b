"""Fair sharing between clients: what each one has in the grid, how fast it may send, and
the replies it has not read yet. Pure: ``now`` in, refusals out.

A client is its CURVE key when the broker has CURVE, else its connection (the frontend's
routing identity). Each may have at most ``max_client_requests`` requests in the grid
(queued, running, or waiting for a twin), may send at most ``client_rate`` requests a
second (a token bucket, off by default), and may leave at most
``max_client_backlog_bytes`` of replies unread on a connection: past any of these, its
new requests are refused with -32002 and a ``retry_after_ms`` hint, and no other client
is affected.

Replies the frontend socket cannot take now (ZeroMQ's queue for that connection is full:
the client does not read) wait in :class:`ReplyBacklog`, in order, counted in bytes.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from .broker_tables import ClientRecord, Refusal
from .config import OVERLOAD_RETRY_AFTER_MS
from .errors import ErrorCode

__all__ = ["CLIENT_MEMORY", "ClientTable", "ReplyBacklog"]

CLIENT_MEMORY = 10_000
"""Idle clients remembered (for their rate and the 'clients seen' figure), oldest first out."""


class ClientTable:
    """Every client seen lately, and whether it may send another request."""

    def __init__(self, max_requests: int, rate: float | None = None, burst: int | None = None,
                 memory: int = CLIENT_MEMORY) -> None:
        self.max_requests = max_requests
        self.rate = rate
        """Requests per second each client may send (None: no limit)."""
        self.burst = float(burst if burst is not None else max(1.0, rate or 1.0))
        self.memory = memory
        self._clients: OrderedDict[bytes, ClientRecord] = OrderedDict()
        self.refused = 0
        """Requests refused for a client's cap or rate."""

    def __len__(self) -> int:
        return len(self._clients)

    def seen(self, key: bytes, now: float) -> ClientRecord:
        """The client's record (created on first sight), marked as the most recent."""
        clients = self._clients
        record = clients.get(key)
        if record is None:
            record = clients[key] = ClientRecord(key, tokens=self.burst, refilled_at=now)
            if len(clients) > self.memory:
                self._forget_idle()
        else:
            clients.move_to_end(key)
        record.seen_at = now
        return record

    def _forget_idle(self) -> None:
        """Drop the oldest clients with nothing in the grid (busy ones are kept)."""
        clients = self._clients
        for key in list(clients):
            if len(clients) <= self.memory:
                return
            if clients[key].in_grid == 0:
                del clients[key]

    def admit(self, record: ClientRecord, now: float) -> Refusal | None:
        """Count a new request of ``record``'s, or say why it may not have one now."""
        if record.in_grid >= self.max_requests:
            self.refused += 1
            return _overloaded(
                f"Overloaded: this client has {record.in_grid} requests in the grid, the "
                f"limit per client is {self.max_requests}", OVERLOAD_RETRY_AFTER_MS)
        if self.rate is not None:
            record.tokens = min(self.burst,
                                record.tokens + (now - record.refilled_at) * self.rate)
            record.refilled_at = now
            if record.tokens < 1.0:
                self.refused += 1
                wait_ms = max(1, round((1.0 - record.tokens) / self.rate * 1000))
                return _overloaded(
                    f"Overloaded: this client may send {self.rate:g} requests per second",
                    wait_ms)
            record.tokens -= 1.0
        record.in_grid += 1
        return None

    def release(self, record: ClientRecord) -> None:
        """One of ``record``'s requests left the grid (answered or dropped)."""
        record.in_grid -= 1


def _overloaded(message: str, retry_after_ms: int) -> Refusal:
    return Refusal(ErrorCode.OVERLOADED, message, {"retry_after_ms": retry_after_ms})


class ReplyBacklog:
    """Replies waiting for room in a connection's ZeroMQ queue, in order, by connection."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        """Past this many bytes a connection's new requests are refused; past twice as
        many, its replies are dropped (the client is not reading them)."""
        self._waiting: dict[bytes, deque[list[bytes]]] = {}
        self._bytes: dict[bytes, int] = {}
        self.dropped = 0
        """Replies dropped: their connection held too many unread bytes, or went away."""
        self.refused = 0
        """Requests refused because their connection held too many unread bytes."""

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def bytes_for(self, identity: bytes) -> int:
        return self._bytes.get(identity, 0)

    def holds(self, identity: bytes) -> bool:
        """Replies already wait for this connection (new ones must queue behind them)."""
        return identity in self._waiting

    def refusal(self, identity: bytes) -> Refusal | None:
        """Why a new request on this connection is refused now, if it is."""
        held = self._bytes.get(identity, 0)
        if held < self.max_bytes:
            return None
        self.refused += 1
        return _overloaded(f"Overloaded: {held} bytes of replies to this connection are unread",
                           OVERLOAD_RETRY_AFTER_MS)

    def hold(self, frames: list[bytes]) -> bool:
        """Keep a reply (routing identity first) for later; False if it was dropped."""
        identity = frames[0]
        size = sum(len(frame) for frame in frames)
        held = self._bytes.get(identity, 0)
        if held + size > 2 * self.max_bytes:
            self.dropped += 1
            return False
        self._waiting.setdefault(identity, deque()).append(frames)
        self._bytes[identity] = held + size
        return True

    def total_bytes(self) -> int:
        return sum(self._bytes.values())

    def identities(self) -> list[bytes]:
        return list(self._waiting)

    def peek(self, identity: bytes) -> list[bytes] | None:
        queue = self._waiting.get(identity)
        return queue[0] if queue else None

    def sent(self, identity: bytes) -> None:
        """The oldest reply for ``identity`` left."""
        queue = self._waiting[identity]
        frames = queue.popleft()
        self._bytes[identity] -= sum(len(frame) for frame in frames)
        if not queue:
            del self._waiting[identity]
            del self._bytes[identity]

    def forget(self, identity: bytes) -> None:
        """The connection is gone: its replies can never be delivered."""
        self.dropped += len(self._waiting.pop(identity, ()))
        self._bytes.pop(identity, None)
