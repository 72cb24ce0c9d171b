"""The broker's tables and transitions. Pure: frames and ``now`` in, frames to send out.

Tables: the workers (in round-robin order), one FIFO queue per method, every live
request by key, a deadline heap. Each event is one method (:meth:`on_client_frame`,
:meth:`on_worker_message`, :meth:`on_tick`); what must be sent is collected and handed to
the socket loop by :meth:`take_sends`, so requests bound for one worker in one poll
round leave as one message.

Invariants (tested): a live request is either queued or held by exactly one live
worker; requests in flight to a worker plus its remaining credit never exceed the credit
it issued (a worker returns credit for requests that park awaiting nested calls, so it
may hold more requests than that); each client request gets at most one reply.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
from collections import Counter, OrderedDict, defaultdict, deque
from typing import Any

from . import broker_workers
from . import protocol as p
from .broker_info import answer_builtin
from .broker_tables import CLIENT_MEMORY, NO_PARENT, Batch, Request, WorkerRecord, idempotency_scope
from .config import BrokerConfig
from .errors import ErrorCode
from .jsonrpc import (
    Call,
    Invalid,
    batch_response,
    error_fragment,
    parse_frame,
    response,
)
from .metrics import CallStats, RateMeter
from .policy import CircuitBreaker, IdempotencyTable

__all__ = ["BACKEND", "FRONTEND", "BrokerState"]

log = logging.getLogger(__name__)

FRONTEND = 0
BACKEND = 1
BUILTIN_METHODS = frozenset({"_metrics", "_info", "_ping"})


class BrokerState:
    """Everything the broker knows, and every transition it makes."""

    def __init__(self, config: BrokerConfig, now: float) -> None:
        self.config = config
        self.started_at = now
        self.instance = os.urandom(8).hex()
        """Identifies this broker run: clients and workers notice a restart by it."""
        grace = config.adoption_grace_s
        if grace is None:
            grace = config.heartbeat_interval_s * config.heartbeat_liveness
        self.adoption_until = now + grace
        """Until then, workers may still be handing over what they ran for a previous
        broker; clients and workers that saw the restart wait so long before resending."""
        self.workers: OrderedDict[bytes, WorkerRecord] = OrderedDict()
        self.method_workers: Counter[str] = Counter()
        self.queues: dict[str, deque[Request]] = defaultdict(deque)
        self.queued = 0
        self.requests: dict[bytes, Request] = {}
        self.deadlines: list[tuple[float, bytes]] = []
        self.breakers: OrderedDict[str, CircuitBreaker] = OrderedDict()
        self.joined: dict[bytes, Request] = {}
        """Requests waiting for a running twin with the same idempotency key."""
        self.idempotency = IdempotencyTable(
            config.idempotency_window_s, config.max_idempotency_entries
        )
        self._next_key = random.getrandbits(62)
        self._frontend_out: list[list[bytes]] = []
        self._requests_out: dict[bytes, list[bytes]] = defaultdict(list)
        self._results_out: dict[bytes, list[bytes]] = defaultdict(list)
        self._cancels_out: dict[bytes, list[bytes]] = defaultdict(list)
        self._control_out: list[list[bytes]] = []
        # figures for _metrics
        self.counters: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.dropped: Counter[str] = Counter()
        self.methods: dict[str, CallStats] = defaultdict(CallStats)
        self.rate = RateMeter()
        self._rated = 0
        """Requests already counted into ``rate`` (it is fed once per tick, not per request)."""
        self.clients: OrderedDict[bytes, float] = OrderedDict()
        self.refused_peers: OrderedDict[bytes, bool] = OrderedDict()
        self.draining = False
        self.process_stats: dict[str, Any] = {}
        """CPU% and RSS of the broker process, refreshed by the socket loop."""

    # ================================================================ client side

    def on_client_frame(self, frames: list[bytes], now: float) -> None:
        """A message on the frontend: route frames, then one JSON-RPC frame."""
        if len(frames) < 2:
            self.dropped["client message without body"] += 1
            return
        route, body = frames[:-1], frames[-1]
        self._remember_client(route[0], now)
        parsed = parse_frame(body, max_batch=self.config.max_batch)
        if isinstance(parsed, Call):
            self._admit(parsed, now, route=route)
        elif isinstance(parsed, Invalid):
            self.errors[parsed.code] += 1
            self._frontend_out.append([*route, parsed.response()])
        else:
            self._admit_batch(route, parsed, now)

    def _remember_client(self, identity: bytes, now: float) -> None:
        clients = self.clients
        clients[identity] = now
        clients.move_to_end(identity)
        if len(clients) > CLIENT_MEMORY:
            clients.popitem(last=False)

    def _admit_batch(self, route: list[bytes], members: list[Call | Invalid], now: float) -> None:
        batch = Batch(route, [None] * len(members), 0)
        for index, member in enumerate(members):
            if isinstance(member, Invalid):
                self.errors[member.code] += 1
                batch.parts[index] = member.response()
            elif not member.is_notification:
                batch.waiting += 1
        nothing_to_wait_for = batch.waiting == 0
        for index, member in enumerate(members):
            if isinstance(member, Call):
                self._admit(member, now, route=route, batch=batch, index=index)
        if nothing_to_wait_for:   # otherwise the last member to finish sends the batch
            self._send_batch(batch)

    def _send_batch(self, batch: Batch) -> None:
        parts = [part for part in batch.parts if part is not None]
        if parts:
            self._frontend_out.append([*batch.route, batch_response(parts)])

    def _admit(
        self,
        call: Call,
        now: float,
        *,
        route: list[bytes] | None = None,
        batch: Batch | None = None,
        index: int = 0,
        caller: bytes | None = None,
        call_key: bytes = b"",
        parent: Request | None = None,
    ) -> None:
        builtin = call.method in BUILTIN_METHODS
        if not builtin:
            self.counters["requests"] += 1
        timeout_s = (call.options.timeout_ms or self.config.default_timeout_ms) / 1000
        deadline = now + timeout_s
        depth = 0
        if parent is not None:
            deadline = min(deadline, parent.deadline)
            depth = parent.depth + 1
        key = p.encode_key(self._next_key)
        self._next_key = (self._next_key + 1) & 0xFFFF_FFFF_FFFF_FFFF
        request = Request(
            key, call, deadline, depth, now, route, batch, index, caller, call_key,
            parent.key if parent is not None else NO_PARENT,
        )
        if builtin:
            code, fragment = answer_builtin(self, call, now)
            self._finish(request, fragment, code, now, record=False)
            return
        if self.draining:
            self._fail(request, ErrorCode.SHUTTING_DOWN, "broker is shutting down", now)
            return
        heapq.heappush(self.deadlines, (deadline, key))
        if call.options.idempotency_key is not None and not self._check_idempotency(request, now):
            return
        self.requests[key] = request
        if caller is not None:
            caller_record = self.workers.get(caller)
            if caller_record is not None:
                caller_record.calls.add(key)
        self._route(request, now)

    def _check_idempotency(self, request: Request, now: float) -> bool:
        """True if the request must run; else it joined a running twin or got its reply."""
        key = idempotency_scope(request.call)
        assert key is not None
        stored = self.idempotency.lookup(key, now)
        if stored is None:
            self.idempotency.start(key, request.key)
            return True
        self.counters["idempotent_hits"] += 1
        if isinstance(stored, bytes):
            twin = self.requests.get(stored)
            if twin is None:
                self.idempotency.start(key, request.key)
                return True
            self.idempotency.join(key, request.key)
            self.joined[request.key] = request
            return False
        code, fragment = stored
        self._finish(request, fragment, code, now, record=False)
        return False

    def _route(self, request: Request, now: float, requeue: bool = False) -> None:
        """Dispatch now, or queue; a re-dispatched request goes to the queue's front."""
        method = request.call.method
        worker = self._pick_worker(method, now)
        if worker is not None:
            self._dispatch(request, worker, now)
        elif not requeue and self.workers and self.method_workers[method] == 0:
            self._fail(request, ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method}", now)
        elif not requeue and self.queued >= self.config.max_queue:
            self._fail(
                request, ErrorCode.OVERLOADED,
                f"Overloaded: {self.queued} requests already wait for a worker", now,
            )
        else:
            queue = self.queues[method]
            if requeue:
                queue.appendleft(request)
            else:
                queue.append(request)
            request.queued = True
            self.queued += 1

    def grace_s(self, now: float) -> float:
        """Time left in which re-registering workers may hand over what they hold."""
        return round(max(0.0, self.adoption_until - now), 3)

    def _pick_worker(self, method: str, now: float) -> WorkerRecord | None:
        for worker in self.workers.values():
            if worker.credit > 0 and method in worker.methods and worker.breaker.allows(now):
                self.workers.move_to_end(worker.identity)
                return worker
        return None

    def _dispatch(self, request: Request, worker: WorkerRecord, now: float) -> None:
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
        self._requests_out[worker.identity] += [meta, call.method.encode(), call.encoded_body()]

    def _serve_queue(self, worker: WorkerRecord, now: float) -> None:
        """Give a worker with credit the oldest queued requests it can run."""
        while worker.credit > 0 and self.queued and worker.breaker.allows(now):
            oldest: deque[Request] | None = None
            for method in worker.methods:
                queue = self.queues.get(method)
                while queue and not queue[0].queued:
                    queue.popleft()  # answered while it waited
                if not queue:
                    continue
                if oldest is None or queue[0].received_at < oldest[0].received_at:
                    oldest = queue
            if oldest is None:
                return
            request = oldest.popleft()
            request.queued = False
            self.queued -= 1
            self._dispatch(request, worker, now)

    # ================================================================ completion

    def _finish(
        self, request: Request, fragment: bytes, code: int | None, now: float,
        record: bool = True,
    ) -> None:
        """Deliver a result (or error) fragment to whoever asked; forget the request."""
        self._forget(request)
        if code is not None:
            self.errors[code] += 1
        if record and self.config.collect_metrics:
            self.methods[request.call.method].record(now - request.received_at, code)
        key = idempotency_scope(request.call)
        if key is not None and record:
            for twin_key in self.idempotency.finish(key, request.key, (code, fragment), now):
                twin = self.joined.pop(twin_key, None)
                if twin is not None:
                    self._finish(twin, fragment, code, now, record=False)
        if request.caller is not None:
            caller = self.workers.get(request.caller)
            if caller is not None:
                caller.calls.discard(request.key)
                self._results_out[request.caller] += [request.call_key, fragment]
            return
        if request.batch is not None:
            batch = request.batch
            if request.call.id_json is not None:
                batch.parts[request.index] = response(request.call.id_json, fragment)
                batch.waiting -= 1
                if batch.waiting == 0:
                    self._send_batch(batch)
            return
        if request.call.id_json is not None and request.route is not None:
            self._frontend_out.append([*request.route, response(request.call.id_json, fragment)])

    def _fail(
        self, request: Request, code: int, message: str, now: float, data: Any = None
    ) -> None:
        self._finish(request, error_fragment(code, message, data), code, now)

    # ================================================================ worker side
    # (the transitions themselves are in broker_workers)

    def on_worker_message(self, identity: bytes, frames: list[bytes], now: float) -> None:
        """A message on the backend from worker ``identity``."""
        broker_workers.on_worker_message(self, identity, frames, now)

    def on_unreachable(self, identity: bytes, now: float) -> None:
        """A send to this worker failed (ROUTER_MANDATORY): it is gone."""
        broker_workers.on_unreachable(self, identity, now)

    def _forget(self, request: Request) -> None:
        self.requests.pop(request.key, None)
        if request.queued:
            request.queued = False
            self.queued -= 1

    def _drop(self, request: Request) -> None:
        """Forget a request without answering (its caller is gone); cancel it if running."""
        self._forget(request)
        if request.worker is not None:
            holder = self.workers.get(request.worker)
            if holder is not None:
                holder.in_flight.discard(request.key)
                self._cancels_out[request.worker].append(request.key)

    # ================================================================ time

    def on_tick(self, now: float) -> None:
        """Heartbeats, dead workers, deadlines, circuit breakers, idempotency expiry."""
        if self.config.collect_metrics:
            requests = self.counters["requests"]
            if requests > self._rated:
                self.rate.add(now, requests - self._rated)
                self._rated = requests
        for worker in list(self.workers.values()):
            if worker.heartbeat.expired(now):
                worker.breaker.on_failure(now)
                broker_workers.remove_worker(self, worker, "heartbeat lost", now)
            elif worker.heartbeat.due(now):
                self._control_out.append([worker.identity, *broker_workers.heartbeat(self, now)])
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, key = heapq.heappop(deadlines)
            request = self.requests.get(key) or self.joined.pop(key, None)
            if request is not None:
                self._expire(request, now)
        if self.queued:   # e.g. a circuit that may close again, with nothing else happening
            for worker in list(self.workers.values()):
                if worker.credit > 0:
                    self._serve_queue(worker, now)
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
        worker = self.workers.get(request.worker) if request.worker is not None else None
        if worker is not None:
            worker.in_flight.discard(request.key)
            self._cancels_out[worker.identity].append(request.key)
        self._fail(
            request, ErrorCode.TIMEOUT,
            f"Timeout: no result within {timeout_ms} ms", now, {"timeout_ms": timeout_ms},
        )

    def next_deadline(self) -> float | None:
        return self.deadlines[0][0] if self.deadlines else None

    # ================================================================ output

    def take_sends(self) -> list[tuple[int, list[bytes]]]:
        """Everything to send since the last call, as (socket, frames) pairs. Control
        messages to a worker go first: the heartbeat that acknowledges a READY must reach
        the worker before the first requests sent to it."""
        sends: list[tuple[int, list[bytes]]] = [(BACKEND, f) for f in self._control_out]
        self._control_out = []
        sends.extend((FRONTEND, f) for f in self._frontend_out)
        self._frontend_out = []
        for table, command in (
            (self._requests_out, p.REQUEST),
            (self._results_out, p.RESULT),
            (self._cancels_out, p.CANCEL),
        ):
            for identity, frames in table.items():
                if frames:
                    sends.append((BACKEND, [identity, p.TAG, command, *frames]))
            table.clear()
        return sends

