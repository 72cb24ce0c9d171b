"""madrpc.register in a real V8 isolate (:class:`madrpc.runtime.Runtime`): a name
registered twice is an error that names both places, unless the script passes
``{replace: true}``."""

from __future__ import annotations

import queue
import re
import time
from typing import Any

import orjson
import pytest

from madrpc.engine_payload import Reply, StepEntry, encode_step_payload, parse_outbox
from madrpc.errors import ScriptError
from madrpc.runtime import Event, EventKind, Runtime

pytestmark = pytest.mark.timeout(30)


def call(runtime: Runtime, events: queue.Queue[Event], method: str, *params: Any) -> Any:
    """The reply ({"result": ..} or {"error": ..}) of one call of ``method``."""
    body = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1})
    runtime.step(encode_step_payload(
        starts=[StepEntry(1, time.time() * 1000 + 60_000, 60_000, 0, body)]))
    while True:
        event = events.get(timeout=10)
        assert event.kind == EventKind.DONE, event
        for entry in parse_outbox(event.data):
            if isinstance(entry, Reply):
                return orjson.loads(b"{" + entry.fragment + b"}")


def load(source: str, path: str = "dup.js") -> tuple[Runtime, queue.Queue[Event]]:
    events: queue.Queue[Event] = queue.Queue()
    return Runtime(source, path, events.put), events


def test_registering_a_name_twice_fails_at_load_naming_both_places() -> None:
    source = (
        "// the first one\n"
        "madrpc.register('add', (a, b) => a + b);\n"
        "madrpc.register('sub', (a, b) => a - b);\n"
        "\n"
        "madrpc.register('add', (a, b) => a + b + 0);\n"
    )

    with pytest.raises(ScriptError) as info:
        load(source)

    message = str(info.value)
    assert re.search(r'madrpc\.register: "add" is already registered at \S*dup\.js:2:8 '
                     r"\(again at \S*dup\.js:5:8\); pass \{replace: true\} to replace it",
                     message), message
    assert message.startswith("dup.js:5:")   # the load error points at the second one


def test_the_places_are_the_scripts_lines_also_from_inside_its_functions() -> None:
    source = (
        "function setUp() {\n"
        "  madrpc.register('twice', () => 1);\n"
        "}\n"
        "setUp();\n"
        "const again = () => madrpc.register('twice', () => 2);\n"
        "again();\n"
    )

    with pytest.raises(ScriptError, match=r"registered at \S*dup\.js:2:\d+ "
                                          r"\(again at \S*dup\.js:5:\d+\)"):
        load(source)


def test_replace_true_replaces_the_function_and_the_second_one_answers() -> None:
    runtime, events = load(
        "madrpc.register('add', (a, b) => a + b);\n"
        "madrpc.register('add', (a, b) => 10 * (a + b), {replace: true});\n"
    )
    try:
        assert runtime.methods == ["add"]
        assert call(runtime, events, "add", 1, 2) == {"result": 30}
    finally:
        runtime.close()


def test_replace_true_for_a_new_name_registers_it() -> None:
    runtime, events = load("madrpc.register('one', () => 1, {replace: true});\n")
    try:
        assert call(runtime, events, "one") == {"result": 1}
    finally:
        runtime.close()


def test_options_that_are_not_an_object_are_a_type_error() -> None:
    with pytest.raises(ScriptError, match=r"TypeError: madrpc\.register: options must be an"):
        load("madrpc.register('a', () => 1);\nmadrpc.register('a', () => 2, true);\n")


def test_a_function_that_registers_a_taken_name_while_it_runs_gets_the_error() -> None:
    runtime, events = load(
        "madrpc.register('add', (a, b) => a + b);\n"
        "madrpc.register('steal', () => {\n"
        "  madrpc.register('add', () => 'stolen');\n"
        "});\n"
    )
    try:
        reply = call(runtime, events, "steal")
        assert call(runtime, events, "add", 1, 2) == {"result": 3}
    finally:
        runtime.close()
    message = reply["error"]["message"]
    assert re.search(r'"add" is already registered at \S*dup\.js:1:\d+ '
                     r"\(again at \S*dup\.js:3:10\)", message), message


def test_distinct_names_register_as_before() -> None:
    runtime, _ = load("for (const n of ['a', 'b', 'c']) madrpc.register(n, () => n);\n"
                      "madrpc.register('d', () => 'd', undefined);\n"
                      "madrpc.register('e', () => 'e', {});\n")
    try:
        assert runtime.methods == ["a", "b", "c", "d", "e"]
    finally:
        runtime.close()
