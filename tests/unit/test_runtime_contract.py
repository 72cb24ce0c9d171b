"""The V8 runtime's pure helper, and its contract with the installed mini-racer.

The contract tests load V8 in this process (about a tenth of a second): the runtime
sits below mini-racer's public API, on its native library and its private type numbers,
so an upgrade of mini-racer that changes them must fail here, in seconds, with a message
that says what to update.
"""

from __future__ import annotations

import threading

import orjson
import py_mini_racer._dll as mini_racer_dll
import pytest
from py_mini_racer._objects import _MiniRacerTypes

from madrpc.errors import ScriptError
from madrpc.runtime import MINI_RACER_TYPES, Event, EventKind, Runtime
from madrpc.script_errors import describe_script_error

# ---------------------------------------------------------------- describe_script_error


def test_a_syntax_error_is_reported_as_file_line_column_with_the_code_and_a_caret() -> None:
    message = "/s/a.js:1: SyntaxError: Unexpected token ';'\nlet x = ;\n        ^\n\nmore"

    assert describe_script_error(message, "/s/a.js") == (
        "/s/a.js:1:9: SyntaxError: Unexpected token ';'\nlet x = ;\n        ^"
    )


def test_an_error_at_the_end_of_input_points_at_the_end_of_the_last_line() -> None:
    source = "function f() {\n  return 1;\n"
    message = "/s/a.js:5: SyntaxError: Unexpected end of input\n\n^\n"

    assert describe_script_error(message, "/s/a.js", source) == (
        "/s/a.js:2:12: SyntaxError: Unexpected end of input\n  return 1;\n           ^"
    )


def test_an_error_without_a_caret_is_reported_as_file_and_line() -> None:
    assert describe_script_error("/s/a.js:3: Error: boom", "/s/a.js") == "/s/a.js:3: Error: boom"


def test_a_message_without_a_location_is_prefixed_with_the_file() -> None:
    assert describe_script_error("Error: boom\nmore", "/s/a.js") == "/s/a.js: Error: boom"
    assert describe_script_error("", "/s/a.js") == "/s/a.js: script failed to load"


# ---------------------------------------------------------------- the mini-racer contract


@pytest.mark.parametrize("name", sorted(MINI_RACER_TYPES))
def test_the_runtime_uses_the_installed_mini_racers_type_numbers(name: str) -> None:
    installed = getattr(_MiniRacerTypes, name, None)

    assert installed == MINI_RACER_TYPES[name], (
        f"mini-racer's type {name!r} is {installed!r} in the installed version, the runtime "
        f"expects {MINI_RACER_TYPES[name]}: update madrpc.runtime.MINI_RACER_TYPES"
    )


def test_the_native_entry_points_the_runtime_calls_exist() -> None:
    assert callable(mini_racer_dll.init_mini_racer) and callable(mini_racer_dll.mr_callback_func)


def test_one_step_runs_a_registered_function_and_returns_its_outbox() -> None:
    events: list[Event] = []
    done = threading.Event()

    def on_event(event: Event) -> None:
        events.append(event)
        done.set()

    runtime = Runtime("madrpc.register('add', (a, b) => a + b);", "add.js", on_event)
    try:
        assert runtime.methods == ["add"]
        body = orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1})
        runtime.step(b'{"r":[[1,9007199254740991,1000,0,%b]]}' % body)
        assert done.wait(10), "the step never finished"
    finally:
        runtime.close()
    assert events == [Event(EventKind.DONE, b'R 1 "result":3')]


def test_a_script_that_fails_to_load_raises_script_error_naming_the_line() -> None:
    with pytest.raises(ScriptError, match=r"bad\.js:2:"):
        Runtime("madrpc.register('a', () => 1);\nlet x = ;\n", "bad.js", lambda event: None)


def test_the_marker_is_never_read_half_written_while_requests_switch() -> None:
    """The watchdog reads the marker while JavaScript switches between requests; a read
    that overlapped a switch must not show one request's key with another's budget."""
    done = threading.Event()
    source = """madrpc.register('hop', async (n) => {
        for (let i = 0; i < n; i++) await null;   // each continuation enters the request
        return n; });"""
    runtime = Runtime(source, "hop.js", lambda event: done.set())
    torn = []
    try:
        entries = [b'[%d,9007199254740991,60000,0,{"jsonrpc":"2.0","method":"hop",'
                   b'"params":[200000],"id":%d}]' % (key, key) for key in (1, 2, 3)]
        runtime.step(b'{"r":[%b]}' % b",".join(entries))
        while not done.is_set():
            sequence, key, budget_ms, _ = runtime.marker()
            if key and budget_ms < 1:   # every budget is at least 1 ms
                torn.append((sequence, key, budget_ms))
        assert done.wait(30)
    finally:
        runtime.close()
    assert torn == []
