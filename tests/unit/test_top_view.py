"""What ``madrpc top`` draws: ``_metrics`` snapshots built by hand in, screen lines out.

No terminal, no socket, no clock: the clock is a string the test passes.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from madrpc.table_view import (
    abbreviate,
    bytes_forms,
    count_forms,
    ellipsize,
    fit,
    ms_forms,
    percent_forms,
    rate_forms,
    seconds_forms,
)
from madrpc.top_view import (
    METHOD_SORTS,
    SPARK_ASCII,
    SPARK_BLOCKS,
    WORKER_SORTS,
    Line,
    ViewState,
    plain,
    render,
    sparkline,
    worker_health,
    worker_state,
)

ENDPOINT = "tcp://127.0.0.1:5555"
CLOCK = "12:34:56"
HEADER_LINES = 5
"""Title, three summary lines and a blank line above the table."""

# ---------------------------------------------------------------- snapshots


def worker(worker_id: str = "host-a:100", **fields: Any) -> dict[str, Any]:
    """A ``_metrics["workers"]`` entry as GridReport.worker_summary writes it."""
    entry: dict[str, Any] = {
        "id": worker_id, "identity": "00aa", "host": "host-a", "pid": 100, "contexts": 4,
        "busy": 1, "credit": 7, "in_flight": 2, "requests": 120, "errors": 0,
        "p50_ms": 1.5, "p95_ms": 3.0, "p99_ms": 4.25, "mean_ms": 1.8, "req_per_s": 10.0,
        "cpu_percent": 35.0, "rss_bytes": 50 * 1048576, "engine_restarts": 0,
        "heartbeat_age_s": 0.3, "missed_heartbeats": 0,
        "circuit": {"state": "closed", "consecutive_failures": 0, "opened": 0,
                    "retry_in_s": None},
        "uptime_s": 30.0,
    }
    entry.update(fields)
    return entry


def method(**fields: Any) -> dict[str, Any]:
    """A ``_metrics["methods"]`` entry as GridReport.method_summaries writes it."""
    entry: dict[str, Any] = {
        "requests": 10, "errors": 0, "errors_by_code": {}, "p50_ms": 1.0, "p95_ms": 2.0,
        "p99_ms": 3.0, "mean_ms": 1.2, "workers": 2, "queued": 0,
    }
    entry.update(fields)
    return entry


def snapshot(
    workers: list[dict[str, Any]] | None = None,
    methods: dict[str, dict[str, Any]] | None = None,
    **broker_fields: Any,
) -> dict[str, Any]:
    """A ``_metrics`` result as GridReport.metrics writes it."""
    workers = [worker()] if workers is None else workers
    broker: dict[str, Any] = {
        "uptime_s": 75.4, "requests": 5000, "req_per_s": 12.5, "in_flight": 3,
        "queue_depth": 4, "clients_seen": 2, "workers": len(workers),
        "contexts": sum(w.get("contexts", 0) for w in workers), "dropped_frames": 0,
        "dropped_by_reason": {}, "late_replies": 0, "requeued": 1, "idempotent_hits": 0,
        "idempotency_entries": 0, "workers_joined": len(workers), "workers_left": 0,
        "errors": 0, "errors_by_code": {},
        "latency": {"p50_ms": 1.25, "p95_ms": 150.0, "p99_ms": 250.5, "mean_ms": 2.0},
        "draining": False, "instance": "cafe", "adopted": 0, "adopted_results": 0,
        "cpu_percent": 7.0, "rss_bytes": 30 * 1048576,
    }
    broker.update(broker_fields)
    return {
        "broker": broker,
        "workers": workers,
        "methods": {"add": method()} if methods is None else methods,
        "rate_history": [0] * 55 + [1, 2, 3, 4, 8],
        "time": 1000.0,
    }


def many_workers(count: int) -> list[dict[str, Any]]:
    """Workers w00, w01 ... sorted by req/s in that order."""
    return [worker(f"w{i:02d}", req_per_s=float(1000 - i)) for i in range(count)]


def screen(
    snap: dict[str, Any] | None = None, view: ViewState | None = None, width: int = 160,
    height: int = 40, status: str | None = None, clock: str = CLOCK,
) -> list[Line]:
    return render(snap, view or ViewState(), width, height, ENDPOINT, status, clock)


def texts(lines: list[Line]) -> list[str]:
    return plain(lines).split("\n")


def table_rows(lines: list[Line]) -> list[str]:
    """The table's rows: below its heading, above the padding and the footer."""
    rows = texts(lines)[HEADER_LINES + 1:-1]
    return [row for row in rows if row]


def row_of(lines: list[Line], start: str) -> Line:
    [line] = [line for line in lines if plain([line]).startswith(start)]
    return line


def width_of(line: Line) -> int:
    return sum(len(text) for text, _ in line)


# ---------------------------------------------------------------- plain


def test_plain_joins_the_segments_of_each_line_and_drops_styles_and_trailing_blanks() -> None:
    lines: list[Line] = [[("ab", "bold"), ("cd  ", "dim")], [], [("  x", "ok")]]

    assert plain(lines) == "abcd\n\n  x"


# ---------------------------------------------------------------- sparkline


def test_a_sparkline_draws_one_bar_per_value_scaled_to_the_largest() -> None:
    assert sparkline(list(range(8)), 60) == SPARK_BLOCKS
    assert sparkline([0, 70, 35], 60) == "▁█▅"


def test_a_sparkline_shows_only_the_last_width_values() -> None:
    assert sparkline([100, 0, 7], 2) == "▁█"


def test_a_sparkline_of_nothing_is_empty() -> None:
    assert sparkline([], 10) == ""


def test_a_sparkline_of_zeros_is_the_lowest_bar() -> None:
    assert sparkline([0, 0, 0], 10) == "▁▁▁"


def test_a_sparkline_without_unicode_uses_ascii_bars() -> None:
    assert sparkline(list(range(8)), 60, unicode=False) == SPARK_ASCII


def test_a_sparkline_zero_values_wide_is_empty() -> None:
    assert sparkline([1, 2, 3], 0) == ""


# ---------------------------------------------------------------- abbreviations

MIB = 1048576
CUT = re.compile(r"\d[~…]")
"""A digit right before an ellipsis: a number cut short."""


@pytest.mark.parametrize(
    ("value", "short"),
    [(0, "0"), (7, "7"), (999, "999"), (1000, "1k"), (1234, "1.2k"), (12_345, "12k"),
     (239_000, "239k"), (999_999, "1M"), (12_000_000, "12M"), (3_400_000_000, "3.4G"),
     (None, "-"), ("12", "-"), (True, "-"), (float("nan"), "-")],
)
def test_abbreviate_keeps_at_most_four_characters(value: Any, short: str) -> None:
    assert abbreviate(value) == short


@pytest.mark.parametrize(
    ("value", "width", "shown"),
    [(239_017, 9, "239017"), (239_017, 6, "239017"), (239_017, 5, "239k"), (239_017, 4, "239k"),
     (12_345_678, 8, "12345678"), (12_345_678, 6, "12.35M"), (12_345_678, 5, "12.3M"),
     (12_345_678, 3, "12M"), (1234, 4, "1234"), (1234, 3, "###"), (0, 1, "0")],
)
def test_a_count_is_exact_where_it_fits_and_abbreviated_where_not(
    value: int, width: int, shown: str
) -> None:
    assert fit(count_forms(value), width) == shown


@pytest.mark.parametrize(
    ("value", "width", "shown"),
    [(4403.2, 8, "4403.2"), (4403.2, 4, "4403"), (44_031.5, 4, "44k"), (12.5, 5, "12.5"),
     (12.5, 2, "12"), (0.0, 5, "0.0"), (None, 5, "-")],
)
def test_a_rate_keeps_one_decimal_where_it_fits(value: float | None, width: int,
                                                 shown: str) -> None:
    assert fit(rate_forms(value), width) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [(512 * MIB, "512M"), (int(1.2 * 1024 * MIB), "1.2G"), (50 * MIB, "50M"), (900 * 1024, "900K"),
     (1023 * MIB, "1G"), (500, "500B"), (None, "-")],
)
def test_bytes_are_binary_units_in_four_characters(value: int | None, shown: str) -> None:
    assert fit(bytes_forms(value), 4) == shown


@pytest.mark.parametrize(
    ("milliseconds", "width", "shown"),
    [(12.0, 5, "12ms"), (1300.0, 5, "1.3s"), (0.25, 5, "250us"), (1.25, 6, "1.25ms"),
     (1.25, 5, "1.2ms"), (999.7, 5, "1s"), (999.7, 7, "999.7ms"), (90_000.0, 5, "1.5m"),
     (7_200_000.0, 5, "2h"), (1e9, 5, "11.6d"), (0.0, 5, "0s"), (None, 5, "-")],
)
def test_durations_carry_their_unit(milliseconds: float | None, width: int, shown: str) -> None:
    assert fit(ms_forms(milliseconds), width) == shown


def test_a_heartbeat_age_stays_in_seconds_below_one_second() -> None:
    assert fit(seconds_forms(0.3, sub_second=False), 4) == "0.3s"
    assert fit(seconds_forms(0.3), 5) == "300ms"
    assert fit(seconds_forms(75.0, sub_second=False), 4) == "1.2m"


@pytest.mark.parametrize(
    ("value", "width", "shown"),
    [(35.25, 6, "35.2%"), (35.25, 4, "35%"), (400.0, 4, "400%"), (1234.0, 5, "1234%"),
     (12_345.0, 5, "12k%"),
     (None, 4, "-")],
)
def test_percentages_drop_their_decimal_first(value: float | None, width: int,
                                             shown: str) -> None:
    assert fit(percent_forms(value), width) == shown


@pytest.mark.parametrize("value", [0, 7, 999, 1000, 1234, 99_999, 999_999, 12_345_678, 10**15,
                                   4403.25, 0.25, 1e9, 123456.789])
@pytest.mark.parametrize("width", range(1, 12))
def test_a_figure_is_never_cut_only_abbreviated_or_marked(value: float, width: int) -> None:
    for forms in (count_forms(value), rate_forms(value), bytes_forms(value), ms_forms(value),
                  percent_forms(value)):
        shown = fit(forms, width)
        assert shown in forms or shown == "#" * width
        assert len(shown) <= width


@pytest.mark.parametrize(
    ("text", "width", "shown"),
    [("vm-build-01.example.org:22963", 16, "vm-build-…:22963"),
     ("a-very-long-hostname.example.org:4242", 20, "a-very-long-ho…:4242"),
     ("host-a:100", 10, "host-a:100"),
     ("abc12345def", 6, "abc…"),
     ("123456789", 5, "…"),
     ("host:123456789012345", 10, "host:…"),
     ("waiting for 12345 replies", 15, "waiting for …"),
     ("abc", 0, "")],
)
def test_text_is_cut_with_an_ellipsis_keeping_a_trailing_pid_and_never_splitting_a_number(
    text: str, width: int, shown: str
) -> None:
    assert ellipsize(text, width) == shown
    assert len(shown) <= width


def test_without_unicode_the_ellipsis_is_a_tilde() -> None:
    assert ellipsize("a-very-long-name", 8, "~") == "a-very-~"


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("key", sorted(WORKER_SORTS))
def test_a_sort_key_in_the_workers_view_sorts_workers_only(key: str) -> None:
    view = ViewState(sort="x", method_sort="l", scroll=7)

    assert view.handle_key(key) is True
    assert (view.sort, view.method_sort, view.scroll) == (key, "l", 0)


@pytest.mark.parametrize("key", sorted(METHOD_SORTS))
def test_a_sort_key_in_the_methods_view_sorts_methods_only(key: str) -> None:
    view = ViewState(sort="c", method_sort="x", methods=True, scroll=7)

    assert view.handle_key(key) is True
    assert (view.sort, view.method_sort, view.scroll) == ("c", key, 0)


def test_each_view_has_its_own_keys() -> None:
    assert sorted(WORKER_SORTS) == ["c", "e", "l", "n", "r"]
    assert sorted(METHOD_SORTS) == ["e", "l", "n", "r"]


def test_the_cpu_key_means_nothing_in_the_methods_view() -> None:
    view = ViewState(sort="r", methods=True, scroll=2)

    assert view.handle_key("c") is False
    assert view == ViewState(sort="r", methods=True, scroll=2)


def test_m_toggles_the_methods_view_and_scrolls_back_to_the_top() -> None:
    view = ViewState(scroll=5)

    assert view.handle_key("m") is True
    assert (view.methods, view.scroll) == (True, 0)
    view.scroll = 3
    view.handle_key("m")
    assert (view.methods, view.scroll) == (False, 0)


@pytest.mark.parametrize(
    ("key", "before", "after"),
    [
        ("down", 4, 5),
        ("up", 4, 3),
        ("up", 0, 0),
        ("pagedown", 4, 14),
        ("pageup", 14, 4),
        ("pageup", 4, 0),
        ("home", 14, 0),
    ],
)
def test_scroll_keys_move_the_scroll_position_never_above_the_top(
    key: str, before: int, after: int
) -> None:
    view = ViewState(scroll=before)

    assert view.handle_key(key) is True
    assert view.scroll == after


@pytest.mark.parametrize("key", ["q", "x", "R", "left", ""])
def test_a_key_that_means_nothing_here_changes_nothing(key: str) -> None:
    view = ViewState(sort="l", methods=True, scroll=2)

    assert view.handle_key(key) is False
    assert view == ViewState(sort="l", methods=True, scroll=2)


# ---------------------------------------------------------------- health and state


@pytest.mark.parametrize(
    ("fields", "health"),
    [
        ({}, "ok"),
        ({"circuit": None, "missed_heartbeats": None, "errors": None}, "ok"),
        ({"errors": 1}, "warn"),
        ({"missed_heartbeats": 1}, "warn"),
        ({"missed_heartbeats": 2}, "bad"),
        ({"circuit": {"state": "open"}}, "bad"),
        ({"circuit": {"state": "half_open"}}, "bad"),
        ({"circuit": {"state": "open"}, "errors": 3}, "bad"),
    ],
)
def test_worker_health_is_bad_when_open_or_silent_and_warn_on_a_miss_or_errors(
    fields: dict[str, Any], health: str
) -> None:
    assert worker_health(worker(**fields)) == health


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({}, "busy"),
        ({"busy": 0, "in_flight": 0}, "idle"),
        ({"busy": 0, "in_flight": 3}, "busy"),
        ({"missed_heartbeats": 1}, "late"),
        ({"missed_heartbeats": 2}, "lost"),
        ({"paused": True, "missed_heartbeats": 2}, "paused"),
        ({"draining": True, "paused": True}, "draining"),
    ],
)
def test_worker_state_says_what_the_worker_is_doing(fields: dict[str, Any], state: str) -> None:
    assert worker_state(worker(**fields)) == state


def test_each_worker_row_is_styled_by_its_health() -> None:
    workers = [worker("fine", req_per_s=3.0), worker("erring", errors=2, req_per_s=2.0),
               worker("broken", circuit={"state": "open"}, req_per_s=1.0)]

    lines = screen(snapshot(workers))

    assert [row_of(lines, name)[0][1] for name in ("fine", "erring", "broken")] == [
        "ok", "warn", "bad",
    ]


# ---------------------------------------------------------------- sorting


SORTABLE = [
    worker("bravo", req_per_s=5.0, p99_ms=1.0, errors=7, cpu_percent=10.0),
    worker("alpha", req_per_s=1.0, p99_ms=9.0, errors=0, cpu_percent=None),
    worker("charlie", req_per_s=None, p99_ms=None, errors=2, cpu_percent=90.0),
]
METHODS = {
    "bravo": method(requests=50, p99_ms=1.0, errors=7),
    "alpha": method(requests=900, p99_ms=9.0, errors=0),
    "charlie": method(requests=7, p99_ms=None, errors=2),
}


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize(
    ("key", "order"),
    [
        ("r", ["bravo", "alpha", "charlie"]),
        ("l", ["alpha", "bravo", "charlie"]),
        ("e", ["bravo", "charlie", "alpha"]),
        ("c", ["charlie", "bravo", "alpha"]),
        ("n", ["alpha", "bravo", "charlie"]),
    ],
)
def test_workers_are_sorted_by_the_chosen_key_missing_figures_as_zero(
    key: str, order: list[str], width: int
) -> None:
    view = ViewState()
    view.handle_key(key)

    rows = table_rows(screen(snapshot(SORTABLE, METHODS), view, width=width))

    assert [row.split()[0] for row in rows] == order


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize(
    ("key", "order"),
    [
        ("r", ["alpha", "bravo", "charlie"]),
        ("l", ["alpha", "bravo", "charlie"]),
        ("e", ["bravo", "charlie", "alpha"]),
        ("n", ["alpha", "bravo", "charlie"]),
    ],
)
def test_methods_are_sorted_by_the_chosen_key_in_the_methods_view(
    key: str, order: list[str], width: int
) -> None:
    view = ViewState(methods=True)
    view.handle_key(key)

    rows = table_rows(screen(snapshot(SORTABLE, METHODS), view, width=width))

    assert [row.split()[0] for row in rows] == order


def test_sorting_methods_leaves_the_workers_order_alone_and_the_other_way_round() -> None:
    view = ViewState()
    for key in ("e", "m", "n", "m"):   # workers by errors, then methods by name
        view.handle_key(key)

    workers = [row.split()[0] for row in table_rows(screen(snapshot(SORTABLE, METHODS), view))]
    view.handle_key("m")
    methods = [row.split()[0] for row in table_rows(screen(snapshot(SORTABLE, METHODS), view))]

    assert workers == ["bravo", "charlie", "alpha"]
    assert methods == ["alpha", "bravo", "charlie"]


def test_ties_are_ordered_by_name() -> None:
    workers = [worker(name, req_per_s=1.0) for name in ("delta", "alpha", "charlie")]

    rows = table_rows(screen(snapshot(workers)))

    assert [row.split()[0] for row in rows] == ["alpha", "charlie", "delta"]


def test_an_unknown_sort_falls_back_to_the_first_key_of_the_view() -> None:
    rows = table_rows(screen(snapshot(SORTABLE, METHODS), ViewState(sort="?")))
    methods = table_rows(screen(snapshot(SORTABLE, METHODS), ViewState(method_sort="?",
                                                                      methods=True)))

    assert [row.split()[0] for row in rows] == ["bravo", "alpha", "charlie"]
    assert [row.split()[0] for row in methods] == ["alpha", "bravo", "charlie"]


# ---------------------------------------------------------------- header


def test_the_title_names_endpoint_uptime_workers_and_contexts_and_ends_with_the_clock() -> None:
    lines = screen(snapshot([worker("a"), worker("b", contexts=2)]), width=100)

    title = lines[0]
    assert plain([title]).startswith(f"madrpc top  {ENDPOINT}  up 1m15s  workers 2 (6 contexts)")
    assert plain([title]).endswith(" " + CLOCK)
    assert width_of(title) == 100
    assert {style for _, style in title} == {"title"}


def test_the_title_shows_the_grids_script_version_by_its_first_seven_characters() -> None:
    with_version = texts(screen(snapshot(script_version="0123456789ab"), width=80))[0]
    without = texts(screen(snapshot(), width=80))[0]

    assert "version 0123456 " in with_version and "0123456789ab" not in with_version
    assert "version" not in without
    assert with_version.startswith(f"madrpc top  {ENDPOINT}  up 1m15s")
    assert with_version.endswith(CLOCK)


def test_a_long_endpoint_is_cut_before_the_rest_of_the_title() -> None:
    endpoint = "ipc:///tmp/" + "a" * 100 + "/front"

    title = plain(render(snapshot(), ViewState(), 80, 24, endpoint, None, CLOCK)[:1])

    assert "…" in title and "up 1m15s" in title and "workers 1" in title
    assert title.endswith(CLOCK) and len(title) == 80


@pytest.mark.parametrize(
    ("uptime_s", "shown"),
    [(0.9, "0m00s"), (59.99, "0m59s"), (3599, "59m59s"), (3600, "1h00m"), (90061, "25h01m"),
     (None, "-")],
)
def test_uptime_is_minutes_and_seconds_within_the_hour_then_hours_and_minutes(
    uptime_s: float | None, shown: str
) -> None:
    title = texts(screen(snapshot(uptime_s=uptime_s)))[0]

    assert f"  up {shown}  " in title


def test_before_the_first_snapshot_the_screen_says_it_is_waiting() -> None:
    lines = screen(None)

    assert texts(lines)[0].startswith(f"madrpc top  {ENDPOINT} ")
    assert "  up " not in texts(lines)[0]
    assert lines[1] == [("waiting for the first snapshot ...", "dim")]
    assert lines[-1][0][1] == "footer"


def test_a_status_is_shown_under_the_title_as_bad() -> None:
    lines = screen(snapshot(), status="broker unreachable, retrying (3 s): timeout")

    assert lines[1] == [("broker unreachable, retrying (3 s): timeout", "bad")]
    assert texts(lines)[2].startswith("req/s")


def test_a_status_is_shown_before_the_first_snapshot_too() -> None:
    lines = screen(None, status="connecting ...")

    assert texts(lines)[1:3] == ["connecting ...", "waiting for the first snapshot ..."]


# ---------------------------------------------------------------- summary


def test_the_first_summary_line_is_the_request_rate_and_its_sparkline() -> None:
    lines = screen(snapshot())

    assert lines[1] == [("req/s      12.5  ", "bold"), (sparkline(snapshot()["rate_history"],
                                                                60), "spark")]


def test_the_sparkline_is_ascii_when_the_terminal_has_no_unicode() -> None:
    [_, (spark, _)] = screen(snapshot(), ViewState(unicode=False))[1]

    assert spark == sparkline(snapshot()["rate_history"], 60, unicode=False)


def test_the_sparkline_shrinks_to_fit_a_narrow_screen() -> None:
    [(label, _), (spark, _)] = screen(snapshot(), width=40)[1]

    assert (len(label), len(spark)) == (17, 21)


def test_a_huge_rate_is_abbreviated_in_the_first_summary_line() -> None:
    [(label, _), _] = screen(snapshot(req_per_s=12_345_678_901.0), width=80)[1]

    assert label == "req/s    12.35G  "


def test_the_second_summary_line_counts_requests_and_shows_errors_and_drops() -> None:
    line = screen(snapshot(errors=3, dropped_frames=2))[2]

    assert plain([line]) == ("in flight 3  queued 4  clients 2  requests 5000  requeued 1"
                             "  errors 3  dropped 2")
    assert [text for text, style in line if style != "normal"] == ["errors 3", "dropped 2"]
    assert [style for _, style in line if style != "normal"] == ["bad", "warn"]


def test_no_errors_and_no_drops_are_not_highlighted() -> None:
    line = screen(snapshot())[2]

    assert {style for _, style in line} == {"normal"}


def test_at_80_columns_large_totals_are_abbreviated_never_cut() -> None:
    snap = snapshot(requests=2_390_123_456, in_flight=123_456, queue_depth=98_765,
                    clients_seen=4321, requeued=55_555, errors=123_456, dropped_frames=654_321)

    line = plain(screen(snap, width=80)[2:3])

    assert line == ("infl 123k queued 99k clients 4321 reqs 2.4G requeued 56k errors 123456"
                    " drop 654k")


def test_at_80_columns_the_request_count_of_the_report_is_shown_whole() -> None:
    line = plain(screen(snapshot(requests=2_390_123), width=80)[2:3])

    assert "  requests 2390123  " in line and len(line) <= 80


def test_the_third_summary_line_shows_latency_and_the_broker_process() -> None:
    assert texts(screen(snapshot()))[3] == (
        "latency p50 1.25ms  p95 150ms  p99 250.5ms  broker cpu 7%  rss 30M"
    )


def test_figures_the_broker_does_not_have_are_dashes() -> None:
    snap = snapshot(latency={"p50_ms": None, "p95_ms": None, "p99_ms": None},
                    cpu_percent=None, rss_bytes=None)

    assert texts(screen(snap))[3] == "latency p50 -  p95 -  p99 -  broker cpu -  rss -"


# ---------------------------------------------------------------- workers table

WIDE_HEADINGS = ["WORKER", "PID", "CTX", "BUSY", "INFL", "REQ/S", "REQS", "ERR", "P50", "P99",
                 "CPU%", "RSS", "HB", "AGE", "STATE", "CIRCUIT"]
COMPACT_HEADINGS = ["WORKER", "INFL", "REQ/S", "REQS", "ERR", "P99", "CPU%", "RSS", "HB",
                    "STATE", "CIRCUIT"]


def test_the_workers_table_has_a_heading_and_one_aligned_row_per_worker() -> None:
    lines = screen(snapshot([worker("host-a:100")]))

    heading, row = texts(lines)[HEADER_LINES:HEADER_LINES + 2]
    assert heading.split() == WIDE_HEADINGS
    assert row.split() == ["host-a:100", "100", "4", "1", "2", "10.0", "120", "0", "1.5ms",
                           "4.25ms", "35%", "50M", "0.3s", "busy", "closed"]
    assert lines[HEADER_LINES][0][1] == "heading"


def test_a_worker_without_figures_shows_dashes_and_zeros() -> None:
    [row] = table_rows(screen(snapshot([{"id": "bare"}])))

    assert row.split() == ["bare", "-", "0", "0", "0", "-", "0", "0", "-", "-", "-", "-", "-",
                           "idle", "-"]


def test_a_long_worker_id_is_cut_with_an_ellipsis_keeping_its_pid() -> None:
    long_id = "a-very-long-hostname.example.org:4242"

    heading, row = texts(screen(snapshot([worker(long_id)]), width=80))[
        HEADER_LINES:HEADER_LINES + 2]

    shown = row.split()[0]
    assert shown.endswith("…:4242") and long_id.startswith(shown[:-len("…:4242")])
    assert row[heading.index("INFL") + 3] == "2"   # right-aligned under its heading
    assert len(row) <= 80


def test_an_empty_grid_says_no_workers_are_registered() -> None:
    lines = screen(snapshot([]))

    assert lines[HEADER_LINES + 1] == [("no workers registered", "dim")]


def test_the_version_column_shows_each_workers_script_version_when_the_broker_has_them() -> None:
    workers = [worker("new", script_version="0123456789ab", req_per_s=2.0),
               worker("old", req_per_s=1.0)]

    lines = screen(snapshot(workers, script_version="0123456789ab"), width=80)

    heading, new, old = texts(lines)[HEADER_LINES:HEADER_LINES + 3]
    assert heading.split()[-1] == "VERSION"
    assert (new.split()[-1], old.split()[-1]) == ("0123456", "-")


def test_without_script_versions_there_is_no_version_column() -> None:
    heading = texts(screen(snapshot(), width=80))[HEADER_LINES]

    assert "VERSION" not in heading


# ---------------------------------------------------------------- methods view


def test_the_methods_view_lists_methods_by_requests_with_their_figures() -> None:
    methods = {
        "rare": method(requests=2, workers=1),
        "busy": method(requests=900, queued=5, p99_ms=120.0),
        "never": method(requests=0, p50_ms=None, p95_ms=None, p99_ms=None, mean_ms=None),
    }

    lines = screen(snapshot(methods=methods), ViewState(methods=True))

    heading, *rows = texts(lines)[HEADER_LINES:HEADER_LINES + 4]
    assert heading.split() == ["METHOD", "WORKERS", "QUEUED", "REQS", "ERR", "P50", "P95",
                               "P99", "MEAN"]
    assert [row.split() for row in rows] == [
        ["busy", "2", "5", "900", "0", "1ms", "2ms", "120ms", "1.2ms"],
        ["rare", "1", "0", "2", "0", "1ms", "2ms", "3ms", "1.2ms"],
        ["never", "2", "0", "0", "0", "-", "-", "-", "-"],
    ]


def test_a_method_with_errors_is_highlighted() -> None:
    methods = {"good": method(), "flaky": method(errors=1)}

    lines = screen(snapshot(methods=methods), ViewState(methods=True))

    assert (row_of(lines, "good")[0][1], row_of(lines, "flaky")[0][1]) == ("ok", "warn")


def test_the_methods_view_without_methods_says_so() -> None:
    lines = screen(snapshot(methods={}), ViewState(methods=True))

    assert lines[HEADER_LINES + 1] == [("no methods yet", "dim")]


def test_the_methods_view_keeps_the_summary_above_the_table() -> None:
    workers_screen = texts(screen(snapshot()))
    methods_screen = texts(screen(snapshot(), ViewState(methods=True)))

    assert methods_screen[:HEADER_LINES] == workers_screen[:HEADER_LINES]
    assert methods_screen[HEADER_LINES].startswith("METHOD")


# ---------------------------------------------------------------- footer


def footer_keys(footer: str) -> set[str]:
    """The single-letter keys a footer offers ("r req/s" ...)."""
    return set(re.findall(r"(?:^|\s)([a-z]) [a-z/]", footer.split("]", 1)[1]))


def test_the_footer_is_the_last_line_of_the_screen_and_names_the_sort() -> None:
    lines = screen(snapshot(), ViewState(sort="l"), height=30)

    assert len(lines) == 30
    assert lines[-1][0][1] == "footer"
    assert plain(lines[-1:]).startswith("[workers by p99 latency]  r req/s  l latency")
    assert "m methods" in plain(lines[-1:])


def test_in_the_methods_view_the_footer_offers_the_workers_view_and_names_its_sort() -> None:
    footer = texts(screen(snapshot(), ViewState(methods=True, method_sort="e")))[-1]

    assert footer.startswith("[methods by errors]  ")
    assert "m workers" in footer


@pytest.mark.parametrize("width", [80, 100, 200])
@pytest.mark.parametrize("methods", [False, True])
def test_the_footer_offers_exactly_the_keys_of_the_view_and_each_one_works(
    width: int, methods: bool
) -> None:
    snap = snapshot(SORTABLE, METHODS)
    view = ViewState(methods=methods)
    footer = texts(screen(snap, view, width=width, height=24))[-1]

    keys = footer_keys(footer)

    assert keys == set(view.sorts()) | {"m", "q"}
    assert len(footer) <= width
    for key in sorted(keys - {"q"}):
        other = "r" if key == "n" else "n"
        trial = ViewState(methods=methods, sort=other, method_sort=other)
        before = texts(screen(snap, trial, width=width, height=24))
        assert trial.handle_key(key) is True, key
        assert texts(screen(snap, trial, width=width, height=24)) != before, key


# ---------------------------------------------------------------- scrolling


def test_rows_that_do_not_fit_are_counted_on_the_last_visible_line() -> None:
    view = ViewState()
    height = HEADER_LINES + 2 + 5    # heading, footer and room for five rows

    lines = screen(snapshot(many_workers(12)), view, height=height)

    rows = table_rows(lines)
    assert [row.split()[0] for row in rows[:4]] == ["w00", "w01", "w02", "w03"]
    assert rows[4] == "... 8 more (arrows / PgDn to scroll)"
    assert len(lines) == height


def test_scrolling_moves_the_window_and_counts_what_is_still_below() -> None:
    view = ViewState(scroll=3)

    lines = screen(snapshot(many_workers(12)), view, height=HEADER_LINES + 2 + 5)

    rows = table_rows(lines)
    assert [row.split()[0] for row in rows[:4]] == ["w03", "w04", "w05", "w06"]
    assert rows[4] == "... 5 more (arrows / PgDn to scroll)"


def test_scrolling_to_the_end_shows_the_last_rows_and_no_more_line() -> None:
    view = ViewState(scroll=7)

    rows = table_rows(screen(snapshot(many_workers(12)), view, height=HEADER_LINES + 2 + 5))

    assert [row.split()[0] for row in rows] == ["w07", "w08", "w09", "w10", "w11"]


def test_scrolling_past_the_end_is_held_at_the_last_full_page() -> None:
    view = ViewState(scroll=50)

    rows = table_rows(screen(snapshot(many_workers(12)), view, height=HEADER_LINES + 2 + 5))

    assert view.scroll == 7
    assert [row.split()[0] for row in rows] == ["w07", "w08", "w09", "w10", "w11"]


def test_a_table_that_fits_is_never_scrolled() -> None:
    view = ViewState(scroll=3)

    rows = table_rows(screen(snapshot(many_workers(4)), view, height=40))

    assert view.scroll == 0
    assert [row.split()[0] for row in rows] == ["w00", "w01", "w02", "w03"]


def test_a_short_table_is_padded_so_the_footer_stays_at_the_bottom() -> None:
    lines = screen(snapshot(many_workers(2)), height=25)

    assert len(lines) == 25
    assert lines[HEADER_LINES + 3:-1] == [[] for _ in range(25 - HEADER_LINES - 4)]
    assert lines[-1][0][1] == "footer"


def test_a_screen_too_short_for_the_header_is_cut_to_its_height() -> None:
    lines = screen(snapshot(many_workers(3)), height=3)

    assert texts(lines) == texts(screen(snapshot(many_workers(3))))[:3]


# ---------------------------------------------------------------- widths


def busy_grid() -> dict[str, Any]:
    """Four workers with big figures and script versions, as a loaded grid shows them."""
    workers = [
        worker(f"vm-build-{i:02d}.example.org:{22960 + i}", pid=22960 + i,
               requests=239_017 * (i + 1), errors=1234 * i, req_per_s=4403.2 / (i + 1),
               in_flight=27, p50_ms=12.5, p99_ms=1300.0 / (i + 1), cpu_percent=35.25,
               rss_bytes=int(1.2 * 1024 * MIB), heartbeat_age_s=0.3,
               script_version="0123456789ab")
        for i in range(4)
    ]
    methods = {"add": method(requests=12_000_000, errors=4936),
               "a.rather.long.method.name.indeed": method(requests=1234)}
    return snapshot(workers, methods, requests=2_390_123, script_version="0123456789ab")


def test_at_80_columns_every_worker_column_fits_with_abbreviated_figures() -> None:
    lines = screen(busy_grid(), width=80, height=24)
    heading, *rows = texts(lines)[HEADER_LINES:HEADER_LINES + 5]

    assert heading.split() == COMPACT_HEADINGS + ["VERSION"]
    assert all(width_of(line) <= 80 for line in lines) and len(lines) == 24
    first = dict(zip(heading.split(), rows[3].split(), strict=True))
    assert first["WORKER"].endswith("…:22963")
    assert (first["REQS"], first["ERR"], first["P99"], first["RSS"], first["HB"]) == (
        "956k", "3702", "325ms", "1.2G", "0.3s")
    assert (first["STATE"], first["CIRCUIT"], first["VERSION"]) == ("busy", "closed", "0123456")
    assert not any(CUT.search(line) for line in texts(lines))


def test_at_80_columns_every_method_column_fits() -> None:
    lines = screen(busy_grid(), ViewState(methods=True), width=80, height=24)
    heading, *rows = texts(lines)[HEADER_LINES:HEADER_LINES + 3]

    assert heading.split() == ["METHOD", "WKRS", "QUEUE", "REQS", "ERR", "P50", "P95", "P99",
                               "MEAN"]
    assert rows[0].split() == ["add", "2", "0", "12000000", "4936", "1ms", "2ms", "3ms", "1.2ms"]
    assert rows[1].split()[0] == "a.rather.long.method.name.ind…"
    assert all(width_of(line) <= 80 for line in lines)


def test_at_100_columns_figures_are_shown_in_full() -> None:
    lines = screen(busy_grid(), width=100, height=24)
    heading, *rows = texts(lines)[HEADER_LINES:HEADER_LINES + 5]

    assert heading.split() == COMPACT_HEADINGS + ["VERSION"]
    first = dict(zip(heading.split(), rows[3].split(), strict=True))
    assert (first["REQS"], first["REQ/S"]) == ("956068", "1100.8")
    assert all(width_of(line) <= 100 for line in lines)


def test_at_200_columns_the_optional_columns_and_whole_ids_appear() -> None:
    lines = screen(busy_grid(), width=200, height=24)
    heading, *rows = texts(lines)[HEADER_LINES:HEADER_LINES + 5]

    assert heading.split() == WIDE_HEADINGS + ["VERSION"]
    assert rows[3].split()[:2] == ["vm-build-03.example.org:22963", "22963"]
    assert all(width_of(line) <= 200 for line in lines)


def crowded(width: int) -> list[tuple[str, list[Line]]]:
    """Screens with every line as long as it gets: long names, big numbers, a status."""
    huge = worker("w" * 60, pid=12345678, requests=10**12, errors=10**9, p50_ms=123456.0,
                  p99_ms=1e9, cpu_percent=1e5, rss_bytes=10**15, heartbeat_age_s=1e6,
                  circuit={"state": "half_open_and_more"}, script_version="f" * 40)
    methods = {"m" * 80: method(requests=10**12, errors=10**9, p50_ms=1e9)}
    snap = snapshot([huge] * 3, methods, uptime_s=10**9, requests=10**12, in_flight=10**6,
                    queue_depth=10**6, clients_seen=10**6, requeued=10**6, req_per_s=1e7,
                    errors=10**4, dropped_frames=10**4, cpu_percent=1e4, rss_bytes=10**15,
                    latency={"p50_ms": 1e9, "p95_ms": 1e9, "p99_ms": 1e9},
                    script_version="e" * 40)
    status = "broker unreachable, retrying (12 s): " + "x" * 200
    endpoint = "tcp://" + "very-long-host-name." * 10 + ":5555"
    return [
        ("workers", render(snap, ViewState(), width, 12, endpoint, status, CLOCK)),
        ("methods", render(snap, ViewState(methods=True), width, 12, endpoint, status, CLOCK)),
        ("ascii", render(snap, ViewState(unicode=False), width, 12, endpoint, status, CLOCK)),
        ("waiting", render(None, ViewState(), width, 12, endpoint, status, CLOCK)),
        ("empty", render(snapshot([], {}), ViewState(), width, 12, endpoint, None, "")),
        ("scrolled", render(snapshot(many_workers(30)), ViewState(), width, 12, ENDPOINT)),
    ]


@pytest.mark.parametrize("width", [30, 40, 50, 60, 80, 100, 120, 200])
def test_no_line_is_wider_than_the_screen_and_no_number_is_cut(width: int) -> None:
    for name, lines in crowded(width):
        too_wide = [plain([line]) for line in lines if width_of(line) > width]
        cut = [plain([line]) for line in lines if CUT.search(plain([line]))]
        assert (too_wide, cut) == ([], []), name


def test_on_a_wide_screen_the_title_and_the_clock_are_not_cut() -> None:
    title = texts(screen(snapshot(), width=200))[0]

    assert "…" not in title
    assert title.endswith(CLOCK)


def test_on_a_narrow_screen_a_cut_line_ends_with_an_ellipsis() -> None:
    lines = screen(snapshot(), status="broker unreachable, retrying (3 s): " + "x" * 80,
                   width=40)

    assert plain([lines[1]]) == "broker unreachable, retrying (3 s): xxx…"


def test_without_unicode_a_cut_line_ends_with_a_tilde() -> None:
    lines = screen(snapshot(), ViewState(unicode=False),
                   status="broker unreachable, retrying (3 s): " + "x" * 80, width=40)

    assert plain([lines[1]]) == "broker unreachable, retrying (3 s): xxx~"


def test_at_30_columns_the_waiting_line_fits() -> None:
    lines = screen(None, width=30)

    assert max(width_of(line) for line in lines) <= 30
