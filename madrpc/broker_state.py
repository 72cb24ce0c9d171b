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
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from .broker_info import answer_builtin
from .config import BrokerConfig
from .errors import ErrorCode, ProtocolError
from .jsonrpc import (
    Call,
    CallOptions,
    Invalid,
    batch_response,
    error_fragment,
    fragment_error_code,
    parse_frame,
    response,
)
from .liveness import Heartbeat
from .metrics import CallStats, RateMeter
from .policy import CircuitBreaker, IdempotencyTable

__all__ = ["BACKEND", "FRONTEND", "BrokerState"]

log = logging.getLogger(__name__)

FRONTEND = 0
BACKEND = 1
BUILTIN_METHODS = frozenset({"_metrics", "_info", "_ping"})
NO_PARENT = bytes(8)
CLIENT_MEMORY = 10_000
"""Distinct client identities remembered for the 'clients seen' figure."""
MAX_BREAKERS = 10_000
"""Circuit breakers kept for worker processes (oldest forgotten first)."""


@dataclass(slots=True)
class Batch:
    """A client's JSON-RPC batch: its parts fill in as members finish."""

    route: list[bytes]
    parts: list[bytes | None]
    waiting: int


@dataclass(slots=True)
class Request:
    key: bytes
    call: Call
    deadline: float
    depth: int
    received_at: float
    route: list[bytes] | None = None
    """Client route, for a client's request."""
    batch: Batch | None = None
    index: int = 0
    caller: bytes | None = None
    """Worker identity and call key, for a nested call made by a worker."""
    call_key: bytes = b""
    parent: bytes = NO_PARENT
    attempts: int = 0
    worker: bytes | None = None
    dispatched_at: float = 0.0
    queued: bool = False
    adopted: bool = False
    """Handed over by a worker after a broker restart: no body, no one to answer."""


@dataclass(slots=True)
class WorkerRecord:
    identity: bytes
    info: dict[str, Any]
    methods: frozenset[str]
    credit: int
    heartbeat: Heartbeat
    joined_at: float
    breaker: CircuitBreaker
    in_flight: set[bytes] = field(default_factory=set)
    calls: set[bytes] = field(default_factory=set)
    """Keys of nested calls this worker made and that are still live."""
    stats: dict[str, Any] = field(default_factory=dict)
    served: CallStats = field(default_factory=CallStats)
    draining: bool = False


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

    def on_worker_message(self, identity: bytes, frames: list[bytes], now: float) -> None:
        """A message on the backend from worker ``identity``."""
        try:
            message = p.decode(frames)
        except ProtocolError as exc:
            self._refuse(identity, frames, exc)
            return
        command = message.command
        if command == p.READY:
            try:
                self._on_ready(identity, message, now)
            except ProtocolError as exc:
                self._refuse(identity, frames, exc)
            return
        worker = self.workers.get(identity)
        if worker is None:
            if command in (p.REQUEST, p.RESULT, p.CANCEL):
                self.dropped["broker-to-worker command from a worker"] += 1
            if command != p.DISCONNECT:
                # Unknown (we restarted, or declared it dead): ask it to register again.
                self._control_out.append([identity, *self._disconnect("unknown worker")])
            if command == p.REPLY:
                self.counters["late_replies"] += len(message.frames) // 2
            return
        worker.heartbeat.heard(now)
        try:
            if command == p.REPLY:
                self._on_reply(worker, message, now)
            elif command == p.CREDIT:
                self._add_credit(worker, message.credit())
                self._serve_queue(worker, now)
            elif command == p.ADOPT:
                self._on_adopt(worker, message, now)
            elif command == p.DRAIN:
                worker.draining = True
                worker.credit = 0
                log.info("worker %s draining: %d requests to finish",
                         worker.identity.hex(), len(worker.in_flight))
            elif command == p.CALL:
                self._on_calls(worker, message, now)
            elif command == p.HEARTBEAT:
                stats = message.json()
                if isinstance(stats, dict):
                    worker.stats = stats
            elif command == p.DISCONNECT:
                self._remove_worker(worker, "disconnected", now)
            else:
                raise ProtocolError(f"{command.decode()} is not a worker-to-broker command")
        except ProtocolError as exc:
            self._refuse(identity, frames, exc)

    def _refuse(self, identity: bytes, frames: list[bytes], exc: ProtocolError) -> None:
        """Count a bad message; say why once per peer (a flood must not flood the log)."""
        self.dropped["bad worker frames"] += 1
        if identity in self.refused_peers:
            self.refused_peers.move_to_end(identity)
            return
        self.refused_peers[identity] = True
        if len(self.refused_peers) > CLIENT_MEMORY:
            self.refused_peers.popitem(last=False)
        log.warning("refused a message from peer %s on the backend: %s", identity.hex(), exc)

    def _on_ready(self, identity: bytes, message: p.Message, now: float) -> None:
        info = message.json()
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
        old = self.workers.get(identity)
        if old is not None and info.get("update"):
            self._update_worker(old, info, frozenset(methods), now)
            return
        if old is not None:
            self._remove_worker(old, "registered again", now)
        worker = WorkerRecord(
            identity, info, frozenset(methods), credit,
            Heartbeat(self.config.heartbeat_interval_s, self.config.heartbeat_liveness, now),
            now, self._breaker_for(str(info.get("id") or identity.hex())),
        )
        self.workers[identity] = worker
        self.method_workers.update(worker.methods)
        self._control_out.append([identity, *self._heartbeat(now)])  # acknowledges READY
        self.counters["workers_joined"] += 1
        log.info(
            "worker %s joined: host=%s pid=%s contexts=%s credit=%d methods=%d",
            identity.hex(), info.get("host"), info.get("pid"), info.get("contexts"),
            credit, len(methods),
        )
        self._serve_queue(worker, now)
        self._fail_unservable(now)

    def _update_worker(
        self, worker: WorkerRecord, info: dict[str, Any], methods: frozenset[str], now: float
    ) -> None:
        """A registered worker reloaded its script: new methods, same requests and credit."""
        self.method_workers.subtract(worker.methods)
        self.method_workers.update(methods)
        worker.methods = methods
        worker.info = {**info, "update": False}
        worker.heartbeat.heard(now)
        log.info("worker %s updated: %d methods", worker.identity.hex(), len(methods))
        self._serve_queue(worker, now)

    def _breaker_for(self, worker_id: str) -> CircuitBreaker:
        """The circuit breaker of a worker process; it outlives reconnections."""
        breaker = self.breakers.get(worker_id)
        if breaker is None:
            breaker = self.breakers[worker_id] = CircuitBreaker(
                failure_threshold=self.config.breaker_threshold
            )
            while len(self.breakers) > MAX_BREAKERS:
                self.breakers.popitem(last=False)
        self.breakers.move_to_end(worker_id)
        return breaker

    def _heartbeat(self, now: float) -> list[bytes]:
        return p.json_message(p.HEARTBEAT, {"broker": self.instance, "grace_s": self.grace_s(now)})

    def _disconnect(self, reason: str) -> list[bytes]:
        return p.json_message(p.DISCONNECT, {"reason": reason, "broker": self.instance})

    def _on_adopt(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        """A worker re-registering after a broker restart hands over what it holds:
        requests still running (placeholders; their replies are awaited) and keyed
        requests that finished (their replies are stored for the clients' retries)."""
        frames = message.frames
        for i in range(0, len(frames), 4):
            old_key, timeout_ms, depth = p.decode_adopt_meta(frames[i])
            method = frames[i + 1].decode(errors="replace")
            idem = frames[i + 2].decode(errors="replace") or None
            fragment = frames[i + 3]
            call = Call(method, None, None, CallOptions(idempotency_key=idem))
            scope = idempotency_scope(call)
            if fragment:
                if scope is not None and self.idempotency.lookup(scope, now) is None:
                    self.idempotency.start(scope, old_key)
                    self.idempotency.finish(
                        scope, old_key, (fragment_error_code(fragment), fragment), now
                    )
                    self.counters["adopted_results"] += 1
                continue
            if old_key in self.requests or not self._may_adopt(scope, old_key, now):
                self._cancels_out[worker.identity].append(old_key)   # runs elsewhere already
                continue
            request = Request(old_key, call, now + timeout_ms / 1000, depth, now, adopted=True,
                              attempts=1, worker=worker.identity, dispatched_at=now)
            self.requests[old_key] = request
            heapq.heappush(self.deadlines, (request.deadline, old_key))
            worker.in_flight.add(old_key)
            if scope is not None and self.idempotency.lookup(scope, now) is None:
                self.idempotency.start(scope, old_key)
            self.counters["adopted"] += 1

    def _may_adopt(self, scope: str | None, old_key: bytes, now: float) -> bool:
        """Whether a worker may keep running ``scope``'s request: yes if no other request
        has it, or if the one that has it still waits in the queue (it then joins)."""
        if scope is None:
            return True
        owner = self.idempotency.lookup(scope, now)
        if owner is None:
            return True
        waiting = self.requests.get(owner) if isinstance(owner, bytes) else None
        if waiting is None or not waiting.queued:
            return False
        self._forget(waiting)
        self.joined[waiting.key] = waiting
        self.idempotency.transfer(scope, old_key)
        return True

    def _fail_unservable(self, now: float) -> None:
        """Queued requests for a method no registered worker offers get -32601.

        Only requests never dispatched: one whose worker died waits for its deadline.
        """
        for method, queue in self.queues.items():
            if queue and self.method_workers[method] == 0:
                for request in [r for r in queue if r.queued and r.attempts == 0]:
                    self._fail(
                        request, ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method}", now
                    )

    def _add_credit(self, worker: WorkerRecord, credit: int) -> None:
        if not worker.draining:
            worker.credit += credit

    def _on_reply(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        self._add_credit(worker, message.credit())
        requests = self.requests
        for key, fragment in message.pairs(1):
            request = requests.get(key)
            if request is None or request.worker != worker.identity:
                self.counters["late_replies"] += 1
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
        self._serve_queue(worker, now)

    def _on_calls(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        for meta, body in message.pairs():
            call_key, parent_key = p.decode_call_meta(meta)
            parsed = parse_frame(body)
            if not isinstance(parsed, Call):
                detail = parsed.message if isinstance(parsed, Invalid) else "batch not allowed"
                self._refuse_call(worker, call_key, ErrorCode.INVALID_REQUEST, detail)
                continue
            parent = None
            if parent_key != NO_PARENT:
                parent = self.requests.get(parent_key)
                if parent is None:
                    self._refuse_call(worker, call_key, ErrorCode.TIMEOUT,
                                      "Timeout: the calling request is no longer running")
                    continue
                if parent.depth + 1 > self.config.max_call_depth:
                    self._refuse_call(
                        worker, call_key, ErrorCode.DEPTH_EXCEEDED,
                        f"Call depth exceeded: nested calls deeper than "
                        f"{self.config.max_call_depth} levels",
                    )
                    continue
            self._admit(parsed, now, caller=worker.identity, call_key=call_key, parent=parent)

    def _refuse_call(self, worker: WorkerRecord, call_key: bytes, code: int, message: str) -> None:
        self.errors[code] += 1
        self._results_out[worker.identity] += [call_key, error_fragment(code, message)]

    def _remove_worker(self, worker: WorkerRecord, reason: str, now: float) -> None:
        """Forget a worker; re-dispatch what it held, cancel the calls it made."""
        if self.workers.pop(worker.identity, None) is None:
            return
        self.method_workers.subtract(worker.methods)
        self.counters["workers_left"] += 1
        log.info(
            "worker %s left (%s): %d requests to re-dispatch",
            worker.identity.hex(), reason, len(worker.in_flight),
        )
        for key in list(worker.calls):
            orphan = self.requests.get(key)
            if orphan is not None:
                self._drop(orphan)
        for key in sorted(worker.in_flight, key=lambda k: self.requests[k].received_at
                          if k in self.requests else 0.0):
            request = self.requests.get(key)
            if request is None:
                continue
            request.worker = None
            if request.adopted:   # no body to run again: its twins learn and retry
                self._fail(request, ErrorCode.WORKER_LOST,
                           "Worker lost: the worker that adopted it died", now)
            elif request.attempts >= self.config.max_attempts:
                self._fail(
                    request, ErrorCode.WORKER_LOST,
                    f"Worker lost: the request was dispatched {request.attempts} times and "
                    f"each worker running it died",
                    now, {"attempts": request.attempts},
                )
            else:
                self.counters["requeued"] += 1
                self._route(request, now, requeue=True)
        worker.in_flight.clear()

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
                self._remove_worker(worker, "heartbeat lost", now)
            elif worker.heartbeat.due(now):
                self._control_out.append([worker.identity, *self._heartbeat(now)])
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
        """Everything to send since the last call, as (socket, frames) pairs."""
        sends: list[tuple[int, list[bytes]]] = [(FRONTEND, f) for f in self._frontend_out]
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
        sends.extend((BACKEND, f) for f in self._control_out)
        self._control_out = []
        return sends

    def on_unreachable(self, identity: bytes, now: float) -> None:
        """A send to this worker failed (ROUTER_MANDATORY): it is gone."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.breaker.on_failure(now)
            self._remove_worker(worker, "unreachable", now)


def idempotency_scope(call: Call) -> str | None:
    """The idempotency table's key: the client's key, within the method it names."""
    key = call.options.idempotency_key
    return None if key is None else f"{call.method}\x00{key}"
