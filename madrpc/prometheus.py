"""The grid's figures in the Prometheus text exposition format (``--metrics-http``).

:func:`exposition` is pure (state and ``now`` in, text out); the broker loop renders it
about once a second and :class:`MetricsServer` (a small HTTP thread) serves the latest
text, so scraping never touches the broker's tables from another thread.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .metrics import Histogram, bucket_upper

if TYPE_CHECKING:
    from .broker_state import BrokerState

__all__ = ["MetricsServer", "exposition"]

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram bounds exposed to Prometheus (the internal log buckets are summed into them)."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition(state: BrokerState, now: float) -> str:
    """Everything ``_metrics`` knows, as Prometheus metrics."""
    from .broker_info import worker_id

    out: list[str] = []

    def metric(name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{_labels(labels)} {_number(value)}")

    counters = state.counters
    metric("madrpc_requests_total", "counter", "Requests the broker received.",
           [({}, counters["requests"])])
    metric("madrpc_errors_total", "counter", "Error replies by JSON-RPC code.",
           [({"code": str(code)}, n) for code, n in sorted(state.errors.items())])
    metric("madrpc_in_flight", "gauge", "Requests held by workers.",
           [({}, len(state.requests) - state.queued)])
    metric("madrpc_queue_depth", "gauge", "Requests waiting for a worker.", [({}, state.queued)])
    metric("madrpc_requeued_total", "counter", "Requests dispatched again after a worker died.",
           [({}, counters["requeued"])])
    metric("madrpc_dropped_frames_total", "counter", "Malformed or unroutable messages dropped.",
           [({"reason": reason}, n) for reason, n in sorted(state.dropped.items())])
    metric("madrpc_late_replies_total", "counter", "Replies from workers that no longer held "
           "the request.", [({}, counters["late_replies"])])
    metric("madrpc_workers", "gauge", "Registered workers.", [({}, len(state.workers))])
    metric("madrpc_uptime_seconds", "gauge", "Seconds since the broker started.",
           [({}, now - state.started_at)])
    for key in ("cpu_percent", "rss_bytes"):
        if key in state.process_stats:
            metric(f"madrpc_broker_{key}", "gauge", f"Broker process {key.replace('_', ' ')}.",
                   [({}, state.process_stats[key])])

    workers = list(state.workers.values())
    labels = [{"worker": worker_id(w), "host": str(w.info.get("host"))} for w in workers]
    for name, help_text, value in (
        ("contexts", "V8 contexts.", lambda w: w.info.get("contexts", 0)),
        ("busy_contexts", "Contexts running a step.", lambda w: w.stats.get("busy", 0)),
        ("credit", "Requests the broker may still send.", lambda w: w.credit),
        ("in_flight", "Requests the worker holds.", lambda w: len(w.in_flight)),
        ("requests_total", "Requests the worker answered.", lambda w: w.served.requests),
        ("cpu_percent", "CPU of the worker and its engines.", lambda w: w.stats.get("cpu_percent")),
        ("rss_bytes", "Memory of the worker and its engines.", lambda w: w.stats.get("rss_bytes")),
        ("heartbeat_age_seconds", "Seconds since the worker was last heard.",
         lambda w: now - w.heartbeat.last_heard),
        ("circuit_open", "1 while the worker's circuit breaker is not closed.",
         lambda w: 0 if w.breaker.to_dict(now)["state"] == "closed" else 1),
    ):
        kind = "counter" if name.endswith("_total") else "gauge"
        samples = [(lab, value(w)) for lab, w in zip(labels, workers, strict=True)]
        metric(f"madrpc_worker_{name}", kind, help_text,
               [(lab, v) for lab, v in samples if isinstance(v, (int, float))])

    out.append("# HELP madrpc_request_duration_seconds Request latency seen by the broker.")
    out.append("# TYPE madrpc_request_duration_seconds histogram")
    for method, stats in sorted(state.methods.items()):
        out.extend(_histogram("madrpc_request_duration_seconds", {"method": method},
                              stats.latency))
    return "\n".join(out) + "\n"


def _histogram(name: str, labels: dict[str, str], histogram: Histogram) -> list[str]:
    lines = []
    index = 0
    cumulative = 0
    counts = histogram.counts
    for bound in LATENCY_BUCKETS_S:
        while index < len(counts) and bucket_upper(index) <= bound * (1 + 1e-9):
            cumulative += counts[index]
            index += 1
        lines.append(f"{name}_bucket{_labels({**labels, 'le': repr(bound)})} {cumulative}")
    lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {histogram.total}")
    lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.sum_s)}")
    lines.append(f"{name}_count{_labels(labels)} {histogram.total}")
    return lines


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels.items())
    return "{" + ",".join(escaped) + "}"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class MetricsServer:
    """Serves the latest exposition text on ``http://host:port/metrics``."""

    def __init__(self, host: str, port: int) -> None:
        self.text = "# no data yet\n"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = server.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("metrics http: " + format, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="madrpc-metrics-http")

    def start(self) -> None:
        self._thread.start()
        log.info("Prometheus metrics on http://%s:%s/metrics", *self.address[:2])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
