"""The broker's backend: what a worker's message means. Pure: frames, the peer's CURVE key
and ``now`` in; table changes and answers through :class:`~madrpc.broker_core.BrokerCore`.

Registration (READY, updates, re-registration), liveness, replies and credit, nested
calls, streams (items within the window their consumer allowed), the hand-over after a
broker restart (ADOPT), and forgetting a worker (what it held runs again, the calls it
made are cancelled). A worker answers only what it was sent: replies for requests it does
not hold are dropped and counted, reply fragments and stream items are checked before
they are spliced into responses, ADOPT is taken only in the adoption window after the
broker starts, and with CURVE every message must come from the key the worker registered
with, a key the :class:`~madrpc.curve.KeyRing` still accepts.
"""

from __future__ import annotations

import logging

from . import protocol as p
from .broker_adoption import Adoption
from .broker_core import BrokerCore
from .broker_tables import Request, WorkerRecord
from .broker_workers import ready_fields
from .curve import WORKER, KeyRing
from .errors import ErrorCode, ProtocolError
from .jsonrpc import (
    Call,
    Invalid,
    checked_fragment,
    checked_items,
    error_fragment,
    error_response,
    parse_frame,
)
from .jsonrpc_large import parse_large_frame

__all__ = ["MAX_HEARTBEAT_BYTES", "Backend"]

log = logging.getLogger(__name__)

MAX_HEARTBEAT_BYTES = 256 * 1024
"""Largest heartbeat snapshot kept for ``_metrics`` (bigger ones are dropped, counted)."""
MALFORMED_REPLY = error_fragment(
    ErrorCode.INTERNAL_ERROR, "Internal error: the worker sent a malformed reply"
)


class Backend:
    """Worker messages in; registrations, answers and nested calls out."""

    def __init__(self, core: BrokerCore, keys: KeyRing | None) -> None:
        self.core = core
        self.keys = keys
        """None without CURVE: any peer that speaks the protocol may register."""
        self.adoption = Adoption(core.requests, core.idempotency, core.outbox,
                                 core.figures.counters)

    def on_message(self, identity: bytes, frames: list[bytes], now: float,
                   peer: str | None = None) -> None:
        """A message on the backend from ``identity``; ``peer`` is its CURVE key (z85)."""
        try:
            message = p.decode(frames)
            if message.command == p.READY:
                self._on_ready(identity, message, now, peer)
                return
            if message.command == p.FETCH:
                if self.keys is not None and not self.keys.allows(WORKER, peer):
                    raise ProtocolError("FETCH from a key that may not be a worker")
                version = message.frames[0].decode(errors="replace") if message.frames else ""
                self.core.scripts.on_fetch(identity, version)
                return
            worker = self.core.workers.get(identity)
            if worker is None or (self.keys is not None and worker.key != peer):
                self._on_stranger(identity, message)
                return
            worker.heartbeat.heard(now)
            self._on_command(worker, message, now)
        except ProtocolError as exc:
            if self._client_at_the_wrong_port(identity, frames):
                return
            if self.core.figures.refused(identity):   # say why once per peer, not per message
                log.warning("refused a message from peer %s on the backend: %s",
                            identity.hex(), exc)

    def _client_at_the_wrong_port(self, identity: bytes, frames: list[bytes]) -> bool:
        """A JSON-RPC request on the backend: a client given the workers' port. Answer
        it with an error that says so (it would otherwise wait for its timeout)."""
        if not frames or frames[-1][:1] not in (b"{", b"["):
            return False
        parsed = parse_frame(frames[-1])
        members = parsed if isinstance(parsed, list) else [parsed]
        ids = [m.id_json for m in members if isinstance(m, Call) and not m.is_notification]
        if not ids:
            return False
        self.core.figures.dropped["client request on the backend"] += 1
        message = ("Invalid Request: this is the broker's backend, the workers' port; "
                   "clients connect to its frontend (--frontend, port 5555 by default)")
        for request_id in ids:
            self.core.outbox.control(identity, [*frames[:-1], error_response(
                request_id or b"null", ErrorCode.INVALID_REQUEST, message)])
        return True

    def _on_command(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        core, command = self.core, message.command
        if command == p.REPLY:
            self._on_reply(worker, message, now)
        elif command == p.CREDIT:
            worker.add_credit(message.credit())
            core.dispatcher.serve(worker, now)
        elif command == p.CALL:
            self._on_calls(worker, message, now)
        elif command == p.PARTIAL:
            self._on_partials(worker, message, now)
        elif command == p.MORE:
            for call_key, items in message.pairs():
                call = self._call_made_by(worker, call_key)
                if call is not None:
                    core.grant(call, p.decode_grant(items))
        elif command == p.ABANDON:
            for call_key in message.frames:
                call = self._call_made_by(worker, call_key)
                if call is not None:
                    core.cancel(call, now, "the code that made the call left it")
        elif command == p.HEARTBEAT:
            if message.frames and len(message.frames[0]) > MAX_HEARTBEAT_BYTES:
                core.figures.dropped["heartbeat snapshot too large"] += 1
                return
            stats = message.json()
            if isinstance(stats, dict):
                worker.stats = stats
        elif command == p.ADOPT:
            if now <= core.run.adoption_until:
                self.adoption.adopt(worker, message.frames, now)
            else:
                self._refuse_adoption(worker, message)
        elif command == p.DRAIN:
            worker.draining = True
            worker.credit = 0
            log.info("worker %s draining: %d requests to finish",
                     worker.identity.hex(), len(worker.in_flight))
        elif command == p.DISCONNECT:
            self.remove_worker(worker, "disconnected", now)
        else:
            raise ProtocolError(f"{command.decode()} is not a worker-to-broker command")

    def _on_stranger(self, identity: bytes, message: p.Message) -> None:
        """A message from a peer that is not registered (we restarted, declared it dead,
        or its key changed): ask it to register again."""
        core, command = self.core, message.command
        if command in (p.REQUEST, p.RESULT, p.CANCEL):
            core.figures.dropped["broker-to-worker command from a worker"] += 1
        if command != p.DISCONNECT:
            core.outbox.control(identity, core.run.disconnect("unknown worker"))
        if command == p.REPLY:
            core.figures.counters["late_replies"] += len(message.frames) // 2

    def _refuse_adoption(self, worker: WorkerRecord, message: p.Message) -> None:
        """ADOPT after the adoption window: nothing is taken over; what still runs on the
        worker is cancelled (this broker never sent it)."""
        core = self.core
        core.figures.dropped["ADOPT after the adoption window"] += 1
        frames = message.frames
        for i in range(0, len(frames), 4):
            if not frames[i + 3]:
                core.outbox.cancel(worker.identity, p.decode_adopt_meta(frames[i])[0])

    def _on_ready(self, identity: bytes, message: p.Message, now: float,
                  peer: str | None) -> None:
        core = self.core
        if self.keys is not None and not self.keys.allows(WORKER, peer):
            raise ProtocolError("READY from a key that may not register a worker")
        info = message.json()
        methods, credit = ready_fields(info)
        old = core.workers.get(identity)
        if old is not None and old.key == peer and info.get("update"):
            core.workers.update(old, info, methods, now)
            log.info("worker %s updated: %d methods", identity.hex(), len(methods))
            core.dispatcher.serve(old, now)
            return
        worker_id = str(info.get("id") or identity.hex())
        if core.workers.id_taken(worker_id, identity):
            raise ProtocolError(f"READY refused: a worker with id {worker_id!r} is registered")
        if old is not None:
            self.remove_worker(old, "registered again", now)
        elif len(core.workers) >= core.config.max_workers:
            raise ProtocolError(f"READY refused: {core.config.max_workers} workers are "
                                "registered already (max_workers)")
        worker = core.workers.add(identity, info, methods, credit, now)
        worker.key = peer
        core.outbox.control(identity, core.run.heartbeat(now))   # acknowledges READY
        core.figures.counters["workers_joined"] += 1
        log.info(
            "worker %s joined: host=%s pid=%s contexts=%s credit=%d methods=%d",
            identity.hex(), info.get("host"), info.get("pid"), info.get("contexts"),
            credit, len(methods),
        )
        core.scripts.on_registered(identity, info)
        core.dispatcher.serve(worker, now)
        for request, refusal in core.dispatcher.unservable():
            core.refuse(request, refusal, now)

    def _on_reply(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        core = self.core
        worker.add_credit(message.credit())
        requests = core.requests
        for key, fragment in message.pairs(1):
            request = requests.get(key)
            if request is None or request.worker != worker.identity:
                core.figures.counters["late_replies"] += 1   # late, or never sent to it
                continue
            worker.in_flight.discard(key)
            checked = checked_fragment(fragment)
            code: int | None
            if checked is None:
                core.figures.counters["malformed_replies"] += 1
                code, fragment = ErrorCode.INTERNAL_ERROR, MALFORMED_REPLY
            else:
                code = checked[0]
            if code == ErrorCode.WORKER_LOST:
                worker.breaker.on_failure(now)  # the worker lost an engine under it
            else:
                worker.breaker.on_success(now)
            if core.config.collect_metrics:
                worker.served.record(now - request.dispatched_at, code)
            core.finish(request, fragment, code, now)
        core.dispatcher.serve(worker, now)

    def _on_partials(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        """Items of streams this worker runs: checked, counted against the window, passed on."""
        core = self.core
        for key, items in message.pairs():
            request = core.requests.get(key)
            if request is None or request.worker != worker.identity or request.window is None:
                core.figures.counters["late_replies"] += 1   # late, or never sent to it
                continue
            count = checked_items(items)
            if count is None:
                core.figures.counters["malformed_replies"] += 1
                core.stop(request, ErrorCode.INTERNAL_ERROR,
                          "Internal error: the worker sent malformed stream items", now)
            elif request.items + count > request.granted:
                core.stop(request, ErrorCode.INTERNAL_ERROR, "Internal error: the worker sent "
                          "more stream items than its consumer allowed", now)
            else:
                request.items += count
                core.figures.counters["stream_items"] += count
                core.delivery.deliver_items(request, items)

    def _call_made_by(self, worker: WorkerRecord, call_key: bytes) -> Request | None:
        """The live nested call ``worker`` made with its key ``call_key``."""
        for key in worker.calls:
            call = self.core.requests.get(key)
            if call is not None and call.call_key == call_key:
                return call
        return None

    def _on_calls(self, worker: WorkerRecord, message: p.Message, now: float) -> None:
        core = self.core
        max_depth = core.config.max_call_depth
        for meta, body in message.pairs():
            call_key, parent_key = p.decode_call_meta(meta)
            parsed = parse_large_frame(body)
            if not isinstance(parsed, Call):
                detail = parsed.message if isinstance(parsed, Invalid) else "batch not allowed"
                self._refuse_call(worker, call_key, ErrorCode.INVALID_REQUEST, detail)
                continue
            parent = None
            if parent_key != p.NO_PARENT:
                parent = core.requests.get(parent_key)
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
            core.admit(parsed, now, caller=worker, call_key=call_key, parent=parent,
                       admin=self.keys is None)

    def _refuse_call(self, worker: WorkerRecord, call_key: bytes, code: int, message: str) -> None:
        self.core.figures.error(code)
        self.core.outbox.result(worker.identity, call_key, error_fragment(code, message))

    def remove_worker(self, worker: WorkerRecord, reason: str, now: float) -> None:
        """Forget a worker; re-dispatch what it held, cancel the calls it made."""
        core = self.core
        if core.workers.remove(worker.identity) is None:
            return
        core.figures.counters["workers_left"] += 1
        log.info("worker %s left (%s): %d requests to re-dispatch",
                 worker.identity.hex(), reason, len(worker.in_flight))
        for key in list(worker.calls):
            orphan = core.requests.get(key)
            if orphan is not None:
                core.drop(orphan, now)
        requests = core.requests
        oldest_first = sorted(worker.in_flight, key=lambda key: _received_at(core, key))
        worker.in_flight.clear()
        for key in oldest_first:
            request = requests.get(key)
            if request is None:
                continue
            refusal = core.dispatcher.redispatch(request, now)
            if refusal is not None:
                core.refuse(request, refusal, now)
            else:
                core.figures.counters["requeued"] += 1

    def on_unreachable(self, identity: bytes, now: float) -> None:
        """A send to this worker failed (ROUTER_MANDATORY): it is gone."""
        worker = self.core.workers.get(identity)
        if worker is not None:
            worker.breaker.on_failure(now)
            self.remove_worker(worker, "unreachable", now)

    def on_tick(self, now: float) -> None:
        """Workers silent for the liveness window leave; the others get heartbeats."""
        core = self.core
        for worker in core.workers.silent(now):
            worker.breaker.on_failure(now)
            self.remove_worker(worker, "heartbeat lost", now)
        for worker in core.workers.heartbeat_due(now):
            core.outbox.control(worker.identity, core.run.heartbeat(now))

    def on_keys_reloaded(self, now: float) -> None:
        """Workers whose key is no longer allowed leave the rotation and are told so."""
        if self.keys is None:
            return
        for worker in list(self.core.workers.values()):
            if not self.keys.allows(WORKER, worker.key):
                self.remove_worker(worker, "key revoked", now)
                self.core.outbox.control(worker.identity,
                                         self.core.run.disconnect("key revoked"))


def _received_at(core: BrokerCore, key: bytes) -> float:
    request = core.requests.get(key)
    return request.received_at if request is not None else 0.0
