"""The ``stream`` section of tools/bench.py: what streaming delivers, against ``map``.

One grid (a broker and 1 worker with 2 contexts, TCP loopback). The same N small items
(the numbers 0..N-1) are produced two ways and timed alternately, ``--runs`` rounds:

* ``Client.stream("count", [N])``: one generator call streaming its N items, with the
  default window (64) and with a window of 2,000;
* ``Client.map("noop", ...)``: N trivial calls, 64 in flight (the client's default).

Reported: items/s of each (median of the rounds) and the ratio stream/map.
"""

from __future__ import annotations

import statistics
import time

from bench import BENCH_SCRIPT, grid

from madrpc import Client

ITEMS = 20_000
WINDOWS = (64, 2000)


def _streamed(front: str, window: int) -> float:
    with Client(front, timeout=300) as client:
        started = time.perf_counter()
        count = sum(1 for _ in client.stream("count", [ITEMS], window=window))
        elapsed = time.perf_counter() - started
    assert count == ITEMS
    return ITEMS / elapsed


def _mapped(front: str) -> float:
    with Client(front, timeout=300) as client:
        started = time.perf_counter()
        results = client.map("noop", ([i] for i in range(ITEMS)))
        elapsed = time.perf_counter() - started
    assert len(results) == ITEMS
    return ITEMS / elapsed


def bench_stream(runs: int) -> list[str]:
    rates: dict[str, list[float]] = {"map": [], **{f"w{w}": [] for w in WINDOWS}}
    with grid(BENCH_SCRIPT, workers=1, contexts=2) as front:
        _streamed(front, WINDOWS[0])   # warm up both paths
        _mapped(front)
        for _ in range(max(1, runs)):
            rates["map"].append(_mapped(front))
            for window in WINDOWS:
                rates[f"w{window}"].append(_streamed(front, window))
    mapped = statistics.median(rates["map"])
    rows = []
    for window in WINDOWS:
        streamed = statistics.median(rates[f"w{window}"])
        rows.append(
            f"| stream of {ITEMS:,} small items, window {window} vs map of {ITEMS:,} noop "
            f"calls (median of {runs}) | {streamed:,.0f} items/s | {mapped:,.0f} items/s | "
            f"**{streamed / mapped:.1f}x** |"
        )
    return rows
