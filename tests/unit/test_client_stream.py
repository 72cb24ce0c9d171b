"""Stream calls in the clients' call book: partial replies in, items and ``_more``
grants out, and the rules that keep a stream from running twice. Pure: frames and a
fake clock (plain floats)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from madrpc.client_args import AUTO_KEY, call_options
from madrpc.client_core import CallBook, PendingCall
from madrpc.client_stream import StreamState, check_window
from madrpc.config import ClientConfig
from madrpc.errors import CancelledError, RpcError, RpcTimeoutError
from madrpc.jsonrpc import DEFAULT_STREAM_WINDOW, MAX_STREAM_WINDOW

NO_WORKER, OVERLOADED, WORKER_LOST, SHUTTING_DOWN = -32001, -32002, -32005, -32007
INTERNAL_ERROR, JS_EXCEPTION = -32603, -32000


def make_book(**settings: Any) -> CallBook:
    return CallBook(ClientConfig(**settings), random.Random(1))


def streaming(book: CallBook, window: int = 4, now: float = 0.0,
              timeout: float = 10.0) -> PendingCall:
    """A stream call made and sent once at ``now``."""
    call = book.new_call("numbers", [10], timeout, now, stream_window=window)
    book.encode(call, now)
    return call


def items(call_id: Any, *values: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": call_id, "madrpc": {"items": list(values)}})


def final(call_id: Any, count: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": call_id, "result": {"items": count}})


def error(call_id: Any, code: int, message: str = "failed") -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": call_id,
                         "error": {"code": code, "message": message}})


def take_all(book: CallBook, call: PendingCall) -> list[tuple[Any, Any]]:
    """(item, decoded _more frame or None) for every waiting item."""
    taken = []
    while call.stream is not None and call.stream.items:
        item, more = book.take_item(call)
        taken.append((item, None if more is None else orjson.loads(more)))
    return taken


def more(call_id: int, n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "_more", "params": {"id": call_id, "n": n}}


# ================================================================ starting a stream


def test_a_stream_gets_no_automatic_idempotency_key_even_with_idempotency_on() -> None:
    book = make_book(idempotency=True)

    assert book.new_call("m", None, 1.0, 0.0, AUTO_KEY, stream_window=8).idempotency_key is None
    assert book.new_call("m", None, 1.0, 0.0, None, stream_window=8).idempotency_key is None


def test_a_stream_with_an_explicit_idempotency_key_is_refused_and_nothing_is_booked() -> None:
    book = make_book()

    with pytest.raises(ValueError, match="idempotency key"):
        book.new_call("m", None, 1.0, 0.0, "order-1", stream_window=8)
    assert book.calls == {}


@pytest.mark.parametrize("window", [0, -1, MAX_STREAM_WINDOW + 1, True, 2.0, "8"])
def test_a_window_outside_one_to_the_maximum_is_refused_and_nothing_is_booked(
    window: Any,
) -> None:
    book = make_book()

    with pytest.raises(ValueError, match="window"):
        book.new_call("m", None, 1.0, 0.0, stream_window=window)
    assert book.calls == {}


@pytest.mark.parametrize(("window", "expected"), [
    (None, DEFAULT_STREAM_WINDOW), (1, 1), (MAX_STREAM_WINDOW, MAX_STREAM_WINDOW),
])
def test_check_window_gives_the_window_or_the_default(window: Any, expected: int) -> None:
    assert check_window(window) == expected


def test_the_request_asks_for_a_stream_with_its_window_limits_and_no_idempotency_key() -> None:
    book = make_book()
    call = book.new_call("numbers", [10], 10.0, 0.0, cpu_limit_ms=250, max_memory_mb=64,
                         stream_window=16)

    assert orjson.loads(book.encode(call, 2.5)) == {
        "jsonrpc": "2.0", "method": "numbers", "params": [10], "id": call.id,
        "madrpc": {"timeout_ms": 7500, "cpu_limit_ms": 250, "max_memory_mb": 64,
                   "stream": {"window": 16}},
    }


def test_an_ordinary_call_asks_for_no_stream() -> None:
    book = make_book()
    call = book.new_call("add", [1, 2], 10.0, 0.0)

    assert "stream" not in orjson.loads(book.encode(call, 0.0))["madrpc"]
    assert call.stream is None


# ================================================================ items in


def test_partial_replies_keep_their_items_in_order_and_report_the_stream_as_changed() -> None:
    book = make_book()
    call = streaming(book)

    assert book.on_frame(items(call.id, 1, {"two": 2}), 1.0) == [call]
    assert book.on_frame(items(call.id, [3]), 2.0) == [call]
    assert call.stream is not None
    assert (list(call.stream.items), call.stream.received) == ([1, {"two": 2}, [3]], 3)
    assert (call.done, book.calls, book.last_heard) == (False, {call.id: call}, 2.0)


@pytest.mark.parametrize("frame", [
    b'{"jsonrpc": "2.0", "id": 1, "madrpc": {"items": "abc"}}',
    b'{"jsonrpc": "2.0", "id": 1, "madrpc": {"items": {"0": 1}}}',
    b'{"jsonrpc": "2.0", "id": 1, "madrpc": ["items"]}',
    b'{"jsonrpc": "2.0", "id": 1, "madrpc": {"timeout_ms": 5}}',
    b'{"jsonrpc": "2.0", "id": 2, "madrpc": {"items": [1]}}',
    b'{"jsonrpc": "2.0", "id": "1", "madrpc": {"items": [1]}}',
    b'{"jsonrpc": "2.0", "method": "numbers", "id": 1, "madrpc": {"stream": true}}',
])
def test_partial_replies_that_are_malformed_or_for_no_stream_of_ours_are_ignored(
    frame: bytes,
) -> None:
    book = make_book()
    call = streaming(book)

    assert book.on_frame(frame, 1.0) == []
    assert call.stream is not None and call.stream.received == 0


def test_items_for_an_ordinary_call_are_ignored() -> None:
    book = make_book()
    call = book.new_call("add", [1, 2], 10.0, 0.0)
    book.encode(call, 0.0)

    assert book.on_frame(items(call.id, 1, 2), 1.0) == []
    assert (call.done, call.stream) == (False, None)


def test_a_batch_with_items_and_the_end_of_one_stream_reports_it_once() -> None:
    book = make_book()
    call = streaming(book)
    frame = b"[" + items(call.id, "a") + b"," + final(call.id, 1) + b"]"

    assert book.on_frame(frame, 1.0) == [call]
    assert call.done and call.error is None


# ================================================================ items out, credit back


@pytest.mark.parametrize(("window", "every"), [(1, 1), (2, 1), (3, 2), (5, 3), (64, 32)])
def test_a_more_grant_goes_out_each_time_ceil_half_the_window_was_taken(
    window: int, every: int,
) -> None:
    book = make_book()
    call = streaming(book, window=window)
    count = 2 * every + 1
    book.on_frame(items(call.id, *range(count)), 1.0)

    taken = take_all(book, call)

    assert [item for item, _ in taken] == list(range(count))
    grants = [(position, frame) for position, (_, frame) in enumerate(taken, 1) if frame]
    assert grants == [(k, more(call.id, every)) for k in range(every, count + 1, every)]


def test_the_credit_counts_items_taken_across_partial_replies() -> None:
    book = make_book()
    call = streaming(book, window=4)
    book.on_frame(items(call.id, 1), 1.0)
    assert take_all(book, call) == [(1, None)]
    book.on_frame(items(call.id, 2, 3), 2.0)

    assert take_all(book, call) == [(2, more(call.id, 2)), (3, None)]


def test_items_taken_after_the_stream_ended_send_no_grant() -> None:
    book = make_book()
    call = streaming(book, window=2)
    book.on_frame(items(call.id, "a", "b"), 1.0)
    book.on_frame(final(call.id, 2), 2.0)

    assert take_all(book, call) == [("a", None), ("b", None)]


def test_taking_from_an_empty_stream_or_from_an_ordinary_call_is_an_error() -> None:
    book = make_book()
    call = streaming(book)
    ordinary = book.new_call("add", None, 1.0, 0.0)

    with pytest.raises(IndexError):
        book.take_item(call)
    with pytest.raises(ValueError, match="not a stream"):
        book.take_item(ordinary)


def test_the_stream_state_acknowledges_in_steps_of_ceil_half_the_window() -> None:
    state = StreamState(window=3)
    state.add(["a", "b", "c", "d"])

    assert (state.ack_every, [state.take() for _ in range(4)]) == (
        2, [("a", 0), ("b", 2), ("c", 0), ("d", 2)])
    assert (state.received, state.taken_since_ack) == (4, 0)


# ================================================================ the end of a stream


def test_a_stream_ends_well_when_its_final_count_matches_the_items_that_arrived() -> None:
    book = make_book()
    call = streaming(book)
    book.on_frame(items(call.id, 1, 2), 1.0)

    assert book.on_frame(final(call.id, 2), 2.0) == [call]
    assert (call.done, call.error, call.result, book.calls) == (True, None, {"items": 2}, {})
    assert call.stream is not None and list(call.stream.items) == [1, 2]   # still to take


def test_an_empty_stream_ends_well_with_a_count_of_zero() -> None:
    book = make_book()
    call = streaming(book)
    book.on_frame(final(call.id, 0), 1.0)

    assert call.done and call.outcome() == {"items": 0}


@pytest.mark.parametrize("count", [3, 1, 0])
def test_a_final_count_that_differs_from_the_items_that_arrived_fails_the_stream(
    count: int,
) -> None:
    book = make_book()
    call = streaming(book)
    book.on_frame(items(call.id, "a", "b"), 1.0)

    assert book.on_frame(final(call.id, count), 2.0) == [call]
    assert isinstance(call.error, RpcError) and call.error.code == INTERNAL_ERROR
    assert "items were lost" in call.error.message and f"sent {count}" in call.error.message
    assert call.stream is not None and list(call.stream.items) == ["a", "b"]


@pytest.mark.parametrize("result", [[1, 2], None, {"items": "2"}, {"items": True}, {}, 2])
def test_a_final_result_that_is_not_an_item_count_fails_the_stream(result: Any) -> None:
    book = make_book()
    call = streaming(book)
    book.on_frame(orjson.dumps({"jsonrpc": "2.0", "id": call.id, "result": result}), 1.0)

    assert isinstance(call.error, RpcError) and call.error.code == INTERNAL_ERROR


def test_an_error_after_items_ends_the_stream_and_keeps_the_items_to_take() -> None:
    book = make_book()
    call = streaming(book)
    book.on_frame(items(call.id, 1, 2), 1.0)

    assert book.on_frame(error(call.id, JS_EXCEPTION, "boom"), 2.0) == [call]
    assert isinstance(call.error, RpcError) and call.error.code == JS_EXCEPTION
    assert call.stream is not None and list(call.stream.items) == [1, 2]


def test_cancelling_a_stream_ends_it_here_and_asks_the_broker_to_stop_it() -> None:
    book = make_book()
    call = streaming(book)
    book.on_frame(items(call.id, 1), 1.0)

    assert orjson.loads(book.cancel(call) or b"") == {
        "jsonrpc": "2.0", "method": "_cancel", "params": {"id": call.id}}
    assert isinstance(call.error, CancelledError) and book.calls == {}
    assert book.cancel(call) is None


# ================================================================ never run twice


def test_a_stream_is_not_resent_by_timer_and_expires_at_its_deadline() -> None:
    book = make_book(retry_interval_s=1.0, probe_interval_s=100.0)
    call = streaming(book, now=0.0, timeout=10.0)

    assert call.resend_at == call.deadline == 10.0
    assert book.housekeeping(9.999, 0.0) == (False, [], [])
    assert book.housekeeping(10.0, 0.0) == (False, [], [call])
    assert isinstance(call.error, RpcTimeoutError) and book.retries == 0


@pytest.mark.parametrize("code", [NO_WORKER, OVERLOADED, WORKER_LOST, SHUTTING_DOWN])
def test_a_transient_error_before_the_first_item_is_retried_once_and_then_not_by_timer(
    code: int,
) -> None:
    book = make_book(retry_interval_s=1.0, retry_backoff_initial_s=0.1)
    call = streaming(book, now=0.0, timeout=10.0)

    assert book.on_frame(error(call.id, code), 1.0) == []
    assert not call.done and 1.0 <= call.resend_at <= 1.1
    assert book.due_for_resend(call.resend_at) == [call]
    book.encode(call, call.resend_at)
    assert call.resend_at == call.deadline


@pytest.mark.parametrize("code", [NO_WORKER, OVERLOADED, WORKER_LOST, SHUTTING_DOWN])
def test_a_transient_error_after_an_item_arrived_ends_the_stream(code: int) -> None:
    book = make_book()
    call = streaming(book, timeout=10.0)
    book.on_frame(items(call.id, 1), 1.0)

    assert book.on_frame(error(call.id, code), 2.0) == [call]
    assert isinstance(call.error, RpcError) and call.error.code == code
    assert book.retries == 0


def test_a_lost_broker_fails_the_streams_that_had_items_and_resends_the_rest() -> None:
    book = make_book(retry_interval_s=5.0)
    fresh, started = streaming(book, timeout=100.0), streaming(book, timeout=100.0)
    ordinary = book.new_call("add", [1, 2], 100.0, 0.0)
    book.encode(ordinary, 0.0)
    book.on_frame(items(started.id, 1), 0.5)
    book.probe(1.0)

    assert book.housekeeping(6.0, 0.0) == (True, [fresh, ordinary], [started])
    assert isinstance(started.error, RpcError) and started.error.code == WORKER_LOST
    assert "the broker was lost during the stream" in started.error.message
    assert started.stream is not None and list(started.stream.items) == [1]
    assert (book.retries, book.calls) == (2, {fresh.id: fresh, ordinary.id: ordinary})


def test_a_restarted_broker_fails_the_streams_that_had_items_and_resends_the_rest() -> None:
    book = make_book(retry_interval_s=50.0, probe_interval_s=30.0)
    fresh, started = streaming(book, timeout=100.0), streaming(book, timeout=100.0)
    book.on_frame(items(started.id, 1, 2), 0.5)
    for now, run in ((1.0, "run-a"), (2.0, "run-b")):
        book.probe(now)
        book.on_frame(orjson.dumps({"jsonrpc": "2.0", "id": book.probe_id,
                                    "result": {"broker": run, "grace_s": 1}}), now)

    assert book.housekeeping(3.0, 0.0) == (False, [fresh], [started])
    assert isinstance(started.error, RpcError) and started.error.code == WORKER_LOST


# ================================================================ call options


@pytest.mark.parametrize(("timeout", "limits", "expected"), [
    (None, {}, (7.0, {})),
    (2.5, {"cpu_limit_ms": 250, "max_memory_mb": 64.5},
     (2.5, {"cpu_limit_ms": 250, "max_memory_mb": 64.5})),
    (1.0, {"cpu_limit_ms": None}, (1.0, {})),
])
def test_call_options_give_the_timeout_and_the_limits_to_send(
    timeout: float | None, limits: dict[str, Any], expected: Any,
) -> None:
    assert call_options(7.0, timeout, **limits) == expected


@pytest.mark.parametrize(("timeout", "limits", "match"), [
    (0.0, {}, "timeout"), (-1.0, {}, "timeout"),
    (None, {"cpu_limit_ms": 0}, "cpu_limit_ms"), (None, {"max_memory_mb": -5}, "max_memory_mb"),
    (None, {"cpu_limit_ms": True}, "cpu_limit_ms"), (None, {"max_memory_mb": "64"}, "max_memory"),
])
def test_call_options_out_of_range_are_refused(
    timeout: float | None, limits: dict[str, Any], match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        call_options(7.0, timeout, **limits)
