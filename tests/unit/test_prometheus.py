"""The Prometheus text exposition of a ``_metrics`` snapshot, read back with
``prometheus_client``'s own parser (a test-only dependency)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from madrpc.metrics import CallStats
from madrpc.prometheus import LATENCY_BUCKETS_S, escape_help, escape_label_value, exposition

HISTOGRAM = "madrpc_request_duration_seconds"
NASTY = [
    "back\\slash",
    'double "quoted"',
    "line\nfeed",
    "trailing backslash\\",
    '\\"',
    "\\n is not a newline",
    "{braces},commas=equals sign",
    "ünïcødé ✓",
    "",
]
"""Label values a user script (method names) or a worker (ids, hosts) may produce."""

# ---------------------------------------------------------------- helpers


def worker(worker_id: str = "host-a:100", host: str = "host-a", **fields: Any) -> dict[str, Any]:
    """A ``_metrics["workers"]`` entry with every figure the exposition reads."""
    entry: dict[str, Any] = {
        "id": worker_id, "host": host, "contexts": 4, "busy": 1, "credit": 7, "in_flight": 2,
        "requests": 120, "cpu_percent": 35.5, "rss_bytes": 50_000_000,
        "heartbeat_age_s": 0.25, "circuit": {"state": "closed"},
    }
    entry.update(fields)
    return entry


def broker(**fields: Any) -> dict[str, Any]:
    """A ``_metrics["broker"]`` object with every figure the exposition reads."""
    entry: dict[str, Any] = {
        "requests": 1000, "in_flight": 3, "queue_depth": 5, "requeued": 2, "late_replies": 1,
        "workers": 2, "uptime_s": 61.5, "cpu_percent": 4.0, "rss_bytes": 30_000_000,
        "errors_by_code": {"-32601": 4, "-32003": 1},
        "dropped_by_reason": {"client message without body": 2, "bad worker frames": 3},
    }
    entry.update(fields)
    return entry


def stats_of(*latencies_s: float) -> CallStats:
    stats = CallStats()
    for latency_s in latencies_s:
        stats.record(latency_s, None)
    return stats


def parse(text: str) -> dict[str, Any]:
    """Metric families by name (counters lose their ``_total``, as the parser names them)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name``, in output order."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def sample_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith((name + " ", name + "{"))]


def buckets(text: str, method: str) -> list[tuple[str, float]]:
    return [
        (labels["le"], value)
        for labels, value in samples(text, HISTOGRAM + "_bucket")
        if labels["method"] == method
    ]


# ---------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a\\b", "a\\\\b"),
        ('say "hi"', 'say \\"hi\\"'),
        ("two\nlines", "two\\nlines"),
        ('\\"', '\\\\\\"'),
        ("\\n", "\\\\n"),
    ],
)
def test_label_values_escape_backslash_double_quote_and_line_feed(
    value: str, written: str
) -> None:
    assert escape_label_value(value) == written


def test_label_values_keep_every_other_character_as_it_is() -> None:
    value = "{a},b=c 'd' \t ünï ✓"

    assert escape_label_value(value) == value


def test_help_text_escapes_backslash_and_line_feed_but_not_double_quote() -> None:
    assert escape_help('a\\b\n"c"') == 'a\\\\b\\n"c"'


@pytest.mark.parametrize("nasty", NASTY)
def test_worker_ids_and_hosts_read_back_exactly_as_the_worker_sent_them(nasty: str) -> None:
    snapshot = {"broker": broker(), "workers": [worker(worker_id=nasty, host=nasty + "!")]}

    [(labels, value)] = samples(exposition(snapshot, {}), "madrpc_worker_contexts")

    assert (labels, value) == ({"worker": nasty, "host": nasty + "!"}, 4)


@pytest.mark.parametrize("nasty", NASTY)
def test_method_names_read_back_exactly_as_the_script_named_them(nasty: str) -> None:
    text = exposition({}, {nasty: stats_of(0.01)})

    [(labels, value)] = samples(text, HISTOGRAM + "_count")

    assert (labels, value) == ({"method": nasty}, 1)


def test_no_label_value_breaks_a_sample_over_two_lines() -> None:
    nasty = "\n".join(NASTY)
    snapshot = {"broker": broker(), "workers": [worker(worker_id=nasty, host=nasty)]}

    text = exposition(snapshot, {nasty: stats_of(0.01)})

    assert all(line.startswith(("# HELP ", "# TYPE ", "madrpc_")) for line in text.splitlines())


# ---------------------------------------------------------------- the whole text


def test_a_full_snapshot_parses_with_the_declared_type_of_every_family() -> None:
    snapshot = {
        "broker": broker(),
        "workers": [worker(), worker("host-b:200", "host-b")],
        "methods": {"add": {}},
        "rate_history": [1, 2, 3],
        "time": 12.0,
    }

    families = parse(exposition(snapshot, {"add": stats_of(0.002), "mul": stats_of(0.3)}))

    assert {name: family.type for name, family in families.items()} == {
        "madrpc_requests": "counter",
        "madrpc_in_flight": "gauge",
        "madrpc_queue_depth": "gauge",
        "madrpc_requeued": "counter",
        "madrpc_late_replies": "counter",
        "madrpc_workers": "gauge",
        "madrpc_uptime_seconds": "gauge",
        "madrpc_broker_cpu_percent": "gauge",
        "madrpc_broker_rss_bytes": "gauge",
        "madrpc_errors": "counter",
        "madrpc_dropped_frames": "counter",
        "madrpc_worker_contexts": "gauge",
        "madrpc_worker_busy_contexts": "gauge",
        "madrpc_worker_credit": "gauge",
        "madrpc_worker_in_flight": "gauge",
        "madrpc_worker_requests": "counter",
        "madrpc_worker_cpu_percent": "gauge",
        "madrpc_worker_rss_bytes": "gauge",
        "madrpc_worker_heartbeat_age_seconds": "gauge",
        "madrpc_worker_circuit_open": "gauge",
        "madrpc_worker_paused": "gauge",
        "madrpc_bound": "gauge",
        HISTOGRAM: "histogram",
    }


def test_every_family_has_help_and_type_lines_before_its_samples() -> None:
    text = exposition({"broker": broker(), "workers": [worker()]}, {"add": stats_of(0.1)})
    declared: set[str] = set()

    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif not line.startswith("# HELP "):
            name = line.split("{")[0].split(" ")[0]
            family = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert name in declared or family in declared, line


def test_the_text_ends_with_a_line_feed() -> None:
    assert exposition({"broker": broker()}, {}).endswith("\n")


def test_an_empty_snapshot_still_parses() -> None:
    families = parse(exposition({}, {}))

    assert all(family.samples == [] for family in families.values())


# ---------------------------------------------------------------- broker figures


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("madrpc_requests_total", "requests"),
        ("madrpc_in_flight", "in_flight"),
        ("madrpc_queue_depth", "queue_depth"),
        ("madrpc_requeued_total", "requeued"),
        ("madrpc_late_replies_total", "late_replies"),
        ("madrpc_workers", "workers"),
        ("madrpc_uptime_seconds", "uptime_s"),
        ("madrpc_broker_cpu_percent", "cpu_percent"),
        ("madrpc_broker_rss_bytes", "rss_bytes"),
    ],
)
def test_each_broker_figure_is_one_unlabelled_sample(name: str, key: str) -> None:
    figures = broker()

    assert samples(exposition({"broker": figures}, {}), name) == [({}, figures[key])]


def test_a_broker_figure_absent_from_the_snapshot_is_not_declared() -> None:
    figures = broker()
    del figures["cpu_percent"]

    text = exposition({"broker": figures}, {})

    assert "madrpc_broker_cpu_percent" not in text


def test_a_broker_figure_that_is_none_is_declared_without_a_sample() -> None:
    text = exposition({"broker": broker(rss_bytes=None)}, {})

    assert "# TYPE madrpc_broker_rss_bytes gauge" in text
    assert samples(text, "madrpc_broker_rss_bytes") == []


def test_errors_are_counted_by_json_rpc_code() -> None:
    text = exposition({"broker": broker()}, {})

    assert samples(text, "madrpc_errors_total") == [
        ({"code": "-32601"}, 4),
        ({"code": "-32003"}, 1),
    ]


def test_dropped_frames_are_counted_by_reason_in_order_of_reason() -> None:
    text = exposition({"broker": broker()}, {})

    assert samples(text, "madrpc_dropped_frames_total") == [
        ({"reason": "bad worker frames"}, 3),
        ({"reason": "client message without body"}, 2),
    ]


# ---------------------------------------------------------------- worker figures


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("madrpc_worker_contexts", "contexts"),
        ("madrpc_worker_busy_contexts", "busy"),
        ("madrpc_worker_credit", "credit"),
        ("madrpc_worker_in_flight", "in_flight"),
        ("madrpc_worker_requests_total", "requests"),
        ("madrpc_worker_cpu_percent", "cpu_percent"),
        ("madrpc_worker_rss_bytes", "rss_bytes"),
        ("madrpc_worker_heartbeat_age_seconds", "heartbeat_age_s"),
    ],
)
def test_each_worker_figure_is_one_sample_per_worker_labelled_by_id_and_host(
    name: str, key: str
) -> None:
    first, second = worker(), worker("host-b:200", "host-b", **{key: 9})

    text = exposition({"workers": [first, second]}, {})

    assert samples(text, name) == [
        ({"worker": "host-a:100", "host": "host-a"}, first[key]),
        ({"worker": "host-b:200", "host": "host-b"}, 9),
    ]


def test_a_worker_whose_figure_is_missing_gets_no_sample_for_it() -> None:
    silent = worker("quiet:1", "quiet", cpu_percent=None, rss_bytes=None)

    text = exposition({"workers": [worker(), silent]}, {})

    assert [labels["worker"] for labels, _ in samples(text, "madrpc_worker_cpu_percent")] == [
        "host-a:100"
    ]
    assert [labels["worker"] for labels, _ in samples(text, "madrpc_worker_rss_bytes")] == [
        "host-a:100"
    ]
    assert [labels["worker"] for labels, _ in samples(text, "madrpc_worker_contexts")] == [
        "host-a:100", "quiet:1",
    ]


@pytest.mark.parametrize(
    ("circuit", "open_"),
    [
        ({"state": "closed"}, 0),
        ({"state": "open"}, 1),
        ({"state": "half_open"}, 1),
        ({}, 0),
        (None, 0),
    ],
)
def test_circuit_open_is_one_while_the_breaker_is_not_closed(
    circuit: dict[str, str] | None, open_: int
) -> None:
    text = exposition({"workers": [worker(circuit=circuit)]}, {})

    [(_, value)] = samples(text, "madrpc_worker_circuit_open")

    assert value == open_


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("value", "written"),
    [(float("nan"), "NaN"), (float("inf"), "+Inf"), (float("-inf"), "-Inf")],
)
def test_nan_and_infinities_are_written_as_the_format_spells_them(
    value: float, written: str
) -> None:
    text = exposition({"broker": broker(uptime_s=value), "workers": [worker(cpu_percent=value)]},
                      {})

    assert sample_lines(text, "madrpc_uptime_seconds") == [f"madrpc_uptime_seconds {written}"]
    assert sample_lines(text, "madrpc_worker_cpu_percent")[0].endswith(" " + written)


def test_nan_and_infinities_read_back_as_the_same_floats() -> None:
    text = exposition(
        {"workers": [worker("a", cpu_percent=math.nan), worker("b", cpu_percent=math.inf),
                     worker("c", cpu_percent=-math.inf)]},
        {},
    )

    [(_, nan), (_, inf), (_, negative)] = samples(text, "madrpc_worker_cpu_percent")

    assert (math.isnan(nan), inf, negative) == (True, math.inf, -math.inf)


def test_integers_are_written_without_a_decimal_point_and_floats_exactly() -> None:
    text = exposition({"broker": broker(requests=12345678901234, uptime_s=0.1)}, {})

    assert sample_lines(text, "madrpc_requests_total") == ["madrpc_requests_total 12345678901234"]
    assert sample_lines(text, "madrpc_uptime_seconds") == ["madrpc_uptime_seconds 0.1"]


def test_booleans_are_written_as_one_and_zero() -> None:
    text = exposition({"workers": [worker("a", busy=True), worker("b", busy=False)]}, {})

    assert [line.split()[-1] for line in sample_lines(text, "madrpc_worker_busy_contexts")] == [
        "1", "0",
    ]


# ---------------------------------------------------------------- latency histograms


def test_each_method_gets_a_histogram_labelled_with_its_name_in_name_order() -> None:
    text = exposition({}, {"mul": stats_of(0.1), "add": stats_of(0.1, 0.2)})

    assert samples(text, HISTOGRAM + "_count") == [({"method": "add"}, 2), ({"method": "mul"}, 1)]


def test_histogram_buckets_are_the_documented_bounds_then_plus_inf() -> None:
    text = exposition({}, {"add": stats_of(0.01)})

    bounds = [le for le, _ in buckets(text, "add")]

    assert bounds == [repr(bound) for bound in LATENCY_BUCKETS_S] + ["+Inf"]
    assert [float(le) for le in bounds] == sorted(float(le) for le in bounds)


def test_histogram_buckets_are_cumulative() -> None:
    stats = stats_of(0.0001, 0.003, 0.003, 0.02, 0.7, 4.0, 45.0)

    counts = [value for _, value in buckets(exposition({}, {"add": stats}), "add")]

    assert counts == sorted(counts)
    assert counts[0] == 1
    assert counts[-1] == 7


def test_the_plus_inf_bucket_equals_the_count_and_holds_what_is_slower_than_every_bound() -> None:
    stats = stats_of(0.001, 0.5, 100.0, 200.0)
    text = exposition({}, {"add": stats})

    counts = dict(buckets(text, "add"))
    [(_, count)] = samples(text, HISTOGRAM + "_count")

    assert (counts["60.0"], counts["+Inf"], count) == (2, 4, 4)


def test_the_histogram_sum_is_the_total_of_the_latencies() -> None:
    stats = stats_of(0.25, 0.5, 1.5)

    [(_, total)] = samples(exposition({}, {"add": stats}), HISTOGRAM + "_sum")

    assert total == pytest.approx(2.25)


def test_a_bucket_never_counts_a_request_slower_than_its_bound() -> None:
    rng = random.Random(7)
    latencies = [min(100.0, rng.lognormvariate(math.log(0.01), 2.0)) for _ in range(5000)]

    counts = dict(buckets(exposition({}, {"add": stats_of(*latencies)}), "add"))

    for bound in LATENCY_BUCKETS_S:
        at_most = sum(1 for latency in latencies if latency <= bound)
        # internal buckets are 2**(1/8) wide: a request just under a bound may land above it
        surely_under = sum(1 for latency in latencies if latency <= bound / 2 ** (1 / 8))
        assert surely_under <= counts[repr(bound)] <= at_most, bound


def test_a_method_without_requests_has_empty_buckets() -> None:
    text = exposition({}, {"idle": CallStats()})

    assert {value for _, value in buckets(text, "idle")} == {0}
    assert samples(text, HISTOGRAM + "_sum") == [({"method": "idle"}, 0.0)]
