"""GridReport on its own: the broker's ``_ping``, ``_metrics`` and ``_info`` answered from
parts the tests set up directly. No sockets, no clocks: ``now`` is a float."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from madrpc import protocol as p
from madrpc.__about__ import __version__
from madrpc.broker_clients import ClientTable, ReplyBacklog
from madrpc.broker_figures import RATE_HISTORY_S, BrokerFigures
from madrpc.broker_info import GridReport
from madrpc.broker_requests import RequestTable
from madrpc.broker_state import BrokerState
from madrpc.broker_tables import BrokerRun, Request, WorkerRecord
from madrpc.broker_workers import WorkerTable
from madrpc.config import BrokerConfig
from madrpc.errors import ErrorCode
from madrpc.jsonrpc import Call, CallOptions
from madrpc.policy import IdempotencyTable

STARTED = 100.0
INFO_A = {"id": "host-a:11", "host": "host-a", "pid": 11, "contexts": 4, "version": "1.0",
          "script": "a.js", "v8": "12.4", "methods": ["add", "mul"]}
INFO_B = {"id": "host-b:22", "host": "host-b", "pid": 22, "contexts": 2, "version": "1.0",
          "script": "b.js", "v8": "12.4", "methods": ["add"]}

# ---------------------------------------------------------------- helpers


def new_report(**overrides: Any) -> GridReport:
    """A report over empty parts of a broker that started at :data:`STARTED`."""
    config = BrokerConfig(**overrides)
    run = BrokerRun(started_at=STARTED, adoption_until=STARTED + 3.0, instance="cafe0001")
    return GridReport(config, run, BrokerFigures(), WorkerTable(config), RequestTable(),
                      IdempotencyTable(config.idempotency_window_s, 100),
                      ClientTable(config.max_client_requests), ReplyBacklog(1 << 20))


def register(
    report: GridReport, identity: bytes, info: dict[str, Any], credit: int = 8,
    now: float = STARTED,
) -> WorkerRecord:
    methods = frozenset(info.get("methods", ()))
    return report.workers.add(identity, dict(info), methods, credit, now)


def builtin(method: str, params: Any = None) -> Call:
    return Call(method, params, b"1", CallOptions())


def ask(report: GridReport, method: str, params: Any = None, now: float = STARTED) -> Any:
    """The decoded ``result`` of a built-in call (fails the test on an error)."""
    code, fragment = report.answer(builtin(method, params), now)
    assert code is None, fragment
    return orjson.loads(b"{" + fragment + b"}")["result"]


def refusal(report: GridReport, method: str, params: Any) -> tuple[int | None, Any]:
    code, fragment = report.answer(builtin(method, params), STARTED)
    return code, orjson.loads(b"{" + fragment + b"}")["error"]


def live_request(report: GridReport, method: str, queued: bool, key: int) -> Request:
    request = Request(p.encode_key(key), builtin(method), 1e9, 0, STARTED)
    report.requests.add(request)
    if queued:
        report.requests.enqueue(request)
    return request


# ---------------------------------------------------------------- _ping


def test_ping_answers_the_broker_instance_the_time_and_the_grace_left() -> None:
    report = new_report()

    assert ask(report, "_ping", now=STARTED + 1.0) == {
        "broker": "cafe0001", "time": STARTED + 1.0, "grace_s": 2.0,
    }


def test_ping_after_the_adoption_grace_reports_no_grace_left() -> None:
    assert ask(new_report(), "_ping", now=STARTED + 60.0)["grace_s"] == 0.0


# ---------------------------------------------------------------- _metrics: the grid


def test_metrics_holds_broker_workers_methods_rate_history_and_time() -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    result = ask(report, "_metrics", now=STARTED + 5.0)

    assert set(result) == {"broker", "workers", "methods", "rate_history", "script_version",
                           "time"}
    assert result["time"] == STARTED + 5.0
    assert [w["id"] for w in result["workers"]] == ["host-a:11"]


def test_metrics_in_prometheus_format_is_the_exposition_page_as_one_string() -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    page = ask(report, "_metrics", {"format": "prometheus"})

    assert isinstance(page, str) and page.endswith("\n")
    assert "# TYPE madrpc_requests_total counter" in page
    assert 'madrpc_worker_contexts{worker="host-a:11"' in page
    code, error = refusal(report, "_metrics", {"format": "xml"})
    assert code == ErrorCode.INVALID_PARAMS and "prometheus" in error["message"]


def test_metrics_without_params_and_with_empty_params_are_the_same_grid() -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    assert ask(report, "_metrics", None) == ask(report, "_metrics", []) == ask(
        report, "_metrics", {}
    )


def test_the_rate_history_is_a_minute_of_whole_seconds_ending_with_the_last_one() -> None:
    report = new_report()
    report.figures.counters["requests"] = 40
    report.figures.tick(STARTED + 10.2)

    history = ask(report, "_metrics", now=STARTED + 11.5)["rate_history"]

    assert (len(history), history[-1], sum(history)) == (RATE_HISTORY_S, 40, 40)


# ---------------------------------------------------------------- broker summary


def test_the_broker_summary_counts_uptime_and_requests() -> None:
    report = new_report()
    report.figures.counters.update(requests=40, late_replies=2, requeued=3, idempotent_hits=4,
                                   workers_joined=5, workers_left=1, adopted=6,
                                   adopted_results=7)
    report.figures.tick(STARTED + 10.2)

    summary = report.broker_summary(STARTED + 11.5)

    assert {key: summary[key] for key in (
        "uptime_s", "requests", "req_per_s", "late_replies", "requeued", "idempotent_hits",
        "workers_joined", "workers_left", "adopted", "adopted_results",
    )} == {
        "uptime_s": 11.5, "requests": 40, "req_per_s": 8.0, "late_replies": 2, "requeued": 3,
        "idempotent_hits": 4, "workers_joined": 5, "workers_left": 1, "adopted": 6,
        "adopted_results": 7,
    }


def test_the_broker_summary_splits_live_requests_into_in_flight_and_queued() -> None:
    report = new_report()
    live_request(report, "add", queued=True, key=1)
    live_request(report, "add", queued=True, key=2)
    live_request(report, "add", queued=False, key=3)

    summary = report.broker_summary(STARTED)

    assert (summary["in_flight"], summary["queue_depth"]) == (1, 2)


def test_the_broker_summary_counts_workers_and_their_contexts() -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    register(report, b"B", INFO_B)
    register(report, b"C", {"methods": ["add"], "contexts": "many"})

    summary = report.broker_summary(STARTED)

    assert (summary["workers"], summary["contexts"]) == (3, 6)


def test_the_broker_summary_counts_clients_seen_and_idempotency_entries() -> None:
    report = new_report()
    for client in (b"c1", b"c2", b"c1"):
        report.clients.seen(client, STARTED)
    report.idempotency.start("add\x00k1", p.encode_key(1))
    report.idempotency.start("add\x00k2", p.encode_key(2))

    summary = report.broker_summary(STARTED)

    assert (summary["clients_seen"], summary["idempotency_entries"]) == (2, 2)


def test_the_broker_summary_totals_drops_and_errors_and_keeps_their_breakdown() -> None:
    report = new_report()
    report.figures.dropped.update({"bad worker frames": 3, "client message without body": 1})
    report.figures.errors.update({ErrorCode.TIMEOUT: 2, ErrorCode.METHOD_NOT_FOUND: 5})

    summary = report.broker_summary(STARTED)

    assert (summary["dropped_frames"], summary["errors"]) == (4, 7)
    assert summary["dropped_by_reason"] == {"bad worker frames": 3,
                                            "client message without body": 1}
    assert list(summary["errors_by_code"].items()) == [("-32601", 5), ("-32003", 2)]


def test_the_broker_latency_merges_every_method() -> None:
    report = new_report()
    for _ in range(99):
        report.figures.record("fast", 0.001, None)
    report.figures.record("slow", 2.0, None)

    latency = report.broker_summary(STARTED)["latency"]

    assert latency["p50_ms"] == pytest.approx(1.0, rel=0.1)
    assert latency["mean_ms"] == pytest.approx((99 * 1.0 + 2000.0) / 100, rel=0.001)


def test_the_broker_summary_tells_draining_instance_and_process_figures() -> None:
    report = new_report()
    report.run.draining = True
    report.figures.process_stats = {"cpu_percent": 12.5, "rss_bytes": 4096}

    summary = report.broker_summary(STARTED)

    assert (summary["draining"], summary["instance"], summary["cpu_percent"],
            summary["rss_bytes"]) == (True, "cafe0001", 12.5, 4096)


# ---------------------------------------------------------------- worker summary


def test_a_worker_summary_names_the_worker_by_its_registration() -> None:
    report = new_report()
    register(report, b"A", INFO_A, credit=8)

    [summary] = ask(report, "_metrics", now=STARTED + 30.0)["workers"]

    assert {key: summary[key] for key in (
        "id", "identity", "host", "pid", "contexts", "credit", "uptime_s",
    )} == {
        "id": "host-a:11", "identity": b"A".hex(), "host": "host-a", "pid": 11,
        "contexts": 4, "credit": 8, "uptime_s": 30.0,
    }


def test_a_worker_without_an_id_is_named_by_its_socket_identity() -> None:
    report = new_report()
    register(report, b"\x00\x01anon", {"methods": ["add"]})

    [summary] = ask(report, "_metrics")["workers"]

    assert (summary["id"], summary["host"], summary["pid"]) == ("0001616e6f6e", None, None)


def test_a_worker_summary_shows_the_figures_of_its_last_heartbeat() -> None:
    report = new_report()
    worker = register(report, b"A", INFO_A)
    worker.stats = {"busy": 3, "req_per_s": 55.5, "cpu_percent": 80.0, "rss_bytes": 1 << 20,
                    "engine_restarts": 2}

    [summary] = ask(report, "_metrics")["workers"]

    assert {key: summary[key] for key in worker.stats} == worker.stats


def test_a_worker_that_sent_no_figures_yet_shows_defaults() -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    [summary] = ask(report, "_metrics")["workers"]

    assert {key: summary[key] for key in (
        "busy", "req_per_s", "cpu_percent", "rss_bytes", "engine_restarts",
    )} == {"busy": 0, "req_per_s": 0.0, "cpu_percent": None, "rss_bytes": None,
           "engine_restarts": 0}


def test_a_worker_summary_counts_what_it_holds_and_what_it_served() -> None:
    report = new_report()
    worker = register(report, b"A", INFO_A)
    worker.in_flight.update({p.encode_key(1), p.encode_key(2)})
    worker.served.record(0.010, None)
    worker.served.record(0.010, ErrorCode.TIMEOUT)
    worker.served.record(0.010, ErrorCode.JS_EXCEPTION)

    [summary] = ask(report, "_metrics")["workers"]

    assert (summary["in_flight"], summary["requests"], summary["errors"]) == (2, 3, 2)
    assert summary["p50_ms"] == pytest.approx(10.0, rel=0.1)
    assert set(summary) >= {"p50_ms", "p95_ms", "p99_ms", "mean_ms"}


def test_heartbeat_age_and_missed_heartbeats_count_from_when_the_worker_was_last_heard() -> None:
    report = new_report(heartbeat_interval_s=0.5)
    worker = register(report, b"A", INFO_A)
    worker.heartbeat.heard(STARTED + 1.0)

    [summary] = ask(report, "_metrics", now=STARTED + 2.25)["workers"]

    assert (summary["heartbeat_age_s"], summary["missed_heartbeats"]) == (1.25, 2)


def test_a_worker_summary_shows_its_circuit_breaker() -> None:
    report = new_report(breaker_threshold=2)
    worker = register(report, b"A", INFO_A)
    worker.breaker.on_failure(STARTED)
    worker.breaker.on_failure(STARTED)

    [summary] = ask(report, "_metrics", now=STARTED + 0.25)["workers"]

    assert (summary["circuit"]["state"], summary["circuit"]["consecutive_failures"]) == (
        "open", 2,
    )


# ---------------------------------------------------------------- method summaries


def test_methods_are_those_with_figures_and_those_a_worker_serves_in_name_order() -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    report.figures.record("gone", 0.01, None)

    assert list(ask(report, "_metrics")["methods"]) == ["add", "gone", "mul"]


def test_a_method_summary_counts_requests_errors_workers_and_queue() -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    register(report, b"B", INFO_B)
    report.figures.record("add", 0.01, None)
    report.figures.record("add", 0.01, ErrorCode.TIMEOUT)
    live_request(report, "add", queued=True, key=1)
    live_request(report, "add", queued=False, key=2)

    add = ask(report, "_metrics")["methods"]["add"]

    assert (add["requests"], add["errors"], add["errors_by_code"], add["workers"],
            add["queued"]) == (2, 1, {"-32003": 1}, 2, 1)


def test_a_method_served_but_never_called_has_empty_figures() -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    mul = ask(report, "_metrics")["methods"]["mul"]

    assert (mul["requests"], mul["errors"], mul["p50_ms"], mul["workers"]) == (0, 0, None, 1)


def test_a_method_no_worker_serves_any_more_shows_zero_workers() -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    report.figures.record("add", 0.01, None)
    report.workers.remove(b"A")

    methods = ask(report, "_metrics")["methods"]

    assert (list(methods), methods["add"]["workers"]) == (["add"], 0)


# ---------------------------------------------------------------- one worker


@pytest.mark.parametrize(
    "params",
    [{"worker": "host-b:22"}, {"worker": b"B".hex()}, ["host-b:22"]],
    ids=["by id", "by identity", "positional"],
)
def test_metrics_for_one_worker_adds_its_registration_and_its_figures(params: Any) -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    worker = register(report, b"B", INFO_B)
    worker.stats = {"busy": 1, "methods": {"add": {"requests": 3}}}

    result = ask(report, "_metrics", params, now=STARTED + 4.0)

    assert result == {
        **report.worker_summary(worker, STARTED + 4.0), "info": INFO_B, "stats": worker.stats,
    }


@pytest.mark.parametrize("params", [{"worker": "host-a:11"}, ["host-a:11"]])
def test_info_for_one_worker_is_what_it_sent_when_it_registered(params: Any) -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    assert ask(report, "_info", params) == INFO_A


@pytest.mark.parametrize("method", ["_metrics", "_info"])
def test_asking_about_an_unknown_worker_is_invalid_params_naming_it(method: str) -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    code, error = refusal(report, method, {"worker": "nobody"})

    assert (code, error) == (
        ErrorCode.INVALID_PARAMS,
        {"code": -32602, "message": "Invalid params: no worker 'nobody'"},
    )


@pytest.mark.parametrize("method", ["_ping", "_metrics", "_info"])
@pytest.mark.parametrize("params", [{"worker": 1}, {"worker": ["host-a:11"]}, [{"id": 1}]])
def test_a_worker_that_is_not_a_string_is_invalid_params(method: str, params: Any) -> None:
    report = new_report()
    register(report, b"A", INFO_A)

    code, error = refusal(report, method, params)

    assert (code, error) == (
        ErrorCode.INVALID_PARAMS,
        {"code": -32602, "message": "Invalid params: worker must be a worker id string"},
    )


# ---------------------------------------------------------------- _info


def test_info_tells_versions_endpoints_heartbeat_and_limits_from_the_config() -> None:
    report = new_report(frontend="tcp://*:7000", backend="tcp://*:7001",
                        heartbeat_interval_s=0.5, heartbeat_liveness=4, max_queue=12,
                        default_timeout_ms=900, max_batch=3, max_attempts=2,
                        max_call_depth=5, idempotency_window_s=9.0,
                        max_message_bytes=1 << 20)

    info = ask(report, "_info")

    assert info["versions"]["madrpc"] == __version__
    assert set(info["versions"]) == {"madrpc", "python", "pyzmq", "libzmq", "v8"}
    assert info["endpoints"] == {"frontend": "tcp://*:7000", "backend": "tcp://*:7001"}
    assert info["cpu"] is None
    report.shortcuts["frontend"] = "ipc://@madrpc-tcp-127.0.0.1-7000"   # as a broker sets it
    assert ask(report, "_info")["endpoints"]["shortcuts"] == {
        "frontend": "ipc://@madrpc-tcp-127.0.0.1-7000"}
    assert info["heartbeat"] == {"interval_s": 0.5, "liveness": 4}
    limits = info["limits"]
    assert {k: limits[k] for k in ("default_timeout_ms", "max_queue", "max_message_bytes",
                                   "max_batch", "max_attempts", "max_call_depth",
                                   "idempotency_window_s")} == {
        "default_timeout_ms": 900, "max_queue": 12, "max_message_bytes": 1 << 20,
        "max_batch": 3, "max_attempts": 2, "max_call_depth": 5, "idempotency_window_s": 9.0,
    }
    assert limits["max_client_requests"] == BrokerConfig().max_client_requests
    assert info["curve"] is False


def test_info_maps_each_method_to_the_workers_serving_it() -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    register(report, b"B", INFO_B)

    assert ask(report, "_info")["methods"] == {
        "add": ["host-a:11", "host-b:22"], "mul": ["host-a:11"],
    }


def test_info_lists_each_worker_with_its_host_pid_contexts_version_and_script() -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    register(report, b"\x09", {"methods": ["add"]})

    assert ask(report, "_info")["workers"] == [
        {"id": "host-a:11", "host": "host-a", "pid": 11, "contexts": 4, "version": "1.0",
         "script": "a.js", "script_version": None},
        {"id": "09", "host": None, "pid": None, "contexts": None, "version": None,
         "script": None, "script_version": None},
    ]


def test_info_lists_each_v8_version_once() -> None:
    report = new_report()
    register(report, b"A", INFO_A)
    register(report, b"B", INFO_B)
    register(report, b"C", {**INFO_B, "id": "host-c:33", "v8": "11.9"})
    register(report, b"D", {"methods": ["add"]})

    assert ask(report, "_info")["versions"]["v8"] == ["11.9", "12.4"]


# ---------------------------------------------------------------- inside the broker state


def test_the_broker_state_report_sees_workers_registered_with_ready() -> None:
    state = BrokerState(BrokerConfig(adoption_grace_s=0.0), now=0.0)
    body = {"methods": ["add"], "credit": 4, **{k: INFO_A[k] for k in ("id", "host", "pid")}}
    state.on_worker_message(b"W", p.json_message(p.READY, body), 0.0)

    code, fragment = state.report.answer(builtin("_metrics", {"worker": "host-a:11"}), 2.0)
    result = orjson.loads(b"{" + fragment + b"}")["result"]

    assert code is None
    assert (result["id"], result["credit"], result["heartbeat_age_s"]) == ("host-a:11", 4, 2.0)
