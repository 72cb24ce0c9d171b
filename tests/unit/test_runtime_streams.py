"""Streams in the JavaScript runtime (js/bootstrap.js), driven step by step through a real
V8 isolate (:class:`madrpc.runtime.Runtime`, about a tenth of a second to build) with the
payloads and outbox lines of :mod:`madrpc.engine_protocol`: the producer side (a stream
request pumps its iterator into P lines within its credit) and the consumer side
(``madrpc.stream`` in a script: C, feeds, M acks, X)."""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import orjson
import pytest

from madrpc.engine_payload import (
    Abandon,
    ConsoleLine,
    Items,
    NestedCall,
    OutboxEntry,
    Reply,
    StepEntry,
    StreamAck,
    encode_step_payload,
    parse_outbox,
)
from madrpc.jsonrpc import DEFAULT_STREAM_WINDOW, MAX_STREAM_WINDOW
from madrpc.runtime import Event, EventKind, Runtime

pytestmark = pytest.mark.timeout(30)

STEP_TIMEOUT_S = 10.0

SCRIPT = r"""
let produced = 0;                           // how far `numbers` has run
madrpc.register('produced', () => produced);

madrpc.register('numbers', function* (n) {
  try {
    for (let i = 0; i < n; i++) {
      produced = i + 1;
      console.log('yield', i);
      yield i;
    }
  } finally {
    console.log('numbers closed');
  }
});
madrpc.register('quiet_numbers', function* (n) { for (let i = 0; i < n; i++) yield i; });
madrpc.register('big_strings', function* (n, size) {
  for (let i = 0; i < n; i++) yield String(i % 10).repeat(size);
});
madrpc.register('with_a_call', async function* () {
  yield 'before';
  const answer = await madrpc.call('inner', [1]);
  try {
    yield answer;
  } finally {
    console.log('with_a_call closed');
  }
});
madrpc.register('with_a_timer', async function* () {
  yield 1;
  await new Promise((resolve) => setTimeout(resolve, 1));
  yield 2;
});
madrpc.register('returns_a_generator', async () => {
  await null;
  return (function* () { yield 'a'; yield 'b'; })();
});
madrpc.register('breaks', function* () { yield 1; yield 2; throw new Error('broke midway'); });
madrpc.register('unserializable', function* () {
  try { yield 1; yield 2n; yield 3; } finally { console.log('unserializable closed'); }
});
madrpc.register('spins', function* (ms) {
  yield 'rested';
  const until = Date.now() + ms;
  while (Date.now() < until) { /* busy, between two items */ }
  yield 'spun';
});
let openGate;
const gate = new Promise((resolve) => { openGate = resolve; });
madrpc.register('behind_a_gate', async function* () {
  await gate;
  yield 1;
  console.log('after the gate');
  yield 2;
});
madrpc.register('open_gate', () => { openGate(); return 'opened'; });
madrpc.register('array', () => ['x', 'y', 'z']);
madrpc.register('value', (v) => v);

madrpc.register('consume', async (method, args, options) => {
  const items = [];
  for await (const item of madrpc.stream(method, args, options)) items.push(item);
  return items;
});
madrpc.register('consume_until', async (stop) => {
  const items = [];
  for await (const item of madrpc.stream('numbers', [100])) {
    if (item === stop) break;
    items.push(item);
  }
  return items;
});
madrpc.register('consume_carefully', async () => {
  const items = [];
  try {
    for await (const item of madrpc.stream('numbers', [100])) items.push(item);
  } catch (e) {
    console.log('caught', e.code, e.message, JSON.stringify(items));
    throw e;
  }
  return items;
});
"""


class Isolate:
    """A Runtime with SCRIPT loaded, run one crossing at a time."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.runtime = Runtime(SCRIPT, "streams.js", self.events.put)
        self.notified = 0

    def step(self, **members: Any) -> list[OutboxEntry]:
        """One step with these payload members (encode_step_payload's); its outbox."""
        self.runtime.step(encode_step_payload(**members))
        return self._outcome()

    def step_watched(self, **members: Any) -> tuple[list[OutboxEntry], set[tuple[int, bool]]]:
        """A step, and the (request key, CPU-bound) pairs its marker showed while it ran:
        what the engine's watchdog would read."""
        self.runtime.step(encode_step_payload(**members))
        seen: set[tuple[int, bool]] = set()
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while time.monotonic() < deadline:
            _, key, _, cpu_bound = self.runtime.marker()
            seen.add((key, cpu_bound))
            try:
                event = self.events.get(timeout=0.001)
            except queue.Empty:
                continue
            if self._record(event):
                return list(parse_outbox(event.data)), seen
        raise AssertionError("the step never finished")

    def flush_when_notified(self) -> list[OutboxEntry]:
        """Wait until a timer asks for a crossing, then flush."""
        while self.notified == 0:
            self._record(self.events.get(timeout=STEP_TIMEOUT_S))
        self.notified -= 1
        self.runtime.flush()
        return self._outcome()

    def _outcome(self) -> list[OutboxEntry]:
        while True:
            event = self.events.get(timeout=STEP_TIMEOUT_S)
            if self._record(event):
                return list(parse_outbox(event.data))

    def _record(self, event: Event) -> bool:
        if event.kind == EventKind.NOTIFY:
            self.notified += 1
            return False
        assert event.kind == EventKind.DONE, event
        return True


@pytest.fixture
def isolate() -> Iterator[Isolate]:
    engine = Isolate()
    try:
        yield engine
    finally:
        engine.runtime.close()


def request(
    local: int, method: str, params: Any = None, stream: Any = None, cpu_limit_ms: float = 60_000,
) -> StepEntry:
    """A start entry for request ``local`` (stream: the ``madrpc.stream`` option), due in a
    minute."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": local}
    if params is not None:
        body["params"] = params
    if stream is not None:
        body["madrpc"] = {"stream": stream}
    return StepEntry(local, time.time() * 1000 + 60_000, cpu_limit_ms, 0, orjson.dumps(body))


def items(entries: list[OutboxEntry], local: int = 1) -> list[Any]:
    """The items of request ``local``'s P lines, in order (each line's count checked)."""
    found: list[Any] = []
    for entry in entries:
        if isinstance(entry, Items) and entry.local == local:
            batch = orjson.loads(entry.items)
            assert len(batch) == entry.count
            found += batch
    return found


def replies(entries: list[OutboxEntry], local: int = 1) -> list[Any]:
    """Request ``local``'s replies, decoded (``{"result": ..}`` or ``{"error": ..}``)."""
    return [orjson.loads(b"{" + entry.fragment + b"}") for entry in entries
            if isinstance(entry, Reply) and entry.local == local]


def logs(entries: list[OutboxEntry]) -> list[tuple[int, str]]:
    """(owner, text) of the console lines."""
    return [(entry.owner, entry.decode()[3]) for entry in entries
            if isinstance(entry, ConsoleLine)]


def kinds(entries: list[OutboxEntry]) -> list[str]:
    return [type(entry).__name__ for entry in entries]


def produced(isolate: Isolate) -> int:
    return int(replies(isolate.step(starts=[request(99, "produced")]), 99)[0]["result"])


# ---------------------------------------------------------------- stream mode: the producer


def test_stream_mode_sends_the_items_in_p_lines_then_the_count(isolate: Isolate) -> None:
    out = isolate.step(starts=[request(1, "quiet_numbers", [5], True)])

    assert out == [Items(1, 5, b"[0,1,2,3,4]"), Reply(1, b'"result":{"items":5}')]


def test_a_stream_stops_at_its_window_and_sends_exactly_what_a_grant_allows(
    isolate: Isolate,
) -> None:
    first = isolate.step(starts=[request(1, "numbers", [1000], {"window": 4})])
    assert items(first) == [0, 1, 2, 3]
    assert replies(first) == []
    assert produced(isolate) == 4, "the generator must stay suspended at credit 0"
    assert isolate.step() == []

    granted = isolate.step(grants=[(1, 3)])

    assert items(granted) == [4, 5, 6]
    assert replies(granted) == []
    assert produced(isolate) == 7
    # the generator's code ran as request 1, in the grant's step too
    assert logs(granted) == [(1, "yield 4"), (1, "yield 5"), (1, "yield 6")]


def test_generator_code_run_by_a_grant_is_watched_as_its_request(isolate: Isolate) -> None:
    isolate.step(starts=[request(1, "spins", [300], {"window": 1}, cpu_limit_ms=5_000)])

    out, seen = isolate.step_watched(grants=[(1, 1)])

    assert items(out) == ["spun"]
    assert (1, True) in seen, "the watchdog must see request 1 and its CPU limit"


def test_a_stream_ends_with_its_item_count_after_its_last_p_line(isolate: Isolate) -> None:
    first = isolate.step(starts=[request(1, "quiet_numbers", [6], {"window": 4})])
    last = isolate.step(grants=[(1, 4)])

    assert items(first) == [0, 1, 2, 3]
    assert items(last) == [4, 5]
    assert kinds(last) == ["Items", "Reply"]
    assert replies(last) == [{"result": {"items": 6}}]


def test_grants_come_after_starts_in_one_step(isolate: Isolate) -> None:
    out = isolate.step(starts=[request(1, "quiet_numbers", [100], {"window": 2})],
                       grants=[(1, 3)])

    assert items(out) == [0, 1, 2, 3, 4]


def test_a_window_of_true_is_the_default_window(isolate: Isolate) -> None:
    out = isolate.step(starts=[request(1, "quiet_numbers", [1000], True)])

    assert items(out) == list(range(DEFAULT_STREAM_WINDOW))


def test_an_async_generator_streams_across_a_nested_call_it_awaits(isolate: Isolate) -> None:
    first = isolate.step(starts=[request(1, "with_a_call", None, True)])
    call = next(entry for entry in first if isinstance(entry, NestedCall))
    assert items(first) == ["before"]
    assert call.owner == 1

    second = isolate.step(settles=[(call.js_call, b'"result":"answer"')])

    assert items(second) == ["answer"]
    assert replies(second) == [{"result": {"items": 2}}]
    assert logs(second) == [(1, "with_a_call closed")]


def test_an_async_generator_streams_across_a_timer(isolate: Isolate) -> None:
    first = isolate.step(starts=[request(1, "with_a_timer", None, True)])
    later = isolate.flush_when_notified()

    assert items(first) == [1]
    assert replies(first) == []
    assert items(later) == [2]
    assert replies(later) == [{"result": {"items": 2}}]


def test_a_stream_resumed_by_another_requests_code_is_pumped_as_its_own_request(
    isolate: Isolate,
) -> None:
    isolate.step(starts=[request(1, "behind_a_gate", None, True)])

    out = isolate.step(starts=[request(2, "open_gate")])

    assert replies(out, 2) == [{"result": "opened"}]
    assert items(out, 1) == [1, 2]
    assert logs(out) == [(1, "after the gate")], "the pump runs the generator as request 1"
    assert replies(out, 1) == [{"result": {"items": 2}}]


def test_a_generator_that_throws_midway_sends_its_items_then_the_error(
    isolate: Isolate,
) -> None:
    out = isolate.step(starts=[request(1, "breaks", None, True)])

    assert kinds(out) == ["Items", "Reply"]
    assert items(out) == [1, 2]
    [reply] = replies(out)
    assert reply["error"]["code"] == -32000
    assert reply["error"]["message"] == "Error: broke midway"


def test_an_item_that_cannot_be_serialized_ends_the_stream_and_closes_the_generator(
    isolate: Isolate,
) -> None:
    out = isolate.step(starts=[request(1, "unserializable", None, True)])

    assert items(out) == [1]
    [reply] = replies(out)
    assert reply["error"]["code"] == -32009
    assert reply["error"]["data"] == {"method": "unserializable"}
    assert logs(out) == [(1, "unserializable closed")]


def test_an_array_in_stream_mode_streams_its_elements(isolate: Isolate) -> None:
    out = isolate.step(starts=[request(1, "array", None, True)])

    assert items(out) == ["x", "y", "z"]
    assert replies(out) == [{"result": {"items": 3}}]


@pytest.mark.parametrize(("value", "type_name"), [
    (5, "number"), ({"a": 1}, "object"), ("abc", "string"), (None, "null"),
])
def test_stream_mode_of_a_value_that_is_not_iterable_is_an_invalid_request(
    isolate: Isolate, value: Any, type_name: str,
) -> None:
    out = isolate.step(starts=[request(1, "value", [value], True)])

    assert items(out) == []
    assert replies(out) == [{"error": {
        "code": -32600,
        "message": f"Invalid Request: 'value' returned {type_name}, not a generator or an "
                   "iterable; call it without stream",
    }}]


def test_plain_mode_of_a_generator_returns_the_array_of_its_items(isolate: Isolate) -> None:
    out = isolate.step(starts=[request(1, "quiet_numbers", [5]),
                               request(2, "returns_a_generator")])

    assert items(out, 1) == [] and items(out, 2) == []
    assert replies(out, 1) == [{"result": [0, 1, 2, 3, 4]}]
    assert replies(out, 2) == [{"result": ["a", "b"]}]


def test_plain_mode_of_an_async_generator_collects_across_its_awaits(isolate: Isolate) -> None:
    first = isolate.step(starts=[request(1, "with_a_call")])
    call = next(entry for entry in first if isinstance(entry, NestedCall))
    second = isolate.step(settles=[(call.js_call, b'"result":42')])

    assert replies(first) == []
    assert replies(second) == [{"result": ["before", 42]}]


def test_cancelling_a_suspended_stream_runs_its_finally_as_the_request_and_never_answers(
    isolate: Isolate,
) -> None:
    isolate.step(starts=[request(1, "numbers", [1000], {"window": 2})])

    out = isolate.step(cancels=[1])

    assert logs(out) == [(1, "numbers closed")]
    assert items(out) == [] and replies(out) == []
    assert isolate.step(grants=[(1, 10)]) == [], "a cancelled stream is forgotten"


def test_cancelling_a_stream_awaiting_a_nested_call_closes_its_generator(
    isolate: Isolate,
) -> None:
    first = isolate.step(starts=[request(1, "with_a_call", None, True)])
    call = next(entry for entry in first if isinstance(entry, NestedCall))

    out = isolate.step(cancels=[1])
    late = isolate.step(settles=[(call.js_call, b'"result":"too late"')])

    assert replies(out) == [] and items(out) == []
    assert late == []


def test_a_stream_of_big_items_is_cut_into_p_lines_of_about_64_kib(isolate: Isolate) -> None:
    size = 10_000
    out = isolate.step(starts=[request(1, "big_strings", [40, size], True)])

    lines = [entry for entry in out if isinstance(entry, Items)]
    assert len(lines) >= 5
    assert all(len(line.items) < 65_536 + size + 3 for line in lines)
    assert sum(line.count for line in lines) == 40
    assert items(out) == [str(i % 10) * size for i in range(40)]
    assert replies(out) == [{"result": {"items": 40}}]


def test_a_million_items_stream_in_bounded_lines_and_wait_for_credit_to_end(
    isolate: Isolate,
) -> None:
    count = 1_000_000
    out = isolate.step(starts=[request(1, "quiet_numbers", [count], {"window": count})])

    lines = [entry for entry in out if isinstance(entry, Items)]
    assert max(len(line.items) for line in lines) < 65_536 + 16
    assert sum(line.count for line in lines) == count
    assert orjson.loads(lines[-1].items)[-1] == count - 1
    assert replies(out) == [], "at credit 0 the generator is not asked whether it is done"
    assert isolate.step(grants=[(1, 1)]) == [Reply(1, b'"result":{"items":1000000}')]


# ---------------------------------------------------------------- madrpc.stream: the consumer


def nested_call(entries: list[OutboxEntry]) -> NestedCall:
    [call] = [entry for entry in entries if isinstance(entry, NestedCall)]
    return call


def test_madrpc_stream_makes_a_stream_call_without_an_idempotency_key(
    isolate: Isolate,
) -> None:
    call = nested_call(isolate.step(starts=[
        request(1, "consume", ["numbers", [3], {"window": 6, "timeout_ms": 500}]),
    ]))

    body = orjson.loads(call.body)
    assert call.owner == 1
    assert body["method"] == "numbers" and body["params"] == [3]
    assert body["madrpc"] == {"stream": {"window": 6}, "timeout_ms": 500}
    assert "id" in body, "the broker refuses a stream without an id"


def test_madrpc_stream_defaults_to_the_default_window(isolate: Isolate) -> None:
    call = nested_call(isolate.step(starts=[request(1, "consume", ["numbers", [3]])]))

    assert orjson.loads(call.body)["madrpc"] == {"stream": {"window": DEFAULT_STREAM_WINDOW}}


def test_fed_items_are_yielded_acknowledged_every_half_window_and_the_settle_ends_the_loop(
    isolate: Isolate,
) -> None:
    call = nested_call(isolate.step(starts=[request(1, "consume", ["numbers", [7],
                                                                   {"window": 5}])]))
    js_call = call.js_call

    fed = isolate.step(feeds=[(js_call, b"[0,1,2,3]")])
    assert [e for e in fed if isinstance(e, StreamAck)] == [StreamAck(js_call, 3)]
    assert replies(fed) == []

    more = isolate.step(feeds=[(js_call, b"[4,5]")])
    assert [e for e in more if isinstance(e, StreamAck)] == [StreamAck(js_call, 3)]

    end = isolate.step(feeds=[(js_call, b"[6]")],
                       settles=[(js_call, b'"result":{"items":7}')])
    assert replies(end) == [{"result": [0, 1, 2, 3, 4, 5, 6]}]
    assert not any(isinstance(e, StreamAck) for e in end), "no ack once the stream ended"


def test_leaving_the_loop_early_abandons_the_nested_stream(isolate: Isolate) -> None:
    js_call = nested_call(isolate.step(starts=[request(1, "consume_until", [2])])).js_call

    out = isolate.step(feeds=[(js_call, b"[0,1,2,3]")])

    assert Abandon(js_call) in out
    assert replies(out) == [{"result": [0, 1]}]
    assert isolate.step(feeds=[(js_call, b"[4]")],
                        settles=[(js_call, b'"result":{"items":5}')]) == []


def test_an_error_settle_rejects_after_the_queued_items_were_taken(isolate: Isolate) -> None:
    js_call = nested_call(isolate.step(starts=[request(1, "consume_carefully")])).js_call

    out = isolate.step(feeds=[(js_call, b"[0,1]")],
                       settles=[(js_call, b'"error":{"code":-32000,"message":"Error: boom"}')])

    assert logs(out) == [(1, "caught -32000 Error: boom [0,1]")]
    assert replies(out) == [{"error": {"code": -32000, "message": "Error: boom"}}]


def test_cancelling_the_owner_rejects_its_pending_next_with_cancelled(isolate: Isolate) -> None:
    isolate.step(starts=[request(1, "consume_carefully")])

    out = isolate.step(cancels=[1])

    assert logs(out) == [(1, "caught -32011 Cancelled: the request was cancelled []")]
    assert replies(out) == []
    assert not any(isinstance(e, Abandon) for e in out)


@pytest.mark.parametrize("window", [0, 1.5, MAX_STREAM_WINDOW + 1, "8"])
def test_madrpc_stream_refuses_a_bad_window(isolate: Isolate, window: Any) -> None:
    out = isolate.step(starts=[request(1, "consume", ["numbers", [3], {"window": window}])])

    [reply] = replies(out)
    assert reply["error"]["message"] == (
        f"TypeError: madrpc.stream: options.window must be an integer in [1, {MAX_STREAM_WINDOW}]"
    )
    assert not any(isinstance(e, NestedCall) for e in out)


# ---------------------------------------------------------------- constants shared with Python


def bootstrap_constant(name: str) -> int:
    source = (resources.files("madrpc") / "js" / "bootstrap.js").read_text(encoding="utf-8")
    match = re.search(rf"^\s*const {name} = (\d+);", source, re.MULTILINE)
    assert match is not None, f"bootstrap.js defines no constant {name}"
    return int(match[1])


def test_the_runtime_uses_the_python_stream_windows() -> None:
    assert bootstrap_constant("DEFAULT_STREAM_WINDOW") == DEFAULT_STREAM_WINDOW
    assert bootstrap_constant("MAX_STREAM_WINDOW") == MAX_STREAM_WINDOW


def test_p_lines_are_cut_at_64_kib() -> None:
    assert bootstrap_constant("STREAM_CHUNK_BYTES") == 65_536
