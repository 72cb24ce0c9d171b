"""The JavaScript runtime: nested calls, deadlines, limits, the context pool, script lifecycle."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from grid_support import (
    PI_JS,
    SCRIPTS,
    Grid,
    Spawner,
    metrics,
    scaled,
    scaled_ms,
    wait_for_in_flight,
    wait_for_workers,
    wait_until,
)

from madrpc import Client, RpcError, RpcTimeoutError

RUNTIME_JS = SCRIPTS / "runtime.js"
COMPAT_JS = SCRIPTS / "compat.js"
CPU_LIMIT_ARGS = ("--cpu-limit", str(scaled(0.5)))
"""A worker's own CPU limit (test_limits.py's grids use the same, so the pool shares them)."""
MAX_MEMORY_ARGS = ("--max-memory", "64")


def call_in_background(client: Client, method: str, params: Any, timeout: float) -> dict[str, Any]:
    """Start a call (``timeout`` scaled) on a thread; the returned dict gets 'result' or
    'error' when it ends."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = client.call(method, params, timeout=scaled(timeout))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    outcome["thread"] = thread
    return outcome


# ------------------------------------------------------------------ nested calls


def test_aggregate_gives_the_same_estimate_for_the_same_seeds_every_run(start_grid) -> None:
    grid: Grid = start_grid(PI_JS, contexts=2)
    with grid.client(timeout=60) as client:
        first = client.call("aggregate", {"numNodes": 20, "samplesPerNode": 100_000})
        second = client.call("aggregate", {"numNodes": 20, "samplesPerNode": 100_000})
    assert first == second
    assert first["totalSamples"] == 2_000_000
    assert abs(first["piEstimate"] - 3.14159) < 0.01


def test_a_200_way_fan_out_completes_on_a_worker_with_one_context(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client(timeout=30) as client:
        assert client.call("fan", {"n": 200}) == sum(range(200))


def test_a_recursive_fan_out_three_levels_deep_completes(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client(timeout=30) as client:
        assert client.call("recurse", {"depth": 3, "width": 4}) == 64


def test_a_nested_chain_deeper_than_the_limit_fails_with_a_clear_error(start_grid) -> None:
    grid: Grid = start_grid(RUNTIME_JS, contexts=1, broker_args=("--max-call-depth", "8"))
    with grid.client(timeout=30) as client:
        assert client.call("chain", {"depth": 8}) == 8
        with pytest.raises(RpcError) as info:
            client.call("chain", {"depth": 50})
    assert info.value.code == -32006
    assert "deeper than 8" in info.value.message


def test_a_timeout_cuts_a_nested_chain_and_the_worker_serves_on(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=2)
    with grid.client(timeout=30) as client:
        started = time.monotonic()   # the whole chain would take 20 x 200 ms (all scaled)
        with pytest.raises(RpcTimeoutError):
            client.call("slow_chain", {"depth": 20, "ms": scaled_ms(200)}, timeout=scaled(1.0))
        assert time.monotonic() - started < scaled(3.0)
        wait_until(lambda: metrics(grid.frontend)["broker"]["in_flight"] == 0, 5,
                   message="the chain's nested calls to be cancelled")
        assert client.map("noop", [[i] for i in range(20)]) == list(range(20))
        assert client.call("busy", {"ms": 50}) == 50


# ------------------------------------------------------------------ limits


def test_runaway_js_is_stopped_by_the_deadline_while_another_context_keeps_working(
    pooled_grid,
) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=2)
    neighbour_ms = scaled_ms(1500)   # still working while the runaway is stopped
    with grid.client(timeout=30) as client:
        neighbour = call_in_background(client, "busy", {"ms": neighbour_ms}, timeout=30)
        wait_for_in_flight(grid.frontend)
        started = time.monotonic()
        with pytest.raises(RpcTimeoutError):
            client.call("spin", timeout=1.0)
        assert time.monotonic() - started < scaled(2.5)
        neighbour["thread"].join(scaled(30))
        assert neighbour.get("result") == neighbour_ms
        assert client.call("noop", ["after"]) == "after"


def test_the_cpu_limit_terminates_runaway_js_with_a_cpu_limit_error(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1, worker_args=CPU_LIMIT_ARGS)
    with grid.client(timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(RpcError) as info:
            client.call("spin")
        assert time.monotonic() - started < scaled(3.0)
        assert info.value.code == -32012 and "CPU limit exceeded" in info.value.message
        assert client.call("busy", {"ms": 100}) == 100   # under the limit: fine


def test_a_request_may_lower_its_cpu_limit(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    started = time.monotonic()
    with pytest.raises(RpcError) as info:
        raw_call(grid.frontend, "spin",
                 {"cpu_limit_ms": scaled_ms(300), "timeout_ms": scaled_ms(20_000)})
    assert info.value.code == -32012
    assert time.monotonic() - started < scaled(3.0)


def raw_call(frontend: str, method: str, options: dict[str, Any], params: Any = None) -> Any:
    """One request with ``madrpc`` options, through a bare REQ socket."""
    import orjson
    import zmq

    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(frontend)
    try:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1,
                                   "madrpc": options}
        if params is not None:
            request["params"] = params
        socket.send(orjson.dumps(request))
        assert socket.poll(scaled_ms(30_000))
        reply = orjson.loads(socket.recv())
    finally:
        socket.close()
    if "error" in reply:
        from madrpc.errors import rpc_error_from_object

        raise rpc_error_from_object(reply["error"])
    return reply["result"]


@pytest.mark.parametrize("method", ["hog_objects", "hog_doubles"])
def test_unbounded_allocation_gets_out_of_memory_while_another_context_keeps_working(
    pooled_grid, method: str,
) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=2, worker_args=MAX_MEMORY_ARGS)
    neighbour_ms = scaled_ms(2000)   # still working while the other context runs out
    with grid.client(timeout=60) as client:
        neighbour = call_in_background(client, "busy", {"ms": neighbour_ms}, timeout=60)
        wait_for_in_flight(grid.frontend)
        with pytest.raises(RpcError) as info:
            client.call(method)
        assert info.value.code == -32004
        neighbour["thread"].join(scaled(60))
        assert neighbour.get("result") == neighbour_ms
        assert client.map("noop", [[i] for i in range(10)]) == list(range(10))


def test_a_request_may_lower_its_memory_limit(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client(timeout=60) as client:
        assert client.call("alloc", {"mb": 64}) == 64 * 16
    with pytest.raises(RpcError) as info:
        raw_call(grid.frontend, "alloc", {"max_memory_mb": 16}, params={"mb": 64})
    assert info.value.code == -32004
    assert "16 MiB" in info.value.message
    with grid.client(timeout=60) as client:
        assert client.call("alloc", {"mb": 64}) == 64 * 16   # the default limit is back


def test_a_huge_array_buffer_fails_inside_javascript(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=2, worker_args=MAX_MEMORY_ARGS)
    with grid.client(timeout=60) as client:
        with pytest.raises(RpcError) as info:
            client.call("buffer_bomb")
        assert info.value.code in (-32000, -32004)
        assert client.call("noop", [1]) == 1


# ------------------------------------------------------------------ context pool


def test_contexts_are_reused_so_global_state_persists(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client() as client:
        first = client.call("counter")   # earlier tests may have counted on this context
        assert [client.call("counter") for _ in range(3)] == [first + 1, first + 2, first + 3]


def test_a_context_is_rebuilt_after_it_was_terminated(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1, worker_args=CPU_LIMIT_ARGS)
    with grid.client(timeout=30) as client:
        first = client.call("counter")
        assert client.call("counter") == first + 1   # one context, its globals kept
        with pytest.raises(RpcError, match="CPU limit"):
            client.call("spin")
        assert client.call("counter") == 1   # a new context: globals start afresh


def test_fresh_context_mode_gives_every_request_a_new_context(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1, worker_args=("--fresh-context",))
    with grid.client(timeout=30) as client:
        assert [client.call("counter") for _ in range(3)] == [1, 1, 1]
        assert client.call("fan", {"n": 20}) == sum(range(20))


def test_fresh_context_mode_drops_the_context_of_a_request_that_timed_out(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1, worker_args=("--fresh-context",))
    with grid.client(timeout=30) as client:
        with pytest.raises(RpcTimeoutError):
            client.call("sleep", {"ms": 3000}, timeout=0.5)
        with pytest.raises(RpcTimeoutError):
            client.call("spin", timeout=0.5)
        assert client.call("counter") == 1
        assert client.call("sleep", {"ms": 10}) == 10


def test_console_output_reaches_the_worker_log_with_method_and_id(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client() as client:
        assert client.call("shout", {"text": "hey"}) == "HEY"
    worker = grid.workers[0]

    def both_lines() -> list[str] | None:
        lines = worker.stderr().splitlines()
        info = [ln for ln in lines if "shouting hey" in ln]
        warning = [ln for ln in lines if 'careful with {"text":"hey"}' in ln]
        return info + warning if info and warning else None

    info, warning = wait_until(both_lines, 5, message="the two log lines")
    assert "madrpc.js" in info and "[shout id=" in info
    assert "WARNING" in warning


def test_a_function_returning_undefined_answers_null(pooled_grid) -> None:
    grid: Grid = pooled_grid(RUNTIME_JS, contexts=1)
    with grid.client() as client:
        assert client.call("nothing") is None


def test_scripts_written_for_the_earlier_madrpc_run_unchanged(start_grid) -> None:
    grid: Grid = start_grid(COMPAT_JS, contexts=2)
    with grid.client(timeout=30) as client:
        assert client.call("fib", {"n": 20}) == {"n": 20, "value": 6765}
        assert client.call("fib_many", {"n": 15, "count": 10}) == {"total": 6100}
        assert client.call("tree", {"level": 4}) == {"leaves": 16}
        assert client.call("no_return", {"x": 1}) is None
        with pytest.raises(RpcError) as info:
            client.call("validate", {"value": "nope"})
        assert info.value.data["message"] == "value must be a number"


# ------------------------------------------------------------------ script lifecycle


def test_an_edited_script_is_picked_up_by_watch_without_dropping_running_requests(
    spawn: Spawner, tmp_path: Path,
) -> None:
    script = tmp_path / "watched.js"
    shutil.copy(RUNTIME_JS, script)
    endpoints = spawn.endpoints()
    spawn.broker(endpoints)
    spawn.worker(endpoints, script, 1, "--watch")
    wait_for_workers(endpoints.frontend, 1)
    running_ms = scaled_ms(1500)   # still running while the new script takes over
    with Client(endpoints.frontend, timeout=scaled(30)) as client:
        assert client.call("version") == 1
        running = call_in_background(client, "sleep", {"ms": running_ms}, timeout=30)
        wait_for_in_flight(endpoints.frontend)
        source = script.read_text().replace("madrpc.register('version', () => 1);",
                                            "madrpc.register('version', () => 2);\n"
                                            "madrpc.register('added', () => 'new');")
        script.write_text(source)
        wait_until(lambda: client.call("version") == 2, 15, 0.2, "the new script")
        assert client.call("added") == "new"
        running["thread"].join(scaled(30))
        assert running.get("result") == running_ms


def test_a_broken_edit_keeps_the_old_script_serving(spawn: Spawner, tmp_path: Path) -> None:
    script = tmp_path / "watched.js"
    shutil.copy(RUNTIME_JS, script)
    endpoints = spawn.endpoints()
    spawn.broker(endpoints)
    worker = spawn.worker(endpoints, script, 1, "--watch")
    wait_for_workers(endpoints.frontend, 1)
    script.write_text(script.read_text() + "\nfunction broken( {\n")
    wait_until(lambda: "failed to load" in worker.stderr(), 15, 0.2, "the load error")
    with Client(endpoints.frontend, timeout=scaled(10)) as client:
        assert client.call("version") == 1
