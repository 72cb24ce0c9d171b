"""madrpc.affinity: keeping a thread (and what it starts) on one CPU, and the CPU lists an
engine is given back. Each case pins a thread of its own, never the test's."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from madrpc.affinity import allow_cpus, cpu_list, parse_cpu_list, pin_to_cpu, supported
from madrpc.errors import ConfigError

pytestmark = pytest.mark.skipif(not supported(), reason="needs sched_setaffinity")


def in_thread(work: Callable[[], Any]) -> Any:
    """``work()``'s value (or exception), run in a thread that ends after it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_pinned_thread_and_the_threads_it_starts_run_on_that_cpu_only() -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    cpu = min(allowed)

    def work() -> tuple[frozenset[int], set[int], set[int]]:
        before = pin_to_cpu(cpu)
        return before, os.sched_getaffinity(0), in_thread(lambda: os.sched_getaffinity(0))

    before, own, child = in_thread(work)
    assert before == allowed
    assert own == child == {cpu}
    assert os.sched_getaffinity(0) == allowed   # the test's own thread is untouched


def test_allow_cpus_gives_a_pinned_thread_its_cpus_back() -> None:
    allowed = frozenset(os.sched_getaffinity(0))

    def work() -> set[int]:
        pin_to_cpu(min(allowed))
        allow_cpus(allowed)
        return os.sched_getaffinity(0)

    assert in_thread(work) == allowed


def test_a_cpu_this_process_may_not_use_is_a_config_error() -> None:
    outside = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ConfigError, match=f"--cpu {outside}: this process may only use CPUs"):
        in_thread(lambda: pin_to_cpu(outside))


def test_cpu_lists_round_trip_and_refuse_anything_else() -> None:
    assert cpu_list({5, 0, 1}) == "0,1,5"
    assert parse_cpu_list("0,1,5") == {0, 1, 5}
    for text in ("", "a", "1,,2", "-1"):
        with pytest.raises(ValueError):
            parse_cpu_list(text)
