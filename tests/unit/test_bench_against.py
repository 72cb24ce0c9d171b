"""tools/bench_against.py's pure parts: reading bench.py's tables and comparing two
builds' figures round by round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from bench_against import (  # noqa: E402
    Comparison,
    higher_is_better,
    last_figure,
    split_at_dashes,
    table_rows,
)

OUTPUT = "\n".join([
    "# MaDRPC bench  (2 CPUs, 2026-12-04 00:20)",
    "| case | measured | baseline | ratio |",
    "|---|---|---|---|",
    "| nested no-op call from JS, one after another | 946 us per call"
    " | direct client call 769 us | nested/direct **1.23x** |",
    "| metrics collection, 64 in flight (median of 4 alternating runs) | on 32,263 req/s"
    " | off 33918 req/s | cost **+4.9%** |",
    "| aggregate 50 x 1M (JS fan-out), 1 worker | 1 context 0.225 s | 2 contexts 0.135 s"
    " | speed-up **1.67x** |",
]) + "\n"


@pytest.mark.parametrize(("cell", "figure"), [
    ("946 us per call", (946.0, "us per call")),
    ("on 32,263 req/s", (32263.0, "req/s")),
    ("1 context 0.225 s", (0.225, "s")),
    ("Client.call **0.461 ms**", (0.461, "ms")),
    ("–", None),
])
def test_the_last_number_of_a_cell_and_its_unit_are_its_figure(
        cell: str, figure: tuple[float, str] | None) -> None:
    assert last_figure(cell) == figure


def test_rates_are_better_higher_and_times_lower() -> None:
    assert higher_is_better("req/s") and higher_is_better("items/s")
    assert not higher_is_better("us per call") and not higher_is_better("s")


def test_table_rows_skip_headers_separators_and_other_lines() -> None:
    rows = table_rows(OUTPUT)
    assert list(rows) == ["nested no-op call from JS, one after another",
                          "metrics collection, 64 in flight (median of 4 alternating runs)",
                          "aggregate 50 x 1M (JS fan-out), 1 worker"]
    assert rows["aggregate 50 x 1M (JS fan-out), 1 worker"] == ("1 context 0.225 s",
                                                                "2 contexts 0.135 s")


def test_a_comparison_gives_medians_ranges_and_after_over_before_for_both_figures() -> None:
    comparison = Comparison()
    comparison.add("before", OUTPUT)
    comparison.add("after", OUTPUT.replace("946 us", "800 us").replace("0.135 s", "0.150 s"))
    comparison.add("before", OUTPUT.replace("946 us", "1000 us"))
    comparison.add("after", OUTPUT.replace("946 us", "850 us"))
    lines = comparison.table().splitlines()
    assert lines[0].startswith("| case [figure] | before | after | after/before |")
    assert len(lines) == 2 + 6   # two figures for each of three rows
    nested = lines[2]
    assert nested.startswith("| nested no-op call from JS, one after another [measured] |")
    assert "973 us per call (946–1,000)" in nested and "825 us per call (800–850)" in nested
    assert "**0.85x** | lower |" in nested
    two_contexts = lines[7]
    assert two_contexts.startswith("| aggregate 50 x 1M (JS fan-out), 1 worker [baseline] |")
    assert "**1.06x** | lower |" in two_contexts   # median 0.1425 against 0.135
    rate = lines[4]
    assert "[baseline]" in lines[5] and "| higher |" in rate


def test_a_figure_one_build_lacks_is_shown_without_a_ratio() -> None:
    comparison = Comparison()
    comparison.add("before", OUTPUT)
    comparison.add("after", OUTPUT.splitlines()[0])
    assert all(line.endswith("| – | – |") for line in comparison.table().splitlines()[2:])


def test_arguments_after_two_dashes_go_to_bench() -> None:
    assert split_at_dashes(["/tmp/b", "--rounds", "3", "--", "--duration", "5"]) == (
        ["/tmp/b", "--rounds", "3"], ["--duration", "5"])
    assert split_at_dashes(["/tmp/b"]) == (["/tmp/b"], [])
