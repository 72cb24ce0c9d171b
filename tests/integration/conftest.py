"""Fixtures for integration tests: real brokers and workers, always stopped (see grid_support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grid_support import (
    SIMPLE_JS,
    TIME_FACTOR,
    Grid,
    GridPool,
    GridSettings,
    Spawner,
    scaled,
    wait_for_workers,
)

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


@pytest.fixture(scope="session")
def grid_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GridPool]:
    """Grids kept between tests (see GridPool); all stopped at the end of the session."""
    pool = GridPool(tmp_path_factory.mktemp("grid-pool"))
    try:
        yield pool
    finally:
        pool.close()


def print_logs(grid: Grid) -> None:
    for proc in (grid.broker, *grid.workers):
        print(f"----- {proc.name} stderr -----\n{proc.stderr()[-4000:]}")


@pytest.fixture
def pooled_grid(grid_pool: GridPool, request: pytest.FixtureRequest,
                ) -> Iterator[Callable[..., Grid]]:
    """As ``start_grid``, for a test that leaves the grid as it found it (it may change a
    context's globals, never a worker or the broker): a grid of the pool, started by an
    earlier test with the same settings if one is at rest. Its logs hold earlier tests'
    lines too. After the test, the grid goes back to the pool if it is at rest, else it
    is stopped; its processes' logs are printed when the test failed."""
    taken: list[Grid] = []

    def get(script: Path | str = SIMPLE_JS, workers: int = 1, contexts: int = 1,
            broker_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()) -> Grid:
        grid = grid_pool.acquire(GridSettings(str(script), workers, contexts,
                                              tuple(broker_args), tuple(worker_args)))
        taken.append(grid)
        return grid

    try:
        yield get
    finally:
        report = getattr(request.node, "rep_call", None)
        failed = report is None or report.failed
        for grid in taken:
            if failed:
                print_logs(grid)
            grid_pool.release(grid, reusable=not failed)


@pytest.fixture(scope="module")
def shared_grid(grid_pool: GridPool, request: pytest.FixtureRequest) -> Iterator[Grid]:
    """One broker and two single-context workers for a module's tests that only make
    calls (from the pool, so modules share it while it stays at rest)."""
    failures = request.session.testsfailed
    grid = grid_pool.acquire(GridSettings(str(SIMPLE_JS), workers=2, contexts=1))
    try:
        yield grid
    finally:
        grid_pool.release(grid, reusable=request.session.testsfailed == failures)
