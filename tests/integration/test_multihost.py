"""A grid over several hosts (network namespaces on one switch, CURVE over TCP) while
links fail: a worker host, a flapping worker link, the client host and the broker host.

Every test runs a steady keyed load from the client host, then checks that every call
got exactly one correct answer: none missing, failed or wrong; none answered on the
client's socket by a second execution; and no more runs of a key in the workers' logs
than the broker's re-dispatches (and retries after "worker lost") account for. Both
worker hosts must have completed requests, as the broker's ``_metrics`` counts them.
The harness is :mod:`netns_support`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grid_support import scaled
from netns_support import (
    BROKER_HOST,
    CLIENT_HOST,
    LIVENESS_WINDOW_S,
    WORKER_HOSTS,
    Keys,
    LoadReport,
    MultiHostGrid,
    Snapshot,
    make_keys,
    reap_stale_dirs,
    require_netns,
    scratch_dir,
)

from madrpc.errors import ErrorCode

PARTITION_S = scaled(2.0)
"""How long a host stays cut off: over three liveness windows (0.6 s each, scaled)."""
assert PARTITION_S > 3 * LIVENESS_WINDOW_S
FLAP_S = scaled(0.3)
"""Half a period of a flapping link (down this long, then up this long)."""
FLAPPING_S = scaled(3.0)
WARM_UP_CALLS = 20
"""Answers the load must have had before a fault, so the fault hits a running grid."""
AFTER_FAULT_CALLS = 20
"""Answers the load must have had after a fault heals, before it stops."""
WORKER_LOST = int(ErrorCode.WORKER_LOST)
TEST_TIMEOUT_S = scaled(120)
"""Each test takes about 10 s here; an explicit limit is not stretched by conftest."""


@pytest.fixture(scope="module", autouse=True)
def _needs_netns() -> None:
    """Skip the whole module where namespaces cannot stand in for hosts."""
    require_netns()


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    """Key pairs for the broker, each worker host, the load client and the monitor
    (made once: making them is five Python start-ups), removed with their directory."""
    reap_stale_dirs()
    root = scratch_dir("keys")
    try:
        yield make_keys(root, WORKER_HOSTS, (CLIENT_HOST, "monitor"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def grid(keys: Keys, tmp_path: Path, request: pytest.FixtureRequest,
         ) -> Iterator[MultiHostGrid]:
    """A running multi-host grid; its processes and namespaces are gone after the test,
    whether it passed or not (and its logs are printed when it failed)."""
    run_dir = scratch_dir("run")
    grid = MultiHostGrid(tmp_path, run_dir, keys)
    try:
        grid.start()
        yield grid
    finally:
        try:
            grid.cleanup()
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(grid.logs())
        left = grid.leftovers()
        assert not left, f"left behind: {left}"


def assert_exactly_once(grid: MultiHostGrid, report: LoadReport) -> None:
    """Every call answered correctly, once; both worker hosts did some of the work."""
    problems = report.problems()
    assert not problems, f"{len(problems)} problem(s) of {report.sent} calls:\n" + "\n".join(
        problems[:40])
    assert report.sent >= WARM_UP_CALLS + AFTER_FAULT_CALLS
    executions = grid.wait_for_executions(report.answering_executions())
    broker = grid.fresh_snapshot().metrics["broker"]
    requeued = broker["requeued"]
    repeats = report.repeat_problems(
        executions, requeued + broker["errors_by_code"].get(str(WORKER_LOST), 0))
    assert not repeats, f"{repeats[0]}; errors by code {broker['errors_by_code']}"
    served = grid.served_by_host()
    print(f"{report.sent} calls, {report.retries} resent, {report.reconnects} reconnections, "
          f"{requeued} re-dispatched; completed per host {served}, "
          f"executions per host {grid.executions_by_host()}")
    assert all(served[host] > 0 for host in WORKER_HOSTS), (
        f"requests completed per host {served}, executions logged "
        f"{grid.executions_by_host()}")


def registered(grid: MultiHostGrid, snapshot: Snapshot) -> bool:
    return all(grid.entry(snapshot, host) is not None for host in WORKER_HOSTS)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_partitioned_worker_host_loses_nothing_and_rejoins_by_itself(
        grid: MultiHostGrid) -> None:
    load = grid.start_load()
    load.wait_answered(WARM_UP_CALLS)
    holding = grid.wait_for(lambda s: (grid.entry(s, "w1") or {}).get("in_flight", 0) > 0,
                            "w1 holding requests")
    before = grid.entry(holding, "w1")
    assert before is not None
    with grid.network.partitioned("w1"):
        time.sleep(PARTITION_S)
    healed = time.monotonic()
    grid.wait_for_heartbeat_loss(before["identity"])

    def serving_again(snapshot: Snapshot) -> bool:
        entry = grid.entry(snapshot, "w1")
        return (entry is not None and entry["identity"] != before["identity"]
                and entry["requests"] > 0)

    rejoined = grid.wait_for(serving_again, "w1 registered again and serving", after=healed)
    assert rejoined.metrics["broker"]["requeued"] >= 1, "w1's requests were not run elsewhere"
    load.wait_answered(load.answered() + AFTER_FAULT_CALLS)
    assert_exactly_once(grid, load.stop())


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_flapping_worker_link_loses_and_repeats_nothing(grid: MultiHostGrid) -> None:
    load = grid.start_load()
    load.wait_answered(WARM_UP_CALLS)
    end = time.monotonic() + FLAPPING_S
    flaps = 0
    while time.monotonic() < end:
        with grid.network.partitioned("w1"):
            time.sleep(FLAP_S)
        flaps += 1
        time.sleep(FLAP_S)
    settled = time.monotonic()
    assert flaps >= 3
    grid.wait_for(lambda s: registered(grid, s), "both workers registered after flapping",
                  after=settled)
    load.wait_answered(load.answered() + AFTER_FAULT_CALLS)
    assert_exactly_once(grid, load.stop())


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_client_host_cut_off_mid_call_gets_every_answer_once(grid: MultiHostGrid) -> None:
    load = grid.start_load()
    load.wait_answered(WARM_UP_CALLS)
    grid.wait_for(lambda s: s.metrics["broker"]["in_flight"] > 0, "calls in flight")
    with grid.network.partitioned(CLIENT_HOST):
        time.sleep(PARTITION_S)
    load.wait_answered(load.answered() + AFTER_FAULT_CALLS)
    report = load.stop()
    assert report.reconnects >= 1, "the client never gave up its connection: no retry ran"
    assert_exactly_once(grid, report)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_partitioned_broker_host_loses_nothing(grid: MultiHostGrid) -> None:
    load = grid.start_load()
    load.wait_answered(WARM_UP_CALLS)
    busy = grid.wait_for(lambda s: s.metrics["broker"]["in_flight"] > 0 and registered(grid, s),
                         "calls in flight")
    identities = [entry["identity"] for host in WORKER_HOSTS
                  if (entry := grid.entry(busy, host)) is not None]
    with grid.network.partitioned(BROKER_HOST):
        time.sleep(PARTITION_S)
    healed = time.monotonic()
    for identity in identities:
        grid.wait_for_heartbeat_loss(identity)

    def rejoined(snapshot: Snapshot) -> bool:
        entries = [grid.entry(snapshot, host) for host in WORKER_HOSTS]
        return all(entry is not None and entry["identity"] not in identities
                   for entry in entries)

    grid.wait_for(rejoined, "both workers registered again", after=healed)
    load.wait_answered(load.answered() + AFTER_FAULT_CALLS)
    report = load.stop()
    assert report.reconnects >= 1, "the client never gave up its connection: no retry ran"
    assert_exactly_once(grid, report)
