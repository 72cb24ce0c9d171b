"""The broker's transitions for messages from workers (pure, like broker_state).

Registration (READY, updates, re-registration), liveness and circuit breakers, replies and
credit, nested calls, the hand-over after a broker restart (ADOPT), and forgetting a
worker (its requests dispatched again, the calls it made cancelled). Each function takes
the :class:`~madrpc.broker_state.BrokerState` it changes.
"""

from __future__ import annotations

import heapq
import logging
from typing import TYPE_CHECKING, Any

from . import protocol as p
from .broker_tables import (
    CLIENT_MEMORY,
    MAX_BREAKERS,
    NO_PARENT,
    Request,
    WorkerRecord,
    idempotency_scope,
)
from .errors import ErrorCode, ProtocolError
from .jsonrpc import Call, CallOptions, Invalid, error_fragment, fragment_error_code, parse_frame
from .liveness import Heartbeat
from .policy import CircuitBreaker

if TYPE_CHECKING:
    from .broker_state import BrokerState

__all__ = ["disconnect", "heartbeat", "on_unreachable", "on_worker_message", "remove_worker"]

log = logging.getLogger("madrpc.broker_state")


def on_worker_message(state: BrokerState, identity: bytes, frames: list[bytes], now: float) -> None:
    """A message on the backend from worker ``identity``."""
    try:
        message = p.decode(frames)
    except ProtocolError as exc:
        _refuse(state, identity, frames, exc)
        return
    command = message.command
    if command == p.READY:
        try:
            _on_ready(state, identity, message, now)
        except ProtocolError as exc:
            _refuse(state, identity, frames, exc)
        return
    worker = state.workers.get(identity)
    if worker is None:
        if command in (p.REQUEST, p.RESULT, p.CANCEL):
            state.dropped["broker-to-worker command from a worker"] += 1
        if command != p.DISCONNECT:
            # Unknown (we restarted, or declared it dead): ask it to register again.
            state._control_out.append([identity, *disconnect(state, "unknown worker")])
        if command == p.REPLY:
            state.counters["late_replies"] += len(message.frames) // 2
        return
    worker.heartbeat.heard(now)
    try:
        if command == p.REPLY:
            _on_reply(state, worker, message, now)
        elif command == p.CREDIT:
            _add_credit(state, worker, message.credit())
            state._serve_queue(worker, now)
        elif command == p.ADOPT:
            _on_adopt(state, worker, message, now)
        elif command == p.DRAIN:
            worker.draining = True
            worker.credit = 0
            log.info("worker %s draining: %d requests to finish",
                     worker.identity.hex(), len(worker.in_flight))
        elif command == p.CALL:
            _on_calls(state, worker, message, now)
        elif command == p.HEARTBEAT:
            stats = message.json()
            if isinstance(stats, dict):
                worker.stats = stats
        elif command == p.DISCONNECT:
            remove_worker(state, worker, "disconnected", now)
        else:
            raise ProtocolError(f"{command.decode()} is not a worker-to-broker command")
    except ProtocolError as exc:
        _refuse(state, identity, frames, exc)


def _refuse(state: BrokerState, identity: bytes, frames: list[bytes], exc: ProtocolError) -> None:
    """Count a bad message; say why once per peer (a flood must not flood the log)."""
    state.dropped["bad worker frames"] += 1
    if identity in state.refused_peers:
        state.refused_peers.move_to_end(identity)
        return
    state.refused_peers[identity] = True
    if len(state.refused_peers) > CLIENT_MEMORY:
        state.refused_peers.popitem(last=False)
    log.warning("refused a message from peer %s on the backend: %s", identity.hex(), exc)


def _on_ready(state: BrokerState, identity: bytes, message: p.Message, now: float) -> None:
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
    old = state.workers.get(identity)
    if old is not None and info.get("update"):
        _update_worker(state, old, info, frozenset(methods), now)
        return
    if old is not None:
        remove_worker(state, old, "registered again", now)
    worker = WorkerRecord(
        identity, info, frozenset(methods), credit,
        Heartbeat(state.config.heartbeat_interval_s, state.config.heartbeat_liveness, now),
        now, _breaker_for(state, str(info.get("id") or identity.hex())),
    )
    state.workers[identity] = worker
    state.method_workers.update(worker.methods)
    state._control_out.append([identity, *heartbeat(state, now)])  # acknowledges READY
    state.counters["workers_joined"] += 1
    log.info(
        "worker %s joined: host=%s pid=%s contexts=%s credit=%d methods=%d",
        identity.hex(), info.get("host"), info.get("pid"), info.get("contexts"),
        credit, len(methods),
    )
    state._serve_queue(worker, now)
    _fail_unservable(state, now)


def _update_worker(
    state: BrokerState, worker: WorkerRecord, info: dict[str, Any], methods: frozenset[str],
    now: float,
) -> None:
    """A registered worker reloaded its script: new methods, same requests and credit."""
    state.method_workers.subtract(worker.methods)
    state.method_workers.update(methods)
    worker.methods = methods
    worker.info = {**info, "update": False}
    worker.heartbeat.heard(now)
    log.info("worker %s updated: %d methods", worker.identity.hex(), len(methods))
    state._serve_queue(worker, now)


def _breaker_for(state: BrokerState, worker_id: str) -> CircuitBreaker:
    """The circuit breaker of a worker process; it outlives reconnections."""
    breaker = state.breakers.get(worker_id)
    if breaker is None:
        breaker = state.breakers[worker_id] = CircuitBreaker(
            failure_threshold=state.config.breaker_threshold
        )
        while len(state.breakers) > MAX_BREAKERS:
            state.breakers.popitem(last=False)
    state.breakers.move_to_end(worker_id)
    return breaker


def heartbeat(state: BrokerState, now: float) -> list[bytes]:
    return p.json_message(p.HEARTBEAT, {"broker": state.instance, "grace_s": state.grace_s(now)})


def disconnect(state: BrokerState, reason: str) -> list[bytes]:
    return p.json_message(p.DISCONNECT, {"reason": reason, "broker": state.instance})


def _on_adopt(state: BrokerState, worker: WorkerRecord, message: p.Message, now: float) -> None:
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
            if scope is not None and state.idempotency.lookup(scope, now) is None:
                state.idempotency.start(scope, old_key)
                state.idempotency.finish(
                    scope, old_key, (fragment_error_code(fragment), fragment), now
                )
                state.counters["adopted_results"] += 1
            continue
        if old_key in state.requests or not _may_adopt(state, scope, old_key, now):
            state._cancels_out[worker.identity].append(old_key)   # runs elsewhere already
            continue
        request = Request(old_key, call, now + timeout_ms / 1000, depth, now, adopted=True,
                          attempts=1, worker=worker.identity, dispatched_at=now)
        state.requests[old_key] = request
        heapq.heappush(state.deadlines, (request.deadline, old_key))
        worker.in_flight.add(old_key)
        if scope is not None and state.idempotency.lookup(scope, now) is None:
            state.idempotency.start(scope, old_key)
        state.counters["adopted"] += 1


def _may_adopt(state: BrokerState, scope: str | None, old_key: bytes, now: float) -> bool:
    """Whether a worker may keep running ``scope``'s request: yes if no other request
    has it, or if the one that has it still waits in the queue (it then joins)."""
    if scope is None:
        return True
    owner = state.idempotency.lookup(scope, now)
    if owner is None:
        return True
    waiting = state.requests.get(owner) if isinstance(owner, bytes) else None
    if waiting is None or not waiting.queued:
        return False
    state._forget(waiting)
    state.joined[waiting.key] = waiting
    state.idempotency.transfer(scope, old_key)
    return True


def _fail_unservable(state: BrokerState, now: float) -> None:
    """Queued requests for a method no registered worker offers get -32601.

    Only requests never dispatched: one whose worker died waits for its deadline.
    """
    for method, queue in state.queues.items():
        if queue and state.method_workers[method] == 0:
            for request in [r for r in queue if r.queued and r.attempts == 0]:
                state._fail(
                    request, ErrorCode.METHOD_NOT_FOUND, f"Method not found: {method}", now
                )


def _add_credit(state: BrokerState, worker: WorkerRecord, credit: int) -> None:
    if not worker.draining:
        worker.credit += credit


def _on_reply(state: BrokerState, worker: WorkerRecord, message: p.Message, now: float) -> None:
    _add_credit(state, worker, message.credit())
    requests = state.requests
    for key, fragment in message.pairs(1):
        request = requests.get(key)
        if request is None or request.worker != worker.identity:
            state.counters["late_replies"] += 1
            continue
        worker.in_flight.discard(key)
        code = fragment_error_code(fragment)
        if code == ErrorCode.WORKER_LOST:
            worker.breaker.on_failure(now)  # the worker lost an engine under it
        else:
            worker.breaker.on_success(now)
        if state.config.collect_metrics:
            worker.served.record(now - request.dispatched_at, code)
        state._finish(request, fragment, code, now)
    state._serve_queue(worker, now)


def _on_calls(state: BrokerState, worker: WorkerRecord, message: p.Message, now: float) -> None:
    for meta, body in message.pairs():
        call_key, parent_key = p.decode_call_meta(meta)
        parsed = parse_frame(body)
        if not isinstance(parsed, Call):
            detail = parsed.message if isinstance(parsed, Invalid) else "batch not allowed"
            _refuse_call(state, worker, call_key, ErrorCode.INVALID_REQUEST, detail)
            continue
        parent = None
        if parent_key != NO_PARENT:
            parent = state.requests.get(parent_key)
            if parent is None:
                _refuse_call(state, worker, call_key, ErrorCode.TIMEOUT,
                                  "Timeout: the calling request is no longer running")
                continue
            if parent.depth + 1 > state.config.max_call_depth:
                _refuse_call(state,
                    worker, call_key, ErrorCode.DEPTH_EXCEEDED,
                    f"Call depth exceeded: nested calls deeper than "
                    f"{state.config.max_call_depth} levels",
                )
                continue
        state._admit(parsed, now, caller=worker.identity, call_key=call_key, parent=parent)


def _refuse_call(
    state: BrokerState, worker: WorkerRecord, call_key: bytes, code: int, message: str
) -> None:
    state.errors[code] += 1
    state._results_out[worker.identity] += [call_key, error_fragment(code, message)]


def remove_worker(state: BrokerState, worker: WorkerRecord, reason: str, now: float) -> None:
    """Forget a worker; re-dispatch what it held, cancel the calls it made."""
    if state.workers.pop(worker.identity, None) is None:
        return
    state.method_workers.subtract(worker.methods)
    state.counters["workers_left"] += 1
    log.info(
        "worker %s left (%s): %d requests to re-dispatch",
        worker.identity.hex(), reason, len(worker.in_flight),
    )
    for key in list(worker.calls):
        orphan = state.requests.get(key)
        if orphan is not None:
            state._drop(orphan)
    for key in sorted(worker.in_flight, key=lambda k: state.requests[k].received_at
                      if k in state.requests else 0.0):
        request = state.requests.get(key)
        if request is None:
            continue
        request.worker = None
        if request.adopted:   # no body to run again: its twins learn and retry
            state._fail(request, ErrorCode.WORKER_LOST,
                       "Worker lost: the worker that adopted it died", now)
        elif request.attempts >= state.config.max_attempts:
            state._fail(
                request, ErrorCode.WORKER_LOST,
                f"Worker lost: the request was dispatched {request.attempts} times and "
                f"each worker running it died",
                now, {"attempts": request.attempts},
            )
        else:
            state.counters["requeued"] += 1
            state._route(request, now, requeue=True)
    worker.in_flight.clear()


def on_unreachable(state: BrokerState, identity: bytes, now: float) -> None:
    """A send to this worker failed (ROUTER_MANDATORY): it is gone."""
    worker = state.workers.get(identity)
    if worker is not None:
        worker.breaker.on_failure(now)
        remove_worker(state, worker, "unreachable", now)
