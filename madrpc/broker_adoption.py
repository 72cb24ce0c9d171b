"""ADOPT: what a worker hands a new broker run after a broker restart (docs/protocol.md
§5.11). Pure: frames and ``now`` in; table changes and CANCELs out.

A worker re-registering with a new broker run sends what it still holds:

* requests still running: they become placeholders (no body, no one to answer yet) whose
  replies are awaited, so a client's resend of the same idempotency key joins them
  instead of running the function again; one that already runs elsewhere is cancelled;
* keyed requests that finished lately: their replies are stored as the outcome of that
  idempotency key, so a client's resend is answered without running again.
"""

from __future__ import annotations

from collections import Counter

from . import protocol as p
from .broker_outbox import Outbox
from .broker_requests import RequestTable
from .broker_tables import ADOPTED, Request, WorkerRecord, idempotency_scope
from .jsonrpc import Call, CallOptions, checked_fragment
from .policy import IdempotencyTable

__all__ = ["Adoption"]


class Adoption:
    """Turns ADOPT entries into placeholders, stored outcomes or cancellations."""

    def __init__(
        self, requests: RequestTable, idempotency: IdempotencyTable, outbox: Outbox,
        counters: Counter[str],
    ) -> None:
        self.requests = requests
        self.idempotency = idempotency
        self.outbox = outbox
        self.counters = counters

    def adopt(self, worker: WorkerRecord, frames: list[bytes], now: float) -> None:
        """The ADOPT body ``frames``: ([meta][method][idempotency key][fragment])+."""
        for i in range(0, len(frames), 4):
            old_key, timeout_ms, depth = p.decode_adopt_meta(frames[i])
            method = frames[i + 1].decode(errors="replace")
            client_key = frames[i + 2].decode(errors="replace") or None
            fragment = frames[i + 3]
            call = Call(method, None, None, CallOptions(idempotency_key=client_key))
            if fragment:
                self._store(idempotency_scope(call, ADOPTED), old_key, fragment, now)
            else:
                self._take_over(worker, call, old_key, now + timeout_ms / 1000, depth, now)

    def _store(self, scope: str | None, old_key: bytes, fragment: bytes, now: float) -> None:
        """A finished keyed request: its outcome, unless this run knows the key already
        (or the fragment is not a well-formed result or error)."""
        idempotency = self.idempotency
        checked = checked_fragment(fragment)
        if checked is None:
            self.counters["malformed_replies"] += 1
        elif scope is not None and idempotency.lookup(scope, now) is None:
            idempotency.start(scope, old_key)
            idempotency.finish(scope, old_key, checked, now)
            self.counters["adopted_results"] += 1

    def _take_over(
        self, worker: WorkerRecord, call: Call, old_key: bytes, deadline: float, depth: int,
        now: float,
    ) -> None:
        """A request still running on ``worker``: a placeholder awaits its reply."""
        adoptable, scope = self._adoptable(call, old_key, now)
        if old_key in self.requests or not adoptable:
            self.outbox.cancel(worker.identity, old_key)   # runs elsewhere already
            return
        request = Request(old_key, call, deadline, depth, now, adopted=True, attempts=1,
                          worker=worker.identity, dispatched_at=now, scope=scope)
        self.requests.add(request)
        self.requests.watch(request)
        worker.in_flight.add(old_key)
        if scope is not None and self.idempotency.lookup(scope, now) is None:
            self.idempotency.start(scope, old_key)
        self.counters["adopted"] += 1

    def _adoptable(self, call: Call, old_key: bytes, now: float) -> tuple[bool, str | None]:
        """Whether a worker may keep running ``call`` (old key ``old_key``): not if a
        request with its method and key already runs here; and the idempotency scope its
        placeholder takes. A request of this run that still waits in the queue with the
        same method and key (whatever its origin: the worker cannot say whose the handed
        over one was) joins the placeholder instead of running."""
        scope = idempotency_scope(call, ADOPTED)
        if scope is None:
            return True, None
        twin = self.requests.find_keyed(call.method, call.options.idempotency_key or "")
        owner = self.idempotency.lookup(scope, now)
        if twin is None and isinstance(owner, bytes):
            twin = self.requests.get(owner)   # another worker handed the same one over
        if twin is None:
            return True, scope
        if not twin.queued or twin.scope is None:
            return False, None
        self.requests.set_aside(twin)
        self.requests.join(twin)
        self.idempotency.transfer(twin.scope, old_key)
        return True, twin.scope
