"""The broker's request lifecycle: admit, route, finish, drop, expire. Pure: ``now`` in.

Both sides of the broker use it: the frontend (:mod:`madrpc.broker_frontend`) admits
clients' requests, the backend (:mod:`madrpc.broker_backend`) admits the nested calls
workers make and finishes requests with their replies. It owns the tables and policies
a request meets on its way (see docs/architecture.md) and knows nothing of where a
message came from beyond what the caller tells it.
"""

from __future__ import annotations

from typing import Any

from . import protocol as p
from .broker_clients import ClientTable, ReplyBacklog
from .broker_delivery import Delivery
from .broker_dispatch import Dispatcher
from .broker_figures import BrokerFigures
from .broker_info import BUILTIN_METHODS, GridReport
from .broker_outbox import Outbox
from .broker_requests import RequestTable
from .broker_scripts import Deployments, ScriptStore
from .broker_tables import (
    ADOPTED,
    Batch,
    BrokerRun,
    ClientRecord,
    Refusal,
    Request,
    WorkerRecord,
    idempotency_scope,
)
from .broker_workers import WorkerTable
from .config import BrokerConfig
from .errors import ErrorCode
from .jsonrpc import Call, error_fragment
from .policy import IdempotencyTable

__all__ = ["BrokerCore"]


class BrokerCore:
    """Every request's way through the broker, and the parts it meets on it."""

    def __init__(self, config: BrokerConfig, now: float) -> None:
        self.config = config
        grace = config.adoption_grace_s
        if grace is None:
            grace = config.heartbeat_interval_s * config.heartbeat_liveness
        self.run = BrokerRun(started_at=now, adoption_until=now + grace)
        self.outbox = Outbox()
        self.requests = RequestTable()
        self.workers = WorkerTable(config)
        self.dispatcher = Dispatcher(self.requests, self.workers, self.outbox, config.max_queue,
                                     config.max_attempts)
        self.idempotency = IdempotencyTable(
            config.idempotency_window_s, config.max_idempotency_entries,
            config.max_idempotency_bytes, config.max_idempotent_result_bytes,
        )
        self.delivery = Delivery(self.outbox, self.workers)
        self.figures = BrokerFigures(config.collect_metrics)
        self.clients = ClientTable(config.max_client_requests, config.client_rate,
                                   config.client_burst)
        self.backlog = ReplyBacklog(config.max_client_backlog_bytes)
        self.scripts = Deployments(ScriptStore(config.state_dir), self.workers, self.outbox)
        self.report = GridReport(config, self.run, self.figures, self.workers, self.requests,
                                 self.idempotency, self.clients, self.backlog,
                                 self.scripts.store)

    # ------------------------------------------------------------ admission

    def admit(
        self, call: Call, now: float, *, route: list[bytes] | None = None,
        batch: Batch | None = None, index: int = 0, client: ClientRecord | None = None,
        admin: bool = False, refusal: Refusal | None = None, origin: str = "",
        caller: WorkerRecord | None = None, call_key: bytes = b"", parent: Request | None = None,
    ) -> None:
        """A client's request (``client``, maybe refused up front with ``refusal``; its
        CURVE key is its ``origin``), a batch member, or a nested call a worker made
        (``caller``, ``parent``). Built-ins are answered at once (``admin`` may call the
        management ones)."""
        builtin = call.method in BUILTIN_METHODS
        if not builtin:
            self.figures.counters["requests"] += 1
            if call.body is not None:   # forwarded as received: drop the decoded copy
                call.params = None
        deadline = now + (call.options.timeout_ms or self.config.default_timeout_ms) / 1000
        depth = 0
        if parent is not None:
            deadline = min(deadline, parent.deadline)
            depth = parent.depth + 1
        request = Request(
            self.requests.new_key(), call, deadline, depth, now, route, batch, index,
            caller.identity if caller is not None else None, call_key,
            parent.key if parent is not None else p.NO_PARENT,
        )
        request.scope = idempotency_scope(
            call, f"w{caller.key or ''}" if caller is not None else f"c{origin}")
        request.granted = call.options.stream_window or 0
        if builtin:
            code, fragment = self.report.answer(call, now, admin)
            self.finish(request, fragment, code, now, record=False)
            return
        self._enter(request, call, now, client, refusal, caller)

    def answer(self, call: Call, now: float, fragment: bytes, *, route: list[bytes] | None,
               batch: Batch | None = None, index: int = 0) -> None:
        """Answer a call at once with ``fragment`` (a built-in the caller handled)."""
        request = Request(self.requests.new_key(), call, now, 0, now, route, batch, index)
        self.finish(request, fragment, None, now, record=False)

    def _enter(self, request: Request, call: Call, now: float, client: ClientRecord | None,
              refusal: Refusal | None, caller: WorkerRecord | None) -> None:
        """A request that is not a built-in: refused, joined to a twin, or routed."""
        if self.run.draining:
            refusal = Refusal(ErrorCode.SHUTTING_DOWN, "broker is shutting down")
        if refusal is None and client is not None:
            refusal = self.clients.admit(client, now)
        if refusal is not None:
            self.refuse(request, refusal, now)
            return
        request.client = client
        self.requests.watch(request)
        if request.scope is not None and not self._must_run(request, request.scope, now):
            return
        self.requests.add(request)
        if caller is not None:
            caller.calls.add(request.key)
        self.route(request, now)

    def _must_run(self, request: Request, scope: str, now: float) -> bool:
        """True if a keyed request must run; else it joined a running twin or got its reply
        (its own origin's, or one a worker handed over after a broker restart)."""
        stored = self.idempotency.lookup(scope, now)
        if stored is None:
            adopted = idempotency_scope(request.call, ADOPTED)
            assert adopted is not None
            stored = self.idempotency.lookup(adopted, now)
            if stored is not None:
                scope = request.scope = adopted
        if stored is None:
            self.idempotency.start(scope, request.key)
            return True
        self.figures.counters["idempotent_hits"] += 1
        if isinstance(stored, bytes):
            if stored not in self.requests:
                self.idempotency.start(scope, request.key)
                return True
            self.idempotency.join(scope, request.key)
            self.requests.join(request)
            return False
        code, fragment = stored
        self.finish(request, fragment, code, now, record=False)
        return False

    def route(self, request: Request, now: float, requeue: bool = False) -> None:
        refusal = self.dispatcher.route(request, now, requeue)
        if refusal is not None:
            self.refuse(request, refusal, now)

    # ------------------------------------------------------------ completion

    def finish(
        self, request: Request, fragment: bytes, code: int | None, now: float,
        record: bool = True,
    ) -> None:
        """Deliver a result (or error) fragment to whoever asked; forget the request."""
        self.requests.forget(request)
        self._release(request)
        if code is not None:
            self.figures.error(code)
        if record:
            if request.attempts:   # a worker served its method: worth a line in _metrics
                self.figures.record(request.call.method, now - request.received_at, code)
            scope = request.scope
            if scope is not None:
                outcome = (code, fragment)
                for twin_key in self.idempotency.finish(scope, request.key, outcome, now):
                    twin = self.requests.joined.get(twin_key)
                    if twin is not None:
                        self.finish(twin, fragment, code, now, record=False)
        if code is not None:   # what it asked for is not wanted any more
            for child in self.requests.children(request.key):
                if child.deadline <= now:
                    self._time_out(child, now)
                else:
                    self.cancel(child, now, "the request that made this call failed")
        self.delivery.deliver(request, fragment)

    def cancel(self, request: Request, now: float, reason: str) -> None:
        """Stop a request wherever it is (queued, running, waiting for a twin), answer it
        with -32011, and cancel every nested call it made, at any depth. A request other
        clients' requests have joined (same idempotency key) keeps running for them: only
        its own client is answered."""
        scope = request.scope
        joined = self.idempotency.joined_to(scope, request.key) if scope is not None else []
        if any(key in self.requests.joined for key in joined):
            self.delivery.deliver(request, error_fragment(ErrorCode.CANCELLED,
                                                          f"Cancelled: {reason}"))
            self._release(request)
            request.route, request.batch = None, None   # nobody of its own to answer
            return
        self._stop_on_worker(request)
        self.fail(request, ErrorCode.CANCELLED, f"Cancelled: {reason}", now)

    def grant(self, request: Request, items: int) -> int:
        """The consumer of a running stream took ``items`` more: its worker may send as many
        more, as far as the window allows (granted but undelivered never exceeds it).
        Returns the grant passed on."""
        window = request.window
        if window is None or request.worker is None:
            return 0
        items = min(items, window - (request.granted - request.items))
        if items <= 0:
            return 0
        request.granted += items
        self.outbox.more(request.worker, request.key, items)
        return items

    def stop(self, request: Request, code: int, message: str, now: float) -> None:
        """Stop a request on its worker (if it runs) and answer it with an error."""
        self._stop_on_worker(request)
        self.fail(request, code, message, now)

    def fail(
        self, request: Request, code: int, message: str, now: float, data: Any = None
    ) -> None:
        self.finish(request, error_fragment(code, message, data), code, now)

    def refuse(self, request: Request, refusal: Refusal, now: float) -> None:
        self.fail(request, refusal.code, refusal.message, now, refusal.data)

    def drop(self, request: Request, now: float) -> None:
        """Forget a request without answering (its caller is gone); cancel it if running,
        and every nested call it made, at any depth."""
        self.requests.forget(request)
        self._release(request)
        self._stop_on_worker(request)
        for child in self.requests.children(request.key):
            self.cancel(child, now, "the request that made this call is gone")

    def _stop_on_worker(self, request: Request) -> None:
        """The worker holding the request (if any) stops it (CANCEL)."""
        holder = self.workers.get(request.worker) if request.worker is not None else None
        if holder is not None:
            holder.in_flight.discard(request.key)
            self.outbox.cancel(holder.identity, request.key)
            request.worker = None

    def _release(self, request: Request) -> None:
        if request.client is not None:
            self.clients.release(request.client)
            request.client = None

    # ------------------------------------------------------------ time

    def expire_due(self, now: float) -> None:
        """Answer every request whose deadline has passed."""
        for request in self.requests.expired(now):
            self._time_out(request, now)

    def _time_out(self, request: Request, now: float) -> None:
        timeout_ms = round((request.deadline - request.received_at) * 1000)
        if request.worker is None and request.queued:
            self.fail(request, ErrorCode.NO_WORKER, "No worker available: no worker "
                      f"could take the request within {timeout_ms} ms", now)
            return
        self._stop_on_worker(request)
        self.fail(request, ErrorCode.TIMEOUT, f"Timeout: no result within {timeout_ms} ms",
                  now, {"timeout_ms": timeout_ms})
