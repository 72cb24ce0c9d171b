"""The grid's figures in the Prometheus text exposition format (``--metrics-http``).

:func:`exposition` is pure: a ``_metrics`` snapshot (and the per-method latency
histograms) in, text out. The broker loop renders it about once a second and
:class:`MetricsServer` (a small HTTP thread) serves the latest text, so scraping never
touches the broker's tables from another thread.

Written by hand rather than with ``prometheus_client``: the format is a few lines of
text, and the only subtle part, escaping label values that come from user scripts
(method names) and workers (ids, hosts), is :func:`escape_label_value`, pinned by unit
tests that read the output back with ``prometheus_client``'s own parser.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .metrics import CallStats, Histogram, bucket_upper

__all__ = ["MetricsServer", "escape_help", "escape_label_value", "exposition"]

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram bounds exposed to Prometheus (the internal log buckets are summed into them)."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Samples = list[tuple[dict[str, str], Any]]

_BROKER_METRICS: tuple[tuple[str, str, str, str], ...] = (
    # (name, type, help, key in _metrics["broker"])
    ("madrpc_requests_total", "counter", "Requests the broker received.", "requests"),
    ("madrpc_in_flight", "gauge", "Requests held by workers.", "in_flight"),
    ("madrpc_queue_depth", "gauge", "Requests waiting for a worker.", "queue_depth"),
    ("madrpc_requeued_total", "counter", "Requests dispatched again after a worker died.",
     "requeued"),
    ("madrpc_late_replies_total", "counter",
     "Replies from workers that no longer held the request.", "late_replies"),
    ("madrpc_stream_items_total", "counter", "Items streams delivered.", "stream_items"),
    ("madrpc_workers", "gauge", "Registered workers.", "workers"),
    ("madrpc_uptime_seconds", "gauge", "Seconds since the broker started.", "uptime_s"),
    ("madrpc_broker_cpu_percent", "gauge", "Broker process cpu percent.", "cpu_percent"),
    ("madrpc_broker_rss_bytes", "gauge", "Broker process rss bytes.", "rss_bytes"),
)

_WORKER_METRICS: tuple[tuple[str, str, Any], ...] = (
    # (name after madrpc_worker_, help, value from a _metrics["workers"] entry)
    ("contexts", "V8 contexts.", lambda w: w.get("contexts")),
    ("busy_contexts", "Contexts running a step.", lambda w: w.get("busy")),
    ("credit", "Requests the broker may still send.", lambda w: w.get("credit")),
    ("in_flight", "Requests the worker holds.", lambda w: w.get("in_flight")),
    ("requests_total", "Requests the worker answered.", lambda w: w.get("requests")),
    ("cpu_percent", "CPU of the worker and its engines.", lambda w: w.get("cpu_percent")),
    ("rss_bytes", "Memory of the worker and its engines.", lambda w: w.get("rss_bytes")),
    ("heartbeat_age_seconds", "Seconds since the worker was last heard.",
     lambda w: w.get("heartbeat_age_s")),
    ("circuit_open", "1 while the worker's circuit breaker is not closed.",
     lambda w: int((w.get("circuit") or {}).get("state", "closed") != "closed")),
    ("paused", "1 while an admin has drained the worker (_drain).",
     lambda w: int(bool(w.get("paused")))),
)


def exposition(snapshot: Mapping[str, Any], latency: Mapping[str, CallStats]) -> str:
    """Everything a ``_metrics`` ``snapshot`` holds, as Prometheus metrics, plus a latency
    histogram per method from ``latency`` (method -> its figures) for each method the
    snapshot lists (it lists the busiest ones only, so the page stays small)."""
    out: list[str] = []
    broker = snapshot.get("broker", {})
    for name, kind, help_text, key in _BROKER_METRICS:
        if key in broker:
            _metric(out, name, kind, help_text, [({}, broker[key])])
    _metric(out, "madrpc_errors_total", "counter", "Error replies by JSON-RPC code.",
            [({"code": code}, n) for code, n in broker.get("errors_by_code", {}).items()])
    _metric(out, "madrpc_bound", "gauge",
            "How close a bounded table is to its limit, or what overflowed (see _metrics).",
            [({"name": name}, value) for name, value in sorted(broker.get("bounds", {}).items())])
    _metric(out, "madrpc_dropped_frames_total", "counter",
            "Malformed or unroutable messages dropped.",
            [({"reason": reason}, n)
             for reason, n in sorted(broker.get("dropped_by_reason", {}).items())])
    workers = snapshot.get("workers", [])
    labels = [_labels({"worker": str(w.get("id")), "host": str(w.get("host"))})
              for w in workers]   # once per worker, not once per sample
    for name, help_text, value in _WORKER_METRICS:
        kind = "counter" if name.endswith("_total") else "gauge"
        name = f"madrpc_worker_{name}"
        out.append(f"# HELP {name} {escape_help(help_text)}")
        out.append(f"# TYPE {name} {kind}")
        for label, worker in zip(labels, workers, strict=True):
            sample = value(worker)
            if isinstance(sample, (int, float)):
                out.append(f"{name}{label} {_number(sample)}")
    name = "madrpc_request_duration_seconds"
    out.append(f"# HELP {name} Request latency seen by the broker.")
    out.append(f"# TYPE {name} histogram")
    listed = snapshot.get("methods")
    for method, stats in sorted(latency.items()):
        if listed is None or method in listed:   # the snapshot's busiest methods only
            out.extend(_histogram(name, {"method": method}, stats.latency))
    return "\n".join(out) + "\n"


def _metric(out: list[str], name: str, kind: str, help_text: str, samples: Samples) -> None:
    out.append(f"# HELP {name} {escape_help(help_text)}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        if isinstance(value, (int, float)):
            out.append(f"{name}{_labels(labels)} {_number(value)}")


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


def escape_label_value(value: str) -> str:
    """A label value as the exposition format writes it: backslash, double quote and
    line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text as the exposition format writes it: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


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
