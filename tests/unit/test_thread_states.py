"""Pinned thread states (madrpc.thread_states) with real V8 isolates in this process.

The interpreter's thread states are counted through the C API: an isolate thread that
is pinned keeps one state between its callbacks; one that is not has a state only while
a callback runs.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from madrpc import thread_states
from madrpc.runtime import Event, EventKind, Runtime

SCRIPT = "madrpc.register('add', (a, b) => a + b);"
STEPS = 20
SETTLE_TIMEOUT_S = 10.0

_api = ctypes.pythonapi
_api.PyInterpreterState_Get.restype = ctypes.c_void_p
_api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
_api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
_api.PyThreadState_Next.restype = ctypes.c_void_p
_api.PyThreadState_Next.argtypes = [ctypes.c_void_p]


def thread_state_count() -> int:
    state = _api.PyInterpreterState_ThreadHead(_api.PyInterpreterState_Get())
    count = 0
    while state:
        count += 1
        state = _api.PyThreadState_Next(state)
    return count


def settled_count(expected: int) -> int:
    """The count once it reaches ``expected`` (a callback may still be returning), or
    whatever it is when the wait runs out."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (count := thread_state_count()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


class Steps:
    """A runtime and a way to run one step on it and wait for its outcome."""

    def __init__(self, pin_thread: bool) -> None:
        self._done = threading.Event()
        self._events: list[Event] = []
        self.runtime = Runtime(SCRIPT, "add.js", self._on_event, pin_thread=pin_thread)

    def _on_event(self, event: Event) -> None:
        self._events.append(event)
        self._done.set()

    def run(self, a: int) -> None:
        self._done.clear()
        body = orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [a, 1], "id": a})
        self.runtime.step(b'{"r":[[%d,9007199254740991,1000,0,%b]]}' % (a, body))
        assert self._done.wait(10), "the step never finished"
        assert self._events[-1] == Event(EventKind.DONE, b'R %d "result":%d' % (a, a + 1))


@pytest.fixture
def baseline() -> Iterator[int]:
    yield thread_state_count()


def test_a_pinned_context_keeps_one_thread_state_for_all_its_steps(baseline: int) -> None:
    steps = Steps(pin_thread=True)
    try:
        assert settled_count(baseline + 1) == baseline + 1, "not pinned by its setup"
        counts = []
        for a in range(STEPS):
            steps.run(a)
            counts.append(thread_state_count())
    finally:
        steps.runtime.close()
    assert counts == [baseline + 1] * STEPS


def test_an_unpinned_context_has_a_thread_state_only_while_a_callback_runs(
    baseline: int,
) -> None:
    steps = Steps(pin_thread=False)
    try:
        counts = []
        for a in range(3):
            steps.run(a)
            counts.append(settled_count(baseline))
    finally:
        steps.runtime.close()
    assert counts == [baseline] * 3


def test_past_the_limit_contexts_run_unpinned(
    baseline: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(thread_states, "MAX_PINNED_THREADS", thread_states.pinned_threads())
    steps = Steps(pin_thread=True)
    try:
        steps.run(1)
        count = settled_count(baseline)
    finally:
        steps.runtime.close()
    assert count == baseline
