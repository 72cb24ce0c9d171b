"""Who runs what: the broker's dispatch policy over its request and worker tables.

A request goes to the next worker in rotation that serves its method, has credit and
whose circuit breaker allows it; otherwise it waits in its method's queue (a request
dispatched again after its worker died waits at the front). A worker that gains credit
takes the longest-waiting requests it can run. Pure: ``now`` in, REQUEST frames out
(through the outbox); refusals are returned to the caller, which answers them.

Finding the next worker is a walk along the rotation; when every worker of a method is
busy it walks all of them, so the dispatcher remembers which methods found nobody and
queues their requests at once until some worker may have room again (it took requests
and kept credit, registered, changed its methods, was resumed, or a tick passed: a
circuit breaker lets a trial through only with time).
"""

from __future__ import annotations

import math

from . import protocol as p
from .broker_outbox import Outbox
from .broker_requests import RequestTable
from .broker_tables import Refusal, Request, WorkerRecord
from .broker_workers import WorkerTable
from .config import OVERLOAD_RETRY_AFTER_MS
from .errors import ErrorCode

__all__ = ["Dispatcher", "Refusal"]



class Dispatcher:
    """Matches requests to workers with credit."""

    def __init__(
        self, requests: RequestTable, workers: WorkerTable, outbox: Outbox, max_queue: int,
        max_attempts: int,
    ) -> None:
        self.requests = requests
        self.workers = workers
        self.outbox = outbox
        self.max_queue = max_queue
        """Requests that may wait for a worker; past this, new ones are refused."""
        self.max_attempts = max_attempts
        """Dispatches of one request whose workers keep dying, before it fails."""
        self._starved: set[str] = set()
        """Served methods for which no worker could take a request when last asked."""
        self._changes = workers.changes

    def route(self, request: Request, now: float, requeue: bool = False) -> Refusal | None:
        """Dispatch now or queue; a refusal when no registered worker serves the method
        or the queue is full (never for a request dispatched again: it was accepted)."""
        method = request.call.method
        workers = self.workers
        if workers.changes != self._changes:
            self._changes = workers.changes
            self._starved.clear()
        worker = None
        if method not in self._starved:
            worker = workers.pick(method, now)
            if worker is None and workers.serving(method):
                self._starved.add(method)
        if worker is not None:
            self.dispatch(request, worker, now)
        elif not requeue and self.workers and self.workers.serving(method) == 0:
            return Refusal(ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method}")
        elif not requeue and self.requests.queued >= self.max_queue:
            return Refusal(ErrorCode.OVERLOADED,
                           f"Overloaded: {self.requests.queued} requests already wait for a "
                           "worker", {"retry_after_ms": OVERLOAD_RETRY_AFTER_MS})
        else:
            self.requests.enqueue(request, front=requeue)
        return None

    def redispatch(self, request: Request, now: float) -> Refusal | None:
        """The worker running ``request`` died: run it again elsewhere (first in line), or
        refuse when it cannot run again."""
        request.worker = None
        if request.adopted:   # no body to run again: its twins learn and retry
            return Refusal(ErrorCode.WORKER_LOST, "Worker lost: the worker that adopted it died")
        if request.items:   # its consumer has items already: running it again would repeat them
            return Refusal(
                ErrorCode.WORKER_LOST,
                f"Worker lost: the worker running the stream died after it had sent "
                f"{request.items} items (a stream is never run twice)", {"items": request.items},
            )
        if request.attempts >= self.max_attempts:
            return Refusal(
                ErrorCode.WORKER_LOST,
                f"Worker lost: the request was dispatched {request.attempts} times and each "
                "worker running it died", {"attempts": request.attempts},
            )
        return self.route(request, now, requeue=True)

    def unservable(self) -> list[tuple[Request, Refusal]]:
        """Queued requests for a method no registered worker offers any more, each with
        its refusal. Only requests never dispatched: one whose worker died waits for its
        deadline (a worker serving it may come back)."""
        return [
            (request, Refusal(ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method}"))
            for method in self.requests.queued_methods() if self.workers.serving(method) == 0
            for request in self.requests.never_dispatched(method)
        ]

    def dispatch(self, request: Request, worker: WorkerRecord, now: float) -> None:
        worker.credit -= 1
        worker.in_flight.add(request.key)
        worker.breaker.on_dispatch(now)
        request.worker = worker.identity
        request.attempts += 1
        request.dispatched_at = now
        call = request.call
        meta = p.encode_request_meta(
            request.key,
            (request.deadline - now) * 1000,
            math.ceil(call.options.cpu_limit_ms or 0),
            request.depth,
            math.ceil(call.options.max_memory_mb or 0),
        )
        self.outbox.request(worker.identity, meta, call.method.encode(), call.encoded_body())

    def serve(self, worker: WorkerRecord, now: float) -> None:
        """Give a worker with credit the oldest queued requests it can run."""
        requests = self.requests
        while (worker.credit > 0 and requests.queued and not worker.paused
               and worker.breaker.allows(now)):
            request = requests.take_oldest(worker.methods)
            if request is None:
                break
            self.dispatch(request, worker, now)
        if (self._starved and worker.credit > 0 and not worker.paused
                and worker.breaker.allows(now)):
            self._starved.difference_update(worker.methods)   # it has room for more

    def serve_all(self, now: float) -> None:
        """Every worker with credit takes what it can (e.g. after a circuit closed)."""
        self._starved.clear()   # time may have let a circuit breaker try a request
        if self.requests.queued:
            for worker in list(self.workers.values()):
                if worker.credit > 0:
                    self.serve(worker, now)
