"""Fixtures for integration tests: real brokers and workers, always stopped (see grid_support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grid_support import SIMPLE_JS, TIME_FACTOR, Grid, Spawner, scaled, wait_for_workers

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stretch pytest-timeout's per-test limit by TIME_FACTOR, as every other wait is."""
    limit = float(config.getini("timeout") or 0)
    if TIME_FACTOR == 1 or not limit:
        return
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(scaled(limit)))


@pytest.fixture
def spawn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.cleanup()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for proc in spawner.procs:
                print(f"----- {proc.name} stderr -----\n{proc.stderr()[-4000:]}")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def start_grid(spawn: Spawner) -> Callable[..., Grid]:
    """Start a broker and ``workers`` workers (``contexts`` each) and wait for them."""
    def start(script: Path | str = SIMPLE_JS, workers: int = 1, contexts: int = 1,
              broker_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()) -> Grid:
        endpoints = spawn.endpoints()
        broker = spawn.broker(endpoints, *broker_args)
        procs = [spawn.worker(endpoints, script, contexts, *worker_args) for _ in range(workers)]
        wait_for_workers(endpoints.frontend, workers)
        return Grid(endpoints, broker, procs)

    return start


@pytest.fixture(scope="module")
def shared_grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    """One broker and two single-context workers for tests that only make calls."""
    spawner = Spawner(tmp_path_factory.mktemp("shared-grid"))
    try:
        endpoints = spawner.endpoints()
        broker = spawner.broker(endpoints)
        workers = [spawner.worker(endpoints, SIMPLE_JS, 1) for _ in range(2)]
        wait_for_workers(endpoints.frontend, 2)
        yield Grid(endpoints, broker, workers)
    finally:
        spawner.cleanup()
