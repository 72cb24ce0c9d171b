"""Lazy maps: Client.imap takes its input as room frees up and yields as results come;
madrpc map streams its input and its output in bounded memory. (The grids come from the
pool: each test leaves nothing running on them.)"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil
from grid_support import SCRIPTS, Grid, metrics, scaled, wait_until

RUNTIME_JS = SCRIPTS / "runtime.js"


def test_imap_takes_input_only_as_room_frees_up_and_an_early_exit_cancels_the_rest(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = pooled_grid(RUNTIME_JS, contexts=2)
    taken = 0

    def endless() -> itertools.count[int]:
        nonlocal taken
        for n in itertools.count():
            taken += 1
            yield [n]   # type: ignore[misc]
        raise AssertionError("unreachable")

    with grid.client(timeout=30) as client:
        results = []
        for result in client.imap("noop", endless(), max_in_flight=10):
            results.append(result)
            if len(results) == 50:
                break
        assert results == list(range(50))
        assert taken <= 50 + 10 + 1
        wait_until(lambda: metrics(grid.frontend)["broker"]["in_flight"] == 0, 5,
                   message="the calls left running cancelled")


def test_imap_unordered_yields_each_result_as_its_call_finishes(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = pooled_grid(RUNTIME_JS, contexts=2)
    with grid.client(timeout=30) as client:
        order = list(client.imap("sleep", [{"ms": 1500}, {"ms": 10}, {"ms": 500}],
                                 ordered=False))

    assert order == [10, 500, 1500]


def test_madrpc_map_streams_a_long_input_through_in_bounded_memory(
    pooled_grid: Callable[..., Grid],
) -> None:
    grid = pooled_grid(RUNTIME_JS, contexts=2)
    lines = 20_000
    padding = "x" * 2000   # 40 MB of input: held at once, it would show in the RSS
    producer = subprocess.Popen(
        [sys.executable, "-c",
         f"import sys\nfor i in range({lines}): sys.stdout.write('[%d, \"{padding}\"]\\n' % i)"],
        stdout=subprocess.PIPE)
    mapper = subprocess.Popen(
        [sys.executable, "-m", "madrpc.cli", "map", "first", "-", "--broker", grid.frontend,
         "--max-in-flight", "100"],
        stdin=producer.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert producer.stdout is not None and mapper.stdout is not None
    producer.stdout.close()
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        process = psutil.Process(mapper.pid)
        while not stop.wait(0.05):
            try:
                peak = max(peak, process.memory_info().rss)
            except psutil.Error:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        count = 0
        first_at = None
        for line in mapper.stdout:
            if first_at is None:
                first_at = time.monotonic() - started
            assert line.strip() == str(count).encode()
            count += 1
        mapper.wait(scaled(120))
    finally:
        stop.set()
        watcher.join()
        for proc in (producer, mapper):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if mapper.stderr is not None:
            mapper.stderr.close()
        mapper.stdout.close()

    assert mapper.returncode == 0 and count == lines
    assert first_at is not None and first_at < scaled(10)   # results flowed before the end
    print(f"madrpc map peak RSS {peak / 2**20:.0f} MiB")
    assert peak < 80 * 1024 * 1024, f"madrpc map peaked at {peak / 2**20:.0f} MiB"
