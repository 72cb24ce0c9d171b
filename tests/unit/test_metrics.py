"""Latency histograms, rate meters and per-method call statistics."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import orjson
import pytest

from madrpc.metrics import (
    BUCKET_COUNT,
    BUCKETS_PER_OCTAVE,
    MIN_LATENCY_S,
    CallStats,
    Histogram,
    RateMeter,
    bucket_of,
    bucket_upper,
)

BUCKET_WIDTH = 2 ** (1 / BUCKETS_PER_OCTAVE)
PERCENTILES = [0, 1, 25, 50, 90, 95, 99, 99.9, 100]


def latencies(seed: int, count: int) -> list[float]:
    """Log-normal latencies around 1 ms, clipped to [1 us, 10 s]."""
    rng = random.Random(seed)
    return [
        min(10.0, max(1e-6, rng.lognormvariate(math.log(1e-3), 2.5))) for _ in range(count)
    ]


def histogram_of(values: list[float]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    return histogram


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The textbook nearest-rank percentile."""
    rank = max(1, math.ceil(len(sorted_values) * q / 100))
    return sorted_values[rank - 1]


# ================================================================ Histogram


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_one_bucket_above_the_true_value(seed: int) -> None:
    values = latencies(seed, 20_000)
    histogram = histogram_of(values)
    reference = sorted(values)

    for q in PERCENTILES:
        true_value = nearest_rank(reference, q)
        answer = histogram.percentile(q)
        assert answer is not None
        assert true_value <= answer <= true_value * BUCKET_WIDTH * (1 + 1e-12), (q, true_value)


def test_a_single_value_is_every_percentile_to_within_one_bucket() -> None:
    histogram = histogram_of([0.0123])

    answers = {histogram.percentile(q) for q in PERCENTILES}

    assert answers == {bucket_upper(bucket_of(0.0123))}


def test_an_empty_histogram_has_no_percentiles_and_no_mean() -> None:
    histogram = Histogram()

    assert (histogram.percentile(50), histogram.mean) == (None, None)


def test_an_empty_histogram_summary_is_all_none() -> None:
    assert Histogram().summary_ms() == {
        "p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None,
    }


def test_the_mean_is_the_exact_mean_of_the_values() -> None:
    assert histogram_of([0.001, 0.002, 0.006]).mean == pytest.approx(0.003)


def test_the_summary_gives_percentiles_and_mean_in_milliseconds() -> None:
    histogram = histogram_of([0.002] * 10)

    summary = histogram.summary_ms()
    upper = round(bucket_upper(bucket_of(0.002)) * 1000, 3)

    assert summary == {"p50_ms": upper, "p95_ms": upper, "p99_ms": upper, "mean_ms": 2.0}


@pytest.mark.parametrize("value", [0.0, -1.0, 1e-9, MIN_LATENCY_S])
def test_values_at_or_below_one_microsecond_land_in_the_first_bucket(value: float) -> None:
    assert bucket_of(value) == 0


def test_values_slower_than_the_last_bucket_land_in_the_last_bucket() -> None:
    assert bucket_of(10_000.0) == BUCKET_COUNT - 1


def test_a_bucket_edge_belongs_to_the_bucket_it_closes() -> None:
    assert [bucket_of(bucket_upper(i)) for i in range(1, BUCKET_COUNT)] == list(
        range(1, BUCKET_COUNT)
    )


def test_a_value_just_above_a_bucket_edge_belongs_to_the_next_bucket() -> None:
    assert [bucket_of(bucket_upper(i) * 1.000001) for i in range(BUCKET_COUNT - 1)] == list(
        range(1, BUCKET_COUNT)
    )


def test_merging_equals_the_histogram_of_the_concatenated_data() -> None:
    first, second = latencies(10, 3000), latencies(11, 5000)
    merged = histogram_of(first)

    merged.merge(histogram_of(second))

    expected = histogram_of(first + second)
    assert (merged.counts, merged.total) == (expected.counts, expected.total)
    assert merged.sum_s == pytest.approx(expected.sum_s)


def test_merging_an_empty_histogram_changes_nothing() -> None:
    histogram = histogram_of(latencies(12, 100))
    before = (list(histogram.counts), histogram.total, histogram.sum_s)

    histogram.merge(Histogram())

    assert (histogram.counts, histogram.total, histogram.sum_s) == before


def test_a_histogram_round_trips_through_its_json_wire_form() -> None:
    histogram = histogram_of(latencies(13, 2000))

    copy = Histogram.from_wire(orjson.loads(orjson.dumps(histogram.to_wire())))

    assert (copy.counts, copy.total, copy.sum_s) == (
        histogram.counts, histogram.total, histogram.sum_s,
    )


def test_the_wire_form_lists_only_the_non_empty_buckets() -> None:
    wire = histogram_of([0.001, 0.001, 5.0]).to_wire()

    assert sorted(wire["b"].values()) == [1, 2]


@pytest.mark.parametrize(
    "wire",
    [
        None, 5, "histogram", [1, 2], {},
        {"b": [1, 2, 3], "n": 6},
        {"b": "0:5"},
        {"b": {"x": 1, "1.5": 2, "": 3, "-1": 4, str(BUCKET_COUNT): 5}},
        {"b": {"3": "7", "4": 2.5, "5": None, "6": [1], "7": 0, "8": -4}},
    ],
    ids=["null", "number", "string", "array", "empty", "buckets-array", "buckets-string",
         "bad-indices", "bad-counts"],
)
def test_malformed_wire_data_gives_an_empty_histogram(wire: Any) -> None:
    histogram = Histogram.from_wire(wire)

    assert (histogram.total, sum(histogram.counts), histogram.percentile(50)) == (0, 0, None)


def test_valid_buckets_survive_next_to_malformed_ones() -> None:
    histogram = Histogram.from_wire({"b": {"10": 3, "x": 9, "11": "2", "-5": 1}, "s": 0.5})

    assert (histogram.counts[10], histogram.total, histogram.sum_s) == (3, 3, 0.5)


def test_the_total_comes_from_the_buckets_not_from_a_claimed_count() -> None:
    histogram = Histogram.from_wire({"b": {"10": 3}, "n": 1_000_000})

    assert histogram.total == 3


@pytest.mark.parametrize("total_s", ["1.5", None, [1]], ids=["string", "null", "array"])
def test_a_malformed_latency_sum_is_ignored(total_s: Any) -> None:
    assert Histogram.from_wire({"b": {"1": 1}, "s": total_s}).sum_s == 0.0


# ================================================================ RateMeter


def test_a_rate_counts_only_complete_seconds() -> None:
    meter = RateMeter(window_s=5)
    meter.add(100.2)
    meter.add(100.7)

    assert meter.rate(100.9) == 0.0


def test_a_rate_is_the_mean_over_the_window_of_complete_seconds() -> None:
    meter = RateMeter(window_s=5)
    for second in range(100, 105):
        meter.add(second + 0.5, count=second - 99)  # 1 + 2 + 3 + 4 + 5 = 15 events

    assert meter.rate(105.0) == 3.0


def test_events_older_than_the_window_no_longer_count() -> None:
    meter = RateMeter(window_s=5)
    meter.add(100.0, count=10)

    assert (meter.rate(105.9), meter.rate(106.0)) == (2.0, 0.0)


def test_a_meter_without_events_has_a_zero_rate() -> None:
    assert RateMeter().rate(1234.5) == 0.0


def test_history_lists_the_last_complete_seconds_oldest_first() -> None:
    meter = RateMeter(window_s=5)
    meter.add(97.1)
    meter.add(99.0, count=3)
    meter.add(100.2, count=8)  # the current second: not complete yet

    assert meter.history(100.5, 4) == [0, 1, 0, 3]


def test_the_meter_keeps_a_bounded_number_of_seconds() -> None:
    meter = RateMeter(window_s=5)
    for second in range(1000):
        meter.add(second + 0.5)

    assert len(meter._buckets) <= meter.window_s + 3


def test_trimming_keeps_the_window_needed_for_rate_and_history() -> None:
    meter = RateMeter(window_s=5)
    for second in range(1000):
        meter.add(second + 0.5, count=2)

    assert (meter.rate(1000.0), meter.history(1000.0, 5)) == (2.0, [2] * 5)


# ================================================================ CallStats


def test_recording_counts_requests_errors_and_latency() -> None:
    stats = CallStats()
    stats.record(0.001, None)
    stats.record(0.002, -32000)
    stats.record(0.003, -32000)

    assert (stats.requests, stats.errors, stats.latency.total) == (3, Counter({-32000: 2}), 3)


def test_a_successful_call_records_no_error() -> None:
    stats = CallStats()
    stats.record(0.001, None)

    assert not stats.errors


def test_to_dict_reports_totals_errors_by_code_and_latency_in_ms() -> None:
    stats = CallStats()
    stats.record(0.004, None)
    stats.record(0.004, -32601)
    stats.record(0.004, -32000)

    report = stats.to_dict()

    assert {k: report[k] for k in ("requests", "errors", "errors_by_code", "mean_ms")} == {
        "requests": 3, "errors": 2, "errors_by_code": {"-32601": 1, "-32000": 1}, "mean_ms": 4.0,
    }


def test_to_dict_lists_error_codes_in_ascending_order() -> None:
    stats = CallStats()
    for code in (-32000, -32700, -32003):
        stats.record(0.001, code)

    assert list(stats.to_dict()["errors_by_code"]) == ["-32700", "-32003", "-32000"]


def test_call_stats_round_trip_through_their_json_wire_form() -> None:
    stats = CallStats()
    for index, value in enumerate(latencies(20, 500)):
        stats.record(value, -32000 if index % 7 == 0 else None)

    copy = CallStats.from_wire(orjson.loads(orjson.dumps(stats.to_wire())))

    assert copy.to_dict() == stats.to_dict()
    assert copy.latency.counts == stats.latency.counts


@pytest.mark.parametrize("wire", [None, [], "stats", 3], ids=["null", "array", "string", "number"])
def test_call_stats_from_malformed_wire_data_are_empty(wire: Any) -> None:
    stats = CallStats.from_wire(wire)

    assert (stats.requests, stats.errors, stats.latency.total) == (0, Counter(), 0)


def test_call_stats_skip_malformed_fields_and_keep_the_rest() -> None:
    stats = CallStats.from_wire({
        "requests": "many",
        "errors": {"-32000": 2, "oops": 1, "-32601": None, "-32003": [1]},
        "latency": "fast",
    })

    assert (stats.requests, stats.errors, stats.latency.total) == (0, Counter({-32000: 2}), 0)


def test_merging_call_stats_adds_requests_errors_and_latency() -> None:
    first, second = CallStats(), CallStats()
    first.record(0.001, -32000)
    second.record(0.002, -32000)
    second.record(0.003, -32601)

    first.merge(second)

    assert (first.requests, first.errors, first.latency.total) == (
        3, Counter({-32000: 2, -32601: 1}), 3,
    )


def test_merging_call_stats_leaves_the_other_unchanged() -> None:
    first, second = CallStats(), CallStats()
    second.record(0.002, -32000)

    first.merge(second)
    first.record(0.001, -32000)

    assert (second.requests, second.errors, second.latency.total) == (1, Counter({-32000: 1}), 1)


def test_a_rate_meter_remembers_its_history_beyond_its_rate_window() -> None:
    meter = RateMeter(window_s=5, history_s=60)
    for second in range(100, 170):   # 70 s of load, one event more each second
        meter.add(second + 0.5, second)
    history = meter.history(170.2, 60)
    assert history == list(range(110, 170))          # every second of the last minute
    assert meter.rate(170.2) == sum(range(165, 170)) / 5   # the rate stays a 5 s mean
    assert len(meter._buckets) <= 62   # noqa: SLF001 - bounded memory is the point
