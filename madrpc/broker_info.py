"""The broker's built-in methods ``_metrics`` and ``_info``. Pure: state and ``now`` in.

Both are answered by the broker itself (no worker is involved); a worker's figures come
from the snapshot it sent with its last heartbeat. Response shapes are documented in
docs/protocol.md.
"""

from __future__ import annotations

import platform
import sys
from typing import TYPE_CHECKING, Any

import zmq

from .__about__ import __version__
from .errors import ErrorCode
from .jsonrpc import Call, error_fragment, json_dumps
from .metrics import CallStats, Histogram

if TYPE_CHECKING:
    from .broker_state import BrokerState
    from .broker_tables import WorkerRecord

__all__ = ["answer_builtin", "grid_info", "grid_metrics"]

RATE_HISTORY_S = 60
"""Seconds of req/s history in ``_metrics`` (for sparklines)."""


def answer_builtin(state: BrokerState, call: Call, now: float) -> tuple[int | None, bytes]:
    """(error code or None, fragment) for a call to a built-in method."""
    params = call.params
    worker_id = None
    if isinstance(params, dict):
        worker_id = params.get("worker")
    elif isinstance(params, list) and params:
        worker_id = params[0]
    if worker_id is not None and not isinstance(worker_id, str):
        return _invalid_params("worker must be a worker id string")
    if call.method == "_ping":
        return None, b'"result":' + json_dumps(
            {"broker": state.instance, "time": now, "grace_s": state.grace_s(now)}
        )
    if call.method == "_metrics":
        if worker_id is not None:
            worker = find_worker(state, worker_id)
            if worker is None:
                return _invalid_params(f"no worker {worker_id!r}")
            return None, b'"result":' + json_dumps(worker_detail(state, worker, now))
        return None, b'"result":' + json_dumps(grid_metrics(state, now))
    if worker_id is not None:
        worker = find_worker(state, worker_id)
        if worker is None:
            return _invalid_params(f"no worker {worker_id!r}")
        return None, b'"result":' + json_dumps(worker.info)
    return None, b'"result":' + json_dumps(grid_info(state))


def _invalid_params(message: str) -> tuple[int, bytes]:
    return ErrorCode.INVALID_PARAMS, error_fragment(
        ErrorCode.INVALID_PARAMS, f"Invalid params: {message}"
    )


def worker_id(worker: WorkerRecord) -> str:
    return str(worker.info.get("id") or worker.identity.hex())


def find_worker(state: BrokerState, wanted: str) -> WorkerRecord | None:
    for worker in state.workers.values():
        if wanted in (worker_id(worker), worker.identity.hex()):
            return worker
    return None


def grid_metrics(state: BrokerState, now: float) -> dict[str, Any]:
    """The whole grid in one object: broker, workers, methods."""
    workers = [worker_summary(state, w, now) for w in state.workers.values()]
    return {
        "broker": broker_summary(state, now),
        "workers": workers,
        "methods": method_summaries(state),
        "rate_history": state.rate.history(now, RATE_HISTORY_S),
        "time": now,
    }


def broker_summary(state: BrokerState, now: float) -> dict[str, Any]:
    in_flight = len(state.requests) - state.queued
    return {
        "uptime_s": round(now - state.started_at, 3),
        "requests": state.counters["requests"],
        "req_per_s": state.rate.rate(now),
        "in_flight": in_flight,
        "queue_depth": state.queued,
        "clients_seen": len(state.clients),
        "workers": len(state.workers),
        "contexts": sum(_int(w.info.get("contexts")) for w in state.workers.values()),
        "dropped_frames": sum(state.dropped.values()),
        "dropped_by_reason": dict(state.dropped),
        "late_replies": state.counters["late_replies"],
        "requeued": state.counters["requeued"],
        "idempotent_hits": state.counters["idempotent_hits"],
        "idempotency_entries": len(state.idempotency),
        "workers_joined": state.counters["workers_joined"],
        "workers_left": state.counters["workers_left"],
        "errors": sum(state.errors.values()),
        "errors_by_code": {str(code): n for code, n in sorted(state.errors.items())},
        "latency": merged_latency(state).summary_ms(),
        "draining": state.draining,
        "instance": state.instance,
        "adopted": state.counters["adopted"],
        "adopted_results": state.counters["adopted_results"],
        **state.process_stats,
    }


def worker_summary(state: BrokerState, worker: WorkerRecord, now: float) -> dict[str, Any]:
    stats = worker.stats
    info = worker.info
    served = worker.served
    return {
        "id": worker_id(worker),
        "identity": worker.identity.hex(),
        "host": info.get("host"),
        "pid": info.get("pid"),
        "contexts": _int(info.get("contexts")),
        "busy": _int(stats.get("busy")),
        "credit": worker.credit,
        "in_flight": len(worker.in_flight),
        "requests": served.requests,
        "errors": sum(served.errors.values()),
        **served.latency.summary_ms(),
        "req_per_s": stats.get("req_per_s", 0.0),
        "cpu_percent": stats.get("cpu_percent"),
        "rss_bytes": stats.get("rss_bytes"),
        "engine_restarts": stats.get("engine_restarts", 0),
        "heartbeat_age_s": round(now - worker.heartbeat.last_heard, 3),
        "missed_heartbeats": max(
            0, int((now - worker.heartbeat.last_heard) / worker.heartbeat.interval_s)
        ),
        "circuit": worker.breaker.to_dict(now),
        "uptime_s": round(now - worker.joined_at, 3),
    }


def worker_detail(state: BrokerState, worker: WorkerRecord, now: float) -> dict[str, Any]:
    """One worker: its summary, its registration and its own latest metrics."""
    return {**worker_summary(state, worker, now), "info": worker.info, "stats": worker.stats}


def method_summaries(state: BrokerState) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    names = set(state.methods) | set(m for m, n in state.method_workers.items() if n > 0)
    for name in sorted(names):
        stats = state.methods.get(name) or CallStats()
        methods[name] = {
            **stats.to_dict(),
            "workers": state.method_workers.get(name, 0),
            "queued": sum(1 for r in state.queues.get(name, ()) if r.queued),
        }
    return methods


def merged_latency(state: BrokerState) -> Histogram:
    total = Histogram()
    for stats in state.methods.values():
        total.merge(stats.latency)
    return total


def grid_info(state: BrokerState) -> dict[str, Any]:
    """Versions, endpoints, settings and which workers serve which method."""
    config = state.config
    served: dict[str, list[str]] = {}
    for worker in state.workers.values():
        for method in sorted(worker.methods):
            served.setdefault(method, []).append(worker_id(worker))
    v8 = sorted({str(w.info.get("v8")) for w in state.workers.values() if w.info.get("v8")})
    return {
        "versions": {
            "madrpc": __version__,
            "python": sys.version.split()[0],
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
            "v8": v8,
        },
        "host": platform.node(),
        "endpoints": {"frontend": config.frontend, "backend": config.backend},
        "heartbeat": {
            "interval_s": config.heartbeat_interval_s,
            "liveness": config.heartbeat_liveness,
        },
        "limits": {
            "default_timeout_ms": config.default_timeout_ms,
            "max_queue": config.max_queue,
            "max_message_bytes": config.max_message_bytes,
            "max_batch": config.max_batch,
            "max_attempts": config.max_attempts,
            "max_call_depth": config.max_call_depth,
            "idempotency_window_s": config.idempotency_window_s,
        },
        "methods": served,
        "workers": [
            {"id": worker_id(w), **{k: w.info.get(k) for k in ("host", "pid", "contexts",
                                                                  "version", "script")}}
            for w in state.workers.values()
        ],
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
