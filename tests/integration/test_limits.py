"""The CPU limit holds in every phase of a request: its first step, continuations after a
timer, a nested call or a resolved promise, and timer callbacks; and it counts all of a
request's JavaScript, not one stretch of it. Real V8 behind a real grid (grids of the pool:
a stopped request leaves the worker as it found it, which each test checks)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from grid_support import SCRIPTS, Grid, scaled, scaled_ms

from madrpc import RpcError

RUNTIME_JS = SCRIPTS / "runtime.js"
PHASES = ["spin_after_timer", "spin_after_call", "spin_after_promise", "spin_in_timer"]


@pytest.mark.parametrize("method", PHASES)
def test_runaway_js_in_any_phase_is_stopped_at_the_workers_cpu_limit(
    pooled_grid: Callable[..., Grid], method: str,
) -> None:
    grid = pooled_grid(RUNTIME_JS, contexts=1, worker_args=("--cpu-limit", str(scaled(0.5))))
    with grid.client(timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(RpcError) as stopped:
            client.call(method)
        assert stopped.value.code == -32012, stopped.value
        assert time.monotonic() - started < scaled(3)

        started = time.monotonic()   # the same single context serves on at once
        assert client.call("noop", ["next"]) == "next"
        assert time.monotonic() - started < scaled(2)


@pytest.mark.parametrize("method", PHASES)
def test_runaway_js_in_any_phase_is_stopped_at_a_lower_per_request_limit(
    pooled_grid: Callable[..., Grid], method: str,
) -> None:
    grid = pooled_grid(RUNTIME_JS, contexts=1)   # the worker's own limit: 60 s
    with grid.client(timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(RpcError) as stopped:
            client.call(method, cpu_limit_ms=scaled_ms(300))
        assert stopped.value.code == -32012
        assert time.monotonic() - started < scaled(3)
        assert client.call("noop", ["next"]) == "next"


def test_the_cpu_limit_counts_all_of_a_requests_javascript(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client(timeout=30) as client:
        # 10 slices of 50 ms, each well under the limit, 500 ms in all: over 300 ms
        with pytest.raises(RpcError) as stopped:
            client.call("drip", {"n": 10, "ms": 50}, cpu_limit_ms=300)
        assert stopped.value.code == -32012
        assert client.call("drip", {"n": 3, "ms": 20}, cpu_limit_ms=300) == 3


def test_a_chain_of_zero_delay_timers_runs_to_its_end_and_lets_others_in(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client(timeout=30) as client:
        assert client.call("drip", {"n": 200, "ms": 0}) == 200
