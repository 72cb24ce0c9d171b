"""A worker's tables and what it sends: the part of its state every transition works on.

:class:`~madrpc.worker_state.WorkerState` adds the transitions; this class holds its
engine slots, requests, credit, nested calls and figures, the few steps that touch one
request's place in them (dropping it, releasing its credit), and the messages to send.
Pure: no sockets, no clocks.
"""

from __future__ import annotations

from typing import Any

from . import engine_protocol as ep
from . import protocol as p
from .config import WorkerConfig
from .worker_calls import NestedCalls
from .worker_credit import CreditLedger, RunTimes
from .worker_figures import WorkerFigures
from .worker_handover import HandOver
from .worker_requests import RequestBook
from .worker_tables import EngineSlot, LocalRequest

__all__ = ["ENVELOPE_BYTES", "WorkerTables"]

ENVELOPE_BYTES = 1024
"""Room for what the broker wraps around a frame (id, jsonrpc) within the size limit."""


class WorkerTables:
    """Everything a worker knows about its requests and engines, and what it will send."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.engines: dict[int, EngineSlot] = {}
        self._next_slot = 0
        self.requests = RequestBook()
        self.fresh = config.fresh_context
        self.run_times = RunTimes()
        self.credit = CreditLedger(config.initial_credit, config.prefetch)
        self.handover = HandOver()
        self.calls = NestedCalls(self.handover)
        self.figures = WorkerFigures(config.collect_metrics)
        self._replies: list[bytes] = []
        self._partials: list[bytes] = []
        self._engine_out: list[tuple[int, list[bytes]]] = []
        self.logs: list[tuple[str, str, Any, str]] = []
        """(level, method, request id, text) of console lines, for the worker's log."""
        self.draining = False
        self._frame_limit = config.max_message_bytes - ENVELOPE_BYTES
        """Largest result or call body the broker will take, with room for its envelope."""

    # ================================================================ engine slots

    def add_engine(self) -> int:
        """A new engine slot (its process reports READY later)."""
        index = self._next_slot
        self._next_slot += 1
        self.engines[index] = EngineSlot(index)
        return index

    def retire_engine(self, index: int) -> None:
        self.engines[index].retiring = True

    def idle_retired(self) -> list[int]:
        """Retiring engines that hold nothing any more: safe to stop."""
        return [e.index for e in self.engines.values() if e.drained]

    def on_engine_ready(self, index: int, identity: bytes) -> None:
        engine = self.engines[index]
        engine.identity = identity
        engine.ready = True
        engine.forget_steps()

    # ================================================================ one request

    def slot_of(self, request: LocalRequest) -> bytes:
        """The context a request runs in: its own in fresh-context mode, else the shared one."""
        return b"%d" % request.local if self.fresh else ep.POOLED

    def _cancel_in_engine(self, request: LocalRequest) -> None:
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is None:
            return
        slot = self.slot_of(request)
        if self.fresh:
            engine.forget_input(slot)
            self._engine_out.append((engine.index, ep.drop_message(slot)))
        else:
            engine.cancel(slot, request.local)

    def _forget(self, request: LocalRequest) -> None:
        self.requests.pop(request.local)
        engine = self.engines.get(request.engine) if request.engine is not None else None
        if engine is not None:
            engine.held.discard(request.local)
        self._release_credit(request)

    def _release_credit(self, request: LocalRequest) -> None:
        if request.holds_credit:
            request.holds_credit = False
            self.credit.release(self.target_credit, self.draining)

    @property
    def free_credit(self) -> int:
        """Credit not taken by a request we hold (what READY announces)."""
        return self.credit.issued - self.requests.holding_credit()

    @property
    def target_credit(self) -> int:
        """How much credit the broker should hold for this worker, given recent run times."""
        contexts = sum(1 for e in self.engines.values() if not e.retiring)
        return self.credit.target(contexts, self.run_times.quick(self.config.batch_threshold_ms))

    # ================================================================ output

    def take_broker_messages(self) -> list[list[bytes]]:
        self.credit.top_up(self.target_credit, self.draining)
        messages: list[list[bytes]] = []
        if self._partials:   # a stream's items go before its reply
            messages.append([p.TAG, p.PARTIAL, *self._partials])
            self._partials = []
        if self._replies or self.credit.to_return:
            credit = p.encode_credit(self.credit.take_return())
            messages.append([p.TAG, p.REPLY, credit, *self._replies])
            self._replies = []
        return messages + self.calls.take_messages()

    def take_engine_messages(self) -> list[tuple[int, list[bytes]]]:
        out = self._engine_out
        self._engine_out = []
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        """Figures for the broker (sent with heartbeats)."""
        return self.figures.snapshot(now, self.engines.values(), self.requests)
