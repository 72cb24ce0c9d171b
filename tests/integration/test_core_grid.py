"""The core grid end to end: balancing, liveness, start order, CLI, Python clients."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from grid_support import (
    HEARTBEAT_S,
    LIVENESS,
    PI_JS,
    ROOT,
    SCRIPTS,
    SIMPLE_JS,
    Ahead,
    Background,
    Grid,
    Spawner,
    metrics,
    run_ahead,
    scaled,
    scaled_ms,
    wait_for_workers,
    wait_until,
)

from madrpc import AsyncClient, Client, JSError, RpcError, RpcTimeoutError

AHEAD = {
    "no broker": Ahead("test_madrpc_call_times_out_when_no_broker_answers",
                       ("call", "add", "[1, 2]", "--broker", "tcp://127.0.0.1:9",
                        "--timeout", "1")),
    "run pi": Ahead("test_madrpc_run_starts_a_local_grid_prints_the_result_and_stops",
                    ("run", str(PI_JS), "monte_carlo_sample", '{"samples": 10000, "seed": 3}',
                     "--contexts", "1")),
    "run fail": Ahead("test_madrpc_run_exits_1_on_a_js_error",
                      ("run", str(SIMPLE_JS), "fail", '["run failure"]', "--contexts", "1")),
    "run broken": Ahead("test_madrpc_run_with_a_broken_script_exits_1",
                        ("run", str(SCRIPTS / "broken.js"), "ok", "--contexts", "1")),
    "estimate_pi": Ahead("test_the_pi_example_driver_estimates_pi_on_an_embedded_grid",
                         (str(ROOT / "examples" / "monte-carlo-pi" / "estimate_pi.py"),),
                         cli=False),
}
"""Runs that need no grid of the tests' and mostly wait (for a broker that never answers,
an embedded grid to start and stop): started when the module starts, so they overlap its
other tests."""


@pytest.fixture(scope="module", autouse=True)
def ahead(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Background]:
    """The AHEAD runs, started at the module's first test (whichever it is)."""
    with run_ahead(request, tmp_path_factory.mktemp("ahead"), AHEAD) as runs:
        yield runs


def served(frontend: str) -> dict[str, int]:
    return {w["id"]: w["requests"] for w in metrics(frontend)["workers"]}


def test_calls_are_spread_round_robin_over_two_workers(shared_grid: Grid) -> None:
    before = served(shared_grid.frontend)   # what earlier tests had them do
    with shared_grid.client() as client:
        for i in range(100):
            assert client.call("add", [i, 1]) == i + 1
    after = served(shared_grid.frontend)
    counts = sorted(after[worker] - before.get(worker, 0) for worker in after)
    assert len(counts) == 2 and sum(counts) == 100
    assert all(40 <= n <= 60 for n in counts), counts


def test_a_killed_worker_leaves_the_rotation_and_calls_go_to_the_other(start_grid) -> None:
    grid: Grid = start_grid(workers=2)
    victim, survivor = grid.workers
    with grid.client() as client:
        assert client.map("add", [[i, 0] for i in range(20)]) == list(range(20))
        victim.kill_group()
        killed_at = time.monotonic()
        wait_until(lambda: len(metrics(grid.frontend)["workers"]) == 1, 5, 0.02,
                   "the dead worker to leave")
        noticed_s = time.monotonic() - killed_at
        assert noticed_s < HEARTBEAT_S * (LIVENESS + 2), noticed_s
        assert client.map("add", [[i, 1] for i in range(50)]) == [i + 1 for i in range(50)]
    (only,) = metrics(grid.frontend)["workers"]
    assert only["pid"] == survivor.pid


def test_calls_in_flight_when_a_worker_dies_still_get_answers(start_grid) -> None:
    grid: Grid = start_grid(workers=2)
    victim = grid.workers[0]
    mapped = threading.Event()

    def kill_the_victim_while_it_holds_calls() -> None:
        while not mapped.is_set():
            if any(w["pid"] == victim.pid and w["in_flight"]
                   for w in metrics(grid.frontend)["workers"]):
                victim.kill_group()
                return
            time.sleep(0.02)

    with grid.client(timeout=20) as client:
        params = [[i, 30] for i in range(40)]   # slow_square(i, 30 ms)
        killer = threading.Thread(target=kill_the_victim_while_it_holds_calls)
        killer.start()
        try:
            assert client.map("slow_square", params) == [i * i for i in range(40)]
        finally:
            mapped.set()
            killer.join()


def test_a_worker_started_before_its_broker_serves_once_the_broker_is_up(spawn: Spawner) -> None:
    grid = spawn.endpoints()
    worker = spawn.worker(grid, SIMPLE_JS, 1)
    worker.wait_for_log("reconnecting in", 30)   # it found no broker and retries with back-off
    spawn.broker(grid)
    wait_for_workers(grid.frontend, 1)
    with Client(grid.frontend, timeout=scaled(10)) as client:
        assert client.call("add", [20, 22]) == 42


def test_workers_register_again_after_the_broker_restarts(spawn: Spawner) -> None:
    grid = spawn.endpoints()
    broker = spawn.broker(grid)
    spawn.worker(grid, SIMPLE_JS, 1)
    wait_for_workers(grid.frontend, 1)
    broker.kill_group()
    spawn.broker(grid)
    wait_for_workers(grid.frontend, 1)
    with Client(grid.frontend, timeout=scaled(10)) as client:
        assert client.call("echo", ["back"]) == "back"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_broker_shuts_down_cleanly_on_a_signal(spawn: Spawner, signum: int) -> None:
    grid = spawn.endpoints()
    broker = spawn.broker(grid)
    spawn.worker(grid, SIMPLE_JS, 1)
    wait_for_workers(grid.frontend, 1)
    broker.signal(signum)
    assert broker.wait(10) == (130 if signum == signal.SIGINT else 0)   # Ctrl-C: as shells expect
    assert "broker stopped" in broker.stderr()


def test_the_worker_stops_cleanly_with_its_engines_on_sigterm(spawn: Spawner) -> None:
    import psutil

    grid = spawn.endpoints()
    spawn.broker(grid)
    worker = spawn.worker(grid, SIMPLE_JS, 2)
    wait_for_workers(grid.frontend, 1)
    engines = psutil.Process(worker.pid).children()
    assert len(engines) == 2
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    gone, alive = psutil.wait_procs(engines, timeout=scaled(5))
    assert not alive


def test_a_script_with_a_syntax_error_stops_the_worker_with_file_line_and_column(
    spawn: Spawner,
) -> None:
    grid = spawn.endpoints()
    worker = spawn.worker(grid, SCRIPTS / "broken.js", 1)
    assert worker.wait(30) == 1
    assert "broken.js:3:" in worker.stderr()
    assert "SyntaxError" in worker.stderr()


def test_a_script_that_registers_nothing_stops_the_worker(spawn: Spawner) -> None:
    grid = spawn.endpoints()
    worker = spawn.worker(grid, SCRIPTS / "empty.js", 1)
    assert worker.wait(30) == 1
    assert "registers no functions" in worker.stderr()


# ------------------------------------------------------------------ command line


def madrpc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI to the end (at most ``timeout`` seconds, scaled)."""
    return subprocess.run([sys.executable, "-m", "madrpc.cli", *args], capture_output=True,
                          text=True, timeout=scaled(timeout))


def test_madrpc_call_prints_the_json_result(shared_grid: Grid) -> None:
    done = madrpc("call", "greet", '{"name": "CLI"}', "--broker", shared_grid.frontend)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "Hello, CLI!"


def test_madrpc_call_exits_1_with_the_error_and_its_stack_readable_on_stderr(
    shared_grid: Grid,
) -> None:
    done = madrpc("call", "fail", '["cli failure"]', "--broker", shared_grid.frontend)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == "error -32000: TypeError: cli failure"
    assert lines[1].startswith("  at ") and "simple.js:" in lines[1]
    assert "\\n" not in done.stderr


def test_madrpc_call_json_prints_the_json_rpc_error_object(shared_grid: Grid) -> None:
    done = madrpc("call", "fail", '["cli failure"]', "--broker", shared_grid.frontend,
                  "--json")
    assert done.returncode == 1
    assert json.loads(done.stderr)["error"]["data"]["message"] == "cli failure"


def test_madrpc_call_rejects_params_that_are_not_json(shared_grid: Grid) -> None:
    done = madrpc("call", "add", "[1, 2", "--broker", shared_grid.frontend)
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr


def test_madrpc_call_times_out_when_no_broker_answers(ahead: Background) -> None:
    done = ahead.finish("no broker").done
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("error -32013: ")   # the client gave up


def test_madrpc_run_starts_a_local_grid_prints_the_result_and_stops(ahead: Background) -> None:
    done = ahead.finish("run pi", 60).done
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"inside": json.loads(done.stdout)["inside"],
                                       "total": 10000}


def test_madrpc_run_exits_1_on_a_js_error(ahead: Background) -> None:
    done = ahead.finish("run fail", 60).done
    assert done.returncode == 1
    assert "run failure" in done.stderr


def test_madrpc_run_with_a_broken_script_exits_1(ahead: Background) -> None:
    done = ahead.finish("run broken", 60).done
    assert done.returncode == 1
    assert "broken.js:3:" in done.stderr


def test_every_command_has_help_with_defaults() -> None:
    helps = {}
    for command in ("broker", "worker", "call", "run"):
        done = madrpc(command, "--help")
        assert done.returncode == 0
        assert "Usage:" in done.stdout
        helps[command] = done.stdout
    assert "tcp://127.0.0.1:5556" in helps["worker"]
    assert "[default: 60]" in " ".join(helps["call"].split())


# ------------------------------------------------------------------ Python clients


def test_client_map_returns_results_in_input_order(shared_grid: Grid) -> None:
    with shared_grid.client() as client:
        params = [[i, 40 - i] for i in range(40)]   # later items finish first
        assert client.map("slow_square", params) == [i * i for i in range(40)]


def test_client_map_raises_the_first_error_or_returns_it_in_place(shared_grid: Grid) -> None:
    with shared_grid.client() as client:
        with pytest.raises(RpcError) as info:
            client.map("add", [[1, 2], ["x", 2], [3, 4]])
        assert info.value.code == -32602
        results = client.map("add", [[1, 2], ["x", 2]], return_exceptions=True)
        assert results[0] == 3
        assert isinstance(results[1], RpcError)


def test_client_raises_typed_errors(shared_grid: Grid) -> None:
    with shared_grid.client() as client:
        with pytest.raises(JSError) as info:
            client.call("fail", ["typed"])
        assert info.value.name == "TypeError"
        assert "simple.js" in (info.value.stack or "")
        with pytest.raises(RpcTimeoutError):
            client.call("slow_square", [2, 2000], timeout=0.3)
        with pytest.raises(TypeError):
            client.call("echo", 5)  # type: ignore[arg-type]


def test_a_sync_client_is_safe_to_share_between_threads(shared_grid: Grid) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with shared_grid.client() as client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: client.call("add", [i, i]), range(200)))
    assert results == [2 * i for i in range(200)]


def test_the_async_client_runs_calls_concurrently(shared_grid: Grid) -> None:
    timer_ms = scaled_ms(200)

    async def main() -> tuple[list[int], float, list[int]]:
        async with AsyncClient(shared_grid.frontend, timeout=scaled(10)) as client:
            start = time.perf_counter()
            squares = await asyncio.gather(*(client.call("slow_square", [i, timer_ms])
                                             for i in range(8)))
            elapsed = time.perf_counter() - start
            mapped = await client.map("add", [[i, 1] for i in range(20)])
            return list(squares), elapsed, mapped

    squares, elapsed, mapped = asyncio.run(main())
    assert squares == [i * i for i in range(8)]
    assert elapsed < scaled(1.2)   # eight 200 ms timers (scaled) overlap, not queue
    assert mapped == [i + 1 for i in range(20)]


def test_the_async_client_raises_typed_errors(shared_grid: Grid) -> None:
    async def main() -> None:
        async with AsyncClient(shared_grid.frontend, timeout=scaled(10)) as client:
            with pytest.raises(JSError):
                await client.call("fail")
            with pytest.raises(RpcTimeoutError):
                await client.call("slow_square", [1, 2000], timeout=0.3)

    asyncio.run(main())


def test_client_stats_show_a_call_in_flight_then_the_brokers_last_answer(
    shared_grid: Grid,
) -> None:
    with shared_grid.client() as client:
        future = client.submit("slow_square", [3, scaled_ms(300)])
        during = client.stats()
        assert future.result() == 9
        after = client.stats()
    assert during.in_flight == 1
    assert (after.in_flight, after.retries, after.reconnects) == (0, 0, 0)
    assert after.broker_answered
    assert after.last_heard_s is not None and 0 <= after.last_heard_s < scaled(5)


def test_the_async_client_shows_the_same_stats(shared_grid: Grid) -> None:
    async def main() -> tuple[int, int, bool]:
        async with AsyncClient(shared_grid.frontend, timeout=scaled(10)) as client:
            task = asyncio.ensure_future(client.call("slow_square", [4, scaled_ms(300)]))
            for _ in range(500):   # the call is booked once the task first runs
                if client.stats().in_flight:
                    break
                await asyncio.sleep(0.01)
            during = client.stats().in_flight
            assert await task == 16
            after = client.stats()
            return during, after.in_flight, after.broker_answered

    assert asyncio.run(main()) == (1, 0, True)


def test_an_oversized_request_is_refused_by_the_client_with_a_clear_error(
    shared_grid: Grid,
) -> None:
    from madrpc import MessageTooLargeError

    with shared_grid.client(max_message_bytes=1000) as client:
        with pytest.raises(MessageTooLargeError, match="exceeds the limit"):
            client.call("echo", ["x" * 2000])
        assert client.call("echo", ["small"]) == "small"


# ------------------------------------------------------------------ examples


def test_the_simple_test_example_client_runs_against_a_grid(shared_grid: Grid) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "simple-test" / "client.py"),
         shared_grid.frontend], capture_output=True, text=True, timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr
    assert "add            -> 5" in done.stdout
    assert "sum_of_squares -> 285" in done.stdout
    assert "fail           -> TypeError - on purpose" in done.stdout
    assert "unknown method -> -32601" in done.stdout
    assert "async gather   -> [0, 1, 4, 9, 16, 25, 36, 49]" in done.stdout


def test_the_pi_example_driver_estimates_pi_on_an_embedded_grid(ahead: Background) -> None:
    done = ahead.finish("estimate_pi", 120).done
    assert done.returncode == 0, done.stderr
    estimate = float(done.stdout.split("pi ~ ")[1].split()[0])
    assert abs(estimate - 3.14159) < 0.01
