"""The broker's transitions. Pure: frames and ``now`` in, frames to send out.

Each event is one method (:meth:`BrokerState.on_client_frame`, :meth:`on_worker_message`,
:meth:`on_tick`); what must be sent is collected in an :class:`~madrpc.broker_outbox.Outbox`
and handed to the socket loop by :meth:`take_sends`. The state is made of parts with public
methods, a module each (docs/architecture.md draws them): request and worker tables,
dispatch, delivery, idempotency, adoption after a restart, figures and built-ins.

Invariants (tested): a live request is either queued or held by exactly one live
worker; requests in flight to a worker plus its remaining credit never exceed the credit
it issued (a worker returns credit for requests that park awaiting nested calls, so it
may hold more requests than that); each client request gets at most one reply.
"""

from __future__ import annotations

import logging
from typing import Any

from . import protocol as p
from .broker_adoption import Adoption
from .broker_delivery import Delivery
from .broker_dispatch import Dispatcher
from .broker_figures import BrokerFigures
from .broker_info import BUILTIN_METHODS, GridReport
from .broker_outbox import BACKEND, FRONTEND, Outbox
from .broker_requests import RequestTable
from .broker_tables import Batch, BrokerRun, Request, WorkerRecord, idempotency_scope
from .broker_workers import WorkerTable, ready_fields
from .config import BrokerConfig
from .errors import ErrorCode, ProtocolError
from .jsonrpc import Call, Invalid, error_fragment, fragment_error_code, parse_frame
from .policy import IdempotencyTable

__all__ = ["BACKEND", "FRONTEND", "BrokerState"]

log = logging.getLogger(__name__)


class BrokerState:
    """Everything the broker knows, and every transition it makes."""

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
        self.idempotency = IdempotencyTable(config.idempotency_window_s,
                                            config.max_idempotency_entries)
        self.delivery = Delivery(self.outbox, self.workers)
        self.figures = BrokerFigures(config.collect_metrics)
        self.adoption = Adoption(self.requests, self.idempotency, self.outbox,
                                 self.figures.counters)
        self.report = GridReport(config, self.run, self.figures, self.workers, self.requests,
                                 self.idempotency)

    # ================================================================ client side

    def on_client_frame(self, frames: list[bytes], now: float) -> None:
        """A message on the frontend: route frames, then one JSON-RPC frame."""
        if len(frames) < 2:
            self.figures.dropped["client message without body"] += 1
            return
        route, body = frames[:-1], frames[-1]
        self.figures.seen_client(route[0], now)
        parsed = parse_frame(body, max_batch=self.config.max_batch)
        if isinstance(parsed, Call):
            self._admit(parsed, now, route=route)
        elif isinstance(parsed, Invalid):
            self.figures.errors[parsed.code] += 1
            self.outbox.reply(route, parsed.response())
        else:
            self._admit_batch(route, parsed, now)

    def _admit_batch(self, route: list[bytes], members: list[Call | Invalid], now: float) -> None:
        batch = self.delivery.open_batch(route, members)
        nothing_to_wait_for = batch.waiting == 0
        for index, member in enumerate(members):
            if isinstance(member, Call):
                self._admit(member, now, route=route, batch=batch, index=index)
            else:
                self.figures.errors[member.code] += 1
        if nothing_to_wait_for:   # otherwise the last member to finish sends the batch
            self.delivery.send_batch(batch)

    def _admit(
        self, call: Call, now: float, *, route: list[bytes] | None = None,
        batch: Batch | None = None, index: int = 0, caller: WorkerRecord | None = None,
        call_key: bytes = b"", parent: Request | None = None,
    ) -> None:
        """A client's request, a batch member, or a nested call a worker made."""
        builtin = call.method in BUILTIN_METHODS
        if not builtin:
            self.figures.counters["requests"] += 1
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
        if builtin:
            code, fragment = self.report.answer(call, now)
            self._finish(request, fragment, code, now, record=False)
            return
        if self.run.draining:
            self._fail(request, ErrorCode.SHUTTING_DOWN, "broker is shutting down", now)
            return
        self.requests.watch(request)
        if call.options.idempotency_key is not None and not self._must_run(request, now):
            return
        self.requests.add(request)
        if caller is not None:
            caller.calls.add(request.key)
        self._route(request, now)

    def _must_run(self, request: Request, now: float) -> bool:
        """True if a keyed request must run; else it joined a running twin or got its reply."""
        scope = idempotency_scope(request.call)
        assert scope is not None
        stored = self.idempotency.lookup(scope, now)
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
        self._finish(request, fragment, code, now, record=False)
        return False

    def _route(self, request: Request, now: float, requeue: bool = False) -> None:
        refusal = self.dispatcher.route(request, now, requeue)
        if refusal is not None:
            self._fail(request, refusal.code, refusal.message, now)

    # ================================================================ completion

    def _finish(
        self, request: Request, fragment: bytes, code: int | None, now: float,
        record: bool = True,
    ) -> None:
        """Deliver a result (or error) fragment to whoever asked; forget the request."""
        self.requests.forget(request)
        if code is not None:
            self.figures.errors[code] += 1
        if record:
            self.figures.record(request.call.method, now - request.received_at, code)
            scope = idempotency_scope(request.call)
            if scope is not None:
                outcome = (code, fragment)
                for twin_key in self.idempotency.finish(scope, request.key, outcome, now):
                    twin = self.requests.joined.pop(twin_key, None)
                    if twin is not None:
                        self._finish(twin, fragment, code, now, record=False)
        self.delivery.deliver(request, fragment)

    def _fail(
        self, request: Request, code: int, message: str, now: float, data: Any = None
    ) -> None:
        self._finish(request, error_fragment(code, message, data), code, now)

    def _drop(self, request: Request) -> None:
        """Forget a request without answering (its caller is gone); cancel it if running."""
        self.requests.forget(request)
        holder = self.workers.get(request.worker) if request.worker is not None else None
        if holder is not None:
            holder.in_flight.discard(request.key)
            self.outbox.cancel(holder.identity, request.key)

    # ================================================================ worker side

    def on_worker_message(self, identity: bytes, frames: list[bytes], now: float) -> None:
        """A message on the backend from worker ``identity``."""
        try:
            message = p.decode(frames)
            if message.command == p.READY:
                self._on_ready(identity, message, now)
                return
            worker = self.workers.get(identity)
            if worker is None:
                self._on_stranger(identity, message)
                return
            worker.heartbeat.heard(now)
            self._on_worker_command(worker, message, now)
        except ProtocolError as exc:
            if self.figures.refused(identity):   # say why once per peer, not per message
                log.warning("refused a message from peer %s on the backend: %s",
                            identity.hex(), exc)

    def _on_worker_command(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        command = message.command
        if command == p.REPLY:
            self._on_reply(worker, message, now)
        elif command == p.CREDIT:
            worker.add_credit(message.credit())
            self.dispatcher.serve(worker, now)
        elif command == p.CALL:
            self._on_calls(worker, message, now)
        elif command == p.HEARTBEAT:
            stats = message.json()
            if isinstance(stats, dict):
                worker.stats = stats
        elif command == p.ADOPT:
            self.adoption.adopt(worker, message.frames, now)
        elif command == p.DRAIN:
            worker.draining = True
            worker.credit = 0
            log.info("worker %s draining: %d requests to finish",
                     worker.identity.hex(), len(worker.in_flight))
        elif command == p.DISCONNECT:
            self._remove_worker(worker, "disconnected", now)
        else:
            raise ProtocolError(f"{command.decode()} is not a worker-to-broker command")

    def _on_stranger(self, identity: bytes, message: p.Message) -> None:
        """A message from a peer that is not registered (we restarted, or declared it
        dead): ask it to register again."""
        command = message.command
        if command in (p.REQUEST, p.RESULT, p.CANCEL):
            self.figures.dropped["broker-to-worker command from a worker"] += 1
        if command != p.DISCONNECT:
            self.outbox.control(identity, self.run.disconnect("unknown worker"))
        if command == p.REPLY:
            self.figures.counters["late_replies"] += len(message.frames) // 2

    def _on_ready(self, identity: bytes, message: p.Message, now: float) -> None:
        info = message.json()
        methods, credit = ready_fields(info)
        old = self.workers.get(identity)
        if old is not None and info.get("update"):
            self.workers.update(old, info, methods, now)
            log.info("worker %s updated: %d methods", identity.hex(), len(methods))
            self.dispatcher.serve(old, now)
            return
        if old is not None:
            self._remove_worker(old, "registered again", now)
        worker = self.workers.add(identity, info, methods, credit, now)
        self.outbox.control(identity, self.run.heartbeat(now))   # acknowledges READY
        self.figures.counters["workers_joined"] += 1
        log.info(
            "worker %s joined: host=%s pid=%s contexts=%s credit=%d methods=%d",
            identity.hex(), info.get("host"), info.get("pid"), info.get("contexts"),
            credit, len(methods),
        )
        self.dispatcher.serve(worker, now)
        for request, refusal in self.dispatcher.unservable():
            self._fail(request, refusal.code, refusal.message, now)

    def _on_reply(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        worker.add_credit(message.credit())
        requests = self.requests
        for key, fragment in message.pairs(1):
            request = requests.get(key)
            if request is None or request.worker != worker.identity:
                self.figures.counters["late_replies"] += 1
                continue
            worker.in_flight.discard(key)
            code = fragment_error_code(fragment)
            if code == ErrorCode.WORKER_LOST:
                worker.breaker.on_failure(now)  # the worker lost an engine under it
            else:
                worker.breaker.on_success(now)
            if self.config.collect_metrics:
                worker.served.record(now - request.dispatched_at, code)
            self._finish(request, fragment, code, now)
        self.dispatcher.serve(worker, now)

    def _on_calls(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        max_depth = self.config.max_call_depth
        for meta, body in message.pairs():
            call_key, parent_key = p.decode_call_meta(meta)
            parsed = parse_frame(body)
            if not isinstance(parsed, Call):
                detail = parsed.message if isinstance(parsed, Invalid) else "batch not allowed"
                self._refuse_call(worker, call_key, ErrorCode.INVALID_REQUEST, detail)
                continue
            parent = None
            if parent_key != p.NO_PARENT:
                parent = self.requests.get(parent_key)
                if parent is None:
                    self._refuse_call(worker, call_key, ErrorCode.TIMEOUT,
                                      "Timeout: the calling request is no longer running")
                    continue
                if parent.depth + 1 > max_depth:
                    self._refuse_call(
                        worker, call_key, ErrorCode.DEPTH_EXCEEDED,
                        f"Call depth exceeded: nested calls deeper than {max_depth} levels",
                    )
                    continue
            self._admit(parsed, now, caller=worker, call_key=call_key, parent=parent)

    def _refuse_call(self, worker: WorkerRecord, call_key: bytes, code: int, message: str) -> None:
        self.figures.errors[code] += 1
        self.outbox.result(worker.identity, call_key, error_fragment(code, message))

    def _remove_worker(self, worker: WorkerRecord, reason: str, now: float) -> None:
        """Forget a worker; re-dispatch what it held, cancel the calls it made."""
        if self.workers.remove(worker.identity) is None:
            return
        self.figures.counters["workers_left"] += 1
        log.info("worker %s left (%s): %d requests to re-dispatch",
                 worker.identity.hex(), reason, len(worker.in_flight))
        for key in list(worker.calls):
            orphan = self.requests.get(key)
            if orphan is not None:
                self._drop(orphan)
        requests = self.requests
        oldest_first = sorted(worker.in_flight, key=lambda key: _received_at(requests, key))
        worker.in_flight.clear()
        for key in oldest_first:
            request = requests.get(key)
            if request is None:
                continue
            refusal = self.dispatcher.redispatch(request, now)
            if refusal is not None:
                self._fail(request, refusal.code, refusal.message, now, refusal.data)
            else:
                self.figures.counters["requeued"] += 1

    def on_unreachable(self, identity: bytes, now: float) -> None:
        """A send to this worker failed (ROUTER_MANDATORY): it is gone."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.breaker.on_failure(now)
            self._remove_worker(worker, "unreachable", now)

    # ================================================================ time

    def on_tick(self, now: float) -> None:
        """Heartbeats, dead workers, deadlines, circuit breakers, idempotency expiry."""
        self.figures.tick(now)
        for worker in self.workers.silent(now):
            worker.breaker.on_failure(now)
            self._remove_worker(worker, "heartbeat lost", now)
        for worker in self.workers.heartbeat_due(now):
            self.outbox.control(worker.identity, self.run.heartbeat(now))
        for request in self.requests.expired(now):
            self._expire(request, now)
        self.dispatcher.serve_all(now)   # e.g. a circuit that may close again
        self.idempotency.expire(now)

    def _expire(self, request: Request, now: float) -> None:
        timeout_ms = round((request.deadline - request.received_at) * 1000)
        if request.worker is None and request.queued:
            self._fail(
                request, ErrorCode.NO_WORKER,
                f"No worker available: no worker could take the request within {timeout_ms} ms",
                now,
            )
            return
        holder = self.workers.get(request.worker) if request.worker is not None else None
        if holder is not None:
            holder.in_flight.discard(request.key)
            self.outbox.cancel(holder.identity, request.key)
        self._fail(request, ErrorCode.TIMEOUT, f"Timeout: no result within {timeout_ms} ms",
                   now, {"timeout_ms": timeout_ms})

    def next_deadline(self) -> float | None:
        return self.requests.next_deadline()

    # ================================================================ output

    def take_sends(self) -> list[tuple[int, list[bytes]]]:
        """Everything to send since the last call, as (socket, frames) pairs."""
        return self.outbox.take()

    def goodbye_messages(self) -> list[list[bytes]]:
        """A DISCONNECT for every registered worker (the broker is stopping)."""
        return [[identity, *self.run.disconnect("shutting down")]
                for identity in self.workers]


def _received_at(requests: RequestTable, key: bytes) -> float:
    request = requests.get(key)
    return request.received_at if request is not None else 0.0
