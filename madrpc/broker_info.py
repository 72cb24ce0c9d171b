"""The broker's built-in methods ``_ping``, ``_metrics``, ``_info`` and the management
method ``_drain``. Pure: ``now`` in.

All are answered by the broker itself (no worker is involved) from its parts; a worker's
figures come from the snapshot it sent with its last heartbeat. ``_metrics`` stays small
whatever clients send: it lists the busiest ``max_methods_reported`` methods besides the
totals. Response shapes are documented in docs/protocol.md.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

import zmq

from .__about__ import __version__
from .broker_clients import ClientTable, ReplyBacklog
from .broker_figures import RATE_HISTORY_S, BrokerFigures
from .broker_requests import RequestTable
from .broker_scripts import ScriptStore
from .broker_tables import BrokerRun, WorkerRecord
from .broker_workers import WorkerTable
from .config import BrokerConfig
from .errors import ErrorCode
from .jsonrpc import Call, error_fragment, json_dumps
from .metrics import CallStats
from .policy import IdempotencyTable
from .prometheus import exposition

__all__ = ["ADMIN_METHODS", "BUILTIN_METHODS", "GridReport"]

ADMIN_METHODS = frozenset({"_drain"})
"""Built-in methods only admins may call (with CURVE: a key in the admin directory)."""
BUILTIN_METHODS = frozenset({"_metrics", "_info", "_ping"}) | ADMIN_METHODS


class GridReport:
    """What the broker tells about itself and its grid, and the management it allows."""

    def __init__(
        self, config: BrokerConfig, run: BrokerRun, figures: BrokerFigures,
        workers: WorkerTable, requests: RequestTable, idempotency: IdempotencyTable,
        clients: ClientTable, backlog: ReplyBacklog, scripts: ScriptStore | None = None,
    ) -> None:
        self.config = config
        self.run = run
        self.figures = figures
        self.workers = workers
        self.requests = requests
        self.idempotency = idempotency
        self.clients = clients
        self.backlog = backlog
        self.scripts = scripts if scripts is not None else ScriptStore(None)
        """The deployed script versions (``madrpc deploy``)."""
        self.curve = False
        """Whether the broker has CURVE (set by the broker that owns this report)."""
        self.shortcuts: dict[str, str] = {}
        """The local shortcut each socket offers ("frontend", "backend"; set by the broker
        that owns this report; see :mod:`madrpc.shortcut`)."""

    def answer(self, call: Call, now: float, admin: bool = False) -> tuple[int | None, bytes]:
        """(error code or None, fragment) for a call to a built-in method; ``admin`` may
        call the management ones."""
        if call.method in ADMIN_METHODS and not admin:
            return ErrorCode.FORBIDDEN, error_fragment(
                ErrorCode.FORBIDDEN, f"Forbidden: {call.method} needs an admin key")
        params = call.params
        worker_id = None
        if isinstance(params, dict):
            worker_id = params.get("worker")
        elif isinstance(params, list) and params:
            worker_id = params[0]
        if worker_id is not None and not isinstance(worker_id, str):
            return _invalid_params("worker must be a worker id string")
        if call.method == "_ping":
            return None, _result(
                {"broker": self.run.instance, "time": now, "grace_s": self.run.grace_s(now)}
            )
        worker = None
        if worker_id is not None:
            worker = self.workers.find(worker_id)
            if worker is None:
                return _invalid_params(f"no worker {worker_id!r}")
        if call.method == "_metrics":
            if isinstance(params, dict) and "format" in params:
                return self._formatted_metrics(params["format"], now)
            if worker is not None:
                return None, _result(self.worker_detail(worker, now))
            return None, _result(self.metrics(now))
        if call.method == "_drain":
            if worker is None:
                return _invalid_params("name the worker to drain: {\"worker\": id}")
            return self._drain(worker, params)
        return None, _result(worker.info if worker is not None else self.info())

    def _formatted_metrics(self, format_name: Any, now: float) -> tuple[int | None, bytes]:
        """``_metrics {"format": "prometheus"}``: the Prometheus page, as one string."""
        if format_name != "prometheus":
            return _invalid_params('format must be "prometheus" (or absent for JSON)')
        return None, _result(exposition(self.metrics(now), self.figures.methods))

    def _drain(self, worker: WorkerRecord, params: Any) -> tuple[int | None, bytes]:
        """Take a worker out of rotation (it finishes what it holds), or put it back."""
        resume = params.get("resume", False) if isinstance(params, dict) else False
        if not isinstance(resume, bool):
            return _invalid_params("resume must be true or false")
        self.workers.set_paused(worker, not resume)
        return None, _result({"worker": worker.id, "paused": worker.paused,
                              "in_flight": len(worker.in_flight)})

    def _script_version(self) -> str | None:
        """The grid's current deployed version, if any."""
        current = self.scripts.current
        return current.version if current is not None else None

    def metrics(self, now: float) -> dict[str, Any]:
        """The whole grid in one object: broker, workers, methods (``_metrics``)."""
        return {
            "broker": self.broker_summary(now),
            "workers": [self.worker_summary(w, now) for w in self.workers.values()],
            "methods": self.method_summaries(),
            "rate_history": self.figures.rate.history(now, RATE_HISTORY_S),
            "script_version": self._script_version(),
            "time": now,
        }

    def broker_summary(self, now: float) -> dict[str, Any]:
        figures, counters, requests = self.figures, self.figures.counters, self.requests
        workers = self.workers.values()
        return {
            "uptime_s": round(now - self.run.started_at, 3),
            "requests": counters["requests"],
            "req_per_s": figures.rate.rate(now),
            "in_flight": requests.in_flight,
            "queue_depth": requests.queued,
            "clients_seen": len(self.clients),
            "workers": len(self.workers),
            "contexts": sum(_int(w.info.get("contexts")) for w in workers),
            "dropped_frames": sum(figures.dropped.values()),
            "dropped_by_reason": dict(figures.dropped),
            "late_replies": counters["late_replies"],
            "requeued": counters["requeued"],
            "idempotent_hits": counters["idempotent_hits"],
            "stream_items": counters["stream_items"],
            "idempotency_entries": len(self.idempotency),
            "bounds": self.bounds(),
            "workers_joined": counters["workers_joined"],
            "workers_left": counters["workers_left"],
            "errors": sum(figures.errors.values()),
            "errors_by_code": {str(code): n for code, n in sorted(figures.errors.items())},
            "latency": figures.latency().summary_ms(),
            "draining": self.run.draining,
            "instance": self.run.instance,
            "adopted": counters["adopted"],
            "adopted_results": counters["adopted_results"],
            **figures.process_stats,
        }

    def bounds(self) -> dict[str, int]:
        """How close the broker's bounded tables are to their limits, and what overflowed."""
        idempotency, figures = self.idempotency, self.figures
        return {
            "idempotency_bytes": idempotency.bytes,
            "idempotency_evicted": idempotency.evicted,
            "idempotency_too_large": idempotency.too_large,
            "client_refusals": self.clients.refused,
            "backlog_bytes": self.backlog.total_bytes(),
            "backlog_refusals": self.backlog.refused,
            "backlog_dropped": self.backlog.dropped,
            "methods_known": len(set(figures.methods) | set(self.workers.served_methods())),
            "deadline_entries": self.requests.deadline_entries(),
            "malformed_replies": figures.counters["malformed_replies"],
        }

    @staticmethod
    def worker_summary(worker: WorkerRecord, now: float) -> dict[str, Any]:
        stats = worker.stats
        info = worker.info
        served = worker.served
        heard = worker.heartbeat.last_heard
        return {
            "id": worker.id,
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
            "paused": worker.paused,
            "draining": worker.draining,
            "heartbeat_age_s": round(now - heard, 3),
            "missed_heartbeats": max(0, int((now - heard) / worker.heartbeat.interval_s)),
            "circuit": worker.breaker.to_dict(now),
            "uptime_s": round(now - worker.joined_at, 3),
            "script_version": info.get("script_version"),
            "deployed": bool(info.get("deployed")),
            "script_error": stats.get("script_error"),
        }

    def worker_detail(self, worker: WorkerRecord, now: float) -> dict[str, Any]:
        """One worker: its summary, its registration and its own latest metrics."""
        return {**self.worker_summary(worker, now), "info": worker.info, "stats": worker.stats}

    def method_summaries(self) -> dict[str, Any]:
        """The busiest ``max_methods_reported`` methods (those served and those called)."""
        methods: dict[str, Any] = {}
        known = self.figures.methods
        names = set(known) | set(self.workers.served_methods())
        if len(names) > self.config.max_methods_reported:
            busiest = sorted(names, key=lambda n: -(known[n].requests if n in known else 0))
            names = set(busiest[:self.config.max_methods_reported])
        for name in sorted(names):
            stats = known.get(name) or CallStats()
            methods[name] = {
                **stats.to_dict(),
                "workers": self.workers.serving(name),
                "queued": self.requests.queued_for(name),
            }
        return methods

    def info(self) -> dict[str, Any]:
        """Versions, endpoints, settings and which workers serve which method (``_info``)."""
        config = self.config
        workers = self.workers.values()
        served: dict[str, list[str]] = {}
        for worker in workers:
            for method in sorted(worker.methods):
                served.setdefault(method, []).append(worker.id)
        v8 = sorted({str(w.info.get("v8")) for w in workers if w.info.get("v8")})
        return {
            "versions": {
                "madrpc": __version__,
                "python": sys.version.split()[0],
                "pyzmq": zmq.pyzmq_version(),
                "libzmq": zmq.zmq_version(),
                "v8": v8,
            },
            "host": platform.node(),
            "endpoints": {"frontend": config.frontend, "backend": config.backend,
                          **({"shortcuts": dict(self.shortcuts)} if self.shortcuts else {})},
            "cpu": config.cpu,
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
                "max_idempotency_bytes": config.max_idempotency_bytes,
                "max_idempotent_result_bytes": config.max_idempotent_result_bytes,
                "max_client_requests": config.max_client_requests,
                "client_rate": config.client_rate,
                "client_hwm": config.client_hwm,
                "max_client_backlog_bytes": config.max_client_backlog_bytes,
                "max_workers": config.max_workers,
                "max_methods_reported": config.max_methods_reported,
            },
            "curve": self.curve,
            "script": {"version": self._script_version(), **self.scripts.describe()},
            "methods": served,
            "workers": [
                {"id": w.id, **{k: w.info.get(k) for k in ("host", "pid", "contexts",
                                                            "version", "script",
                                                            "script_version")}}
                for w in workers
            ],
        }


def _result(value: Any) -> bytes:
    return b'"result":' + json_dumps(value)


def _invalid_params(message: str) -> tuple[int, bytes]:
    return ErrorCode.INVALID_PARAMS, error_fragment(
        ErrorCode.INVALID_PARAMS, f"Invalid params: {message}"
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0
