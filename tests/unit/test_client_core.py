"""The Python clients' call book and retry policy, driven by a fake clock (plain floats)
and a seeded (or rigged) random generator for the back-off jitter."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from madrpc.client_args import AUTO_KEY, check_params, client_config
from madrpc.client_batches import batch_frames
from madrpc.client_core import RETRYABLE_CODES, CallBook, PendingCall
from madrpc.config import ClientConfig
from madrpc.errors import JSError, MessageTooLargeError, RpcError, RpcTimeoutError, TransportError

NO_WORKER, OVERLOADED, TIMEOUT, WORKER_LOST, SHUTTING_DOWN = -32001, -32002, -32003, -32005, -32007
CLIENT_TIMEOUT = -32013


class Highest(random.Random):
    """A generator whose 'jitter' is always the largest delay allowed."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_book(rng: random.Random | None = None, **settings: Any) -> CallBook:
    return CallBook(ClientConfig(**settings), rng or random.Random(1))


def sent(book: CallBook, now: float = 0.0, timeout: float = 10.0) -> PendingCall:
    """A call made and sent once at ``now``."""
    call = book.new_call("add", [1, 2], timeout, now)
    book.encode(call, now)
    return call


def result(call_id: Any, value: Any = 3) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "result": value, "id": call_id})


def error(call_id: Any, code: int, message: str = "failed", data: Any = None) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": call_id,
                         "error": {"code": code, "message": message, "data": data}})


def answer_probe(book: CallBook, now: float, broker: str = "run-a", **extra: Any) -> None:
    """Send a probe at ``now`` and feed back the broker's answer at once."""
    book.probe(now)
    book.on_frame(result(book.probe_id, {"broker": broker, **extra}), now)


# ================================================================ helpers


@pytest.mark.parametrize(("params", "expected"), [
    ([1], [1]), ({"a": 1}, {"a": 1}), (None, None), ((1, 2), [1, 2]),
])
def test_check_params_keeps_lists_dicts_and_none_and_turns_a_tuple_into_a_list(
    params: Any, expected: Any,
) -> None:
    assert check_params(params) == expected


@pytest.mark.parametrize("params", ["ab", 3, {1, 2}])
def test_check_params_refuses_anything_else_with_a_type_error(params: Any) -> None:
    with pytest.raises(TypeError, match=type(params).__name__):
        check_params(params)


def test_client_config_uses_an_explicit_config_or_builds_one_from_endpoint_and_timeout(
) -> None:
    config = ClientConfig(endpoint="tcp://a:1", timeout_s=3.0)

    assert client_config("tcp://b:2", 9.0, config) is config
    assert client_config("tcp://b:2", 9.0, None) == ClientConfig("tcp://b:2", timeout_s=9.0)
    assert client_config("tcp://b:2", None, None) == ClientConfig("tcp://b:2")


def test_the_retryable_codes_are_the_transient_ones_except_timeout() -> None:
    assert {-32001, -32002, -32005, -32007} == RETRYABLE_CODES


# ================================================================ new_call


def test_calls_get_increasing_ids_and_are_kept_in_the_book() -> None:
    book = make_book()
    first, second = book.new_call("m", None, 1.0, 0.0), book.new_call("m", None, 1.0, 0.0)

    assert (first.id, second.id, book.calls) == (1, 2, {1: first, 2: second})


def test_an_automatic_idempotency_key_is_the_clients_prefix_and_the_call_id() -> None:
    book, other = make_book(), make_book()
    keys = [book.new_call("m", None, 1.0, 0.0, AUTO_KEY).idempotency_key for _ in range(2)]
    other_key = other.new_call("m", None, 1.0, 0.0).idempotency_key
    assert keys[0] is not None and other_key is not None
    prefix = keys[0].removesuffix("-1")

    assert keys == [f"{prefix}-1", f"{prefix}-2"] and len(prefix) == 12
    assert other_key != keys[0]


@pytest.mark.parametrize("key", ["order-42", None])
def test_an_explicit_idempotency_key_or_none_is_kept_as_given(key: str | None) -> None:
    assert make_book().new_call("m", None, 1.0, 0.0, key).idempotency_key == key


def test_with_idempotency_off_calls_get_no_automatic_key_but_keep_an_explicit_one() -> None:
    book = make_book(idempotency=False)

    assert book.new_call("m", None, 1.0, 0.0).idempotency_key is None
    assert book.new_call("m", None, 1.0, 0.0, "k").idempotency_key == "k"


def test_a_call_without_a_timeout_gets_the_configured_one() -> None:
    call = make_book(timeout_s=7.0).new_call("m", None, None, 100.0)

    assert (call.timeout_s, call.deadline) == (7.0, 107.0)


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_a_non_positive_timeout_is_refused_and_nothing_is_booked(timeout: float) -> None:
    book = make_book()

    with pytest.raises(ValueError, match="positive"):
        book.new_call("m", None, timeout, 0.0)
    assert book.calls == {}


# ================================================================ encode and sizes


def test_a_request_carries_the_method_params_id_key_and_time_left_as_timeout_ms() -> None:
    book = make_book()
    call = book.new_call("add", [1, 2], 10.0, 0.0, "k1")

    assert orjson.loads(book.encode(call, 2.5)) == {
        "jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1,
        "madrpc": {"timeout_ms": 7500, "idempotency_key": "k1"},
    }


def test_a_keyless_call_sent_past_its_deadline_asks_only_for_one_millisecond() -> None:
    book = make_book()
    call = book.new_call("add", None, 1.0, 0.0, None)

    assert orjson.loads(book.encode(call, 5.0))["madrpc"] == {"timeout_ms": 1}


def test_each_send_counts_an_attempt_and_the_resend_interval_doubles_up_to_the_deadline(
) -> None:
    book = make_book(retry_interval_s=1.0)
    call = book.new_call("add", None, 10.0, 0.0)
    schedule = []
    for now in (0.0, 1.0, 3.0, 7.0):
        book.encode(call, now)
        schedule.append((call.attempts, call.sent_at, call.resend_at))

    assert schedule == [(1, 0.0, 1.0), (2, 1.0, 3.0), (3, 3.0, 7.0), (4, 7.0, 10.0)]


def test_a_request_over_max_message_bytes_is_refused_and_leaves_the_book() -> None:
    book = make_book(max_message_bytes=100)
    call = book.new_call("add", ["x" * 100], 1.0, 0.0)

    with pytest.raises(MessageTooLargeError, match="max_message_bytes"):
        book.encode(call, 0.0)
    assert (book.calls, call.attempts) == ({}, 0)


def test_a_frame_of_exactly_max_message_bytes_fits_and_one_byte_more_does_not() -> None:
    book = make_book(max_message_bytes=4)

    assert book.check_size(b"1234") == b"1234"
    with pytest.raises(MessageTooLargeError):
        book.check_size(b"12345")


# ================================================================ on_frame


def test_a_result_completes_its_call_once_and_a_duplicate_reply_is_ignored() -> None:
    book = make_book()
    call = sent(book)

    assert book.on_frame(result(call.id, {"sum": 3}), 1.0) == [call]
    assert (call.done, call.outcome(), book.calls) == (True, {"sum": 3}, {})
    assert book.on_frame(result(call.id, "again"), 2.0) == []
    assert call.result == {"sum": 3}


@pytest.mark.parametrize(("code", "kind"), [
    (-32601, RpcError), (-32004, RpcError), (-32000, JSError), (-32003, RpcTimeoutError),
])
def test_an_error_reply_completes_its_call_at_once_with_the_rpc_error_for_its_code(
    code: int, kind: type[RpcError],
) -> None:
    book = make_book()
    call = sent(book, timeout=100.0)
    data = {"name": "RangeError"}

    assert book.on_frame(error(call.id, code, "failed", data), 1.0) == [call]
    assert type(call.error) is kind and (book.calls, book.retries) == ({}, 0)
    assert (call.error.code, call.error.message, call.error.data) == (code, "failed", data)
    with pytest.raises(kind):
        call.outcome()


@pytest.mark.parametrize("code", [NO_WORKER, OVERLOADED, WORKER_LOST, SHUTTING_DOWN])
def test_a_transient_error_reply_is_retried_after_a_jittered_backoff_within_the_deadline(
    code: int,
) -> None:
    book = make_book(random.Random(5), retry_backoff_initial_s=0.1)
    call = sent(book, now=0.0, timeout=10.0)

    assert book.on_frame(error(call.id, code), 1.0) == []
    assert (call.done, book.calls, book.retries) == (False, {call.id: call}, 0)
    assert call.resend_at == 1.0 + random.Random(5).uniform(0, 0.1)
    assert book.due_for_resend(call.resend_at - 1e-6) == []
    assert book.due_for_resend(call.resend_at) == [call]
    assert book.retries == 1   # counted once, when it is sent again


def test_a_response_whose_id_is_not_a_call_id_is_ignored() -> None:
    book = make_book()
    call = sent(book)

    for odd_id in ([call.id], {"id": call.id}, True, float(call.id), str(call.id)):
        assert book.on_frame(result(odd_id), 1.0) == []
    assert not call.done and book.calls == {call.id: call}


def test_a_call_whose_resend_fails_is_completed_with_the_error() -> None:
    book = make_book()
    call = sent(book)
    book.calls.pop(call.id)   # as encode() does when it refuses a resend

    book.abandon(call, TransportError("too big"))

    assert call.done and isinstance(call.error, TransportError)


def test_resends_after_a_reconnection_or_a_restart_are_counted() -> None:
    book = make_book(retry_interval_s=5.0, probe_interval_s=1.0)
    calls = [sent(book, timeout=100.0) for _ in range(2)]
    book.probe(1.0)

    assert book.housekeeping(6.0, 0.0) == (True, calls, [])
    assert book.retries == 2


def test_the_backoff_doubles_with_each_send_up_to_its_cap() -> None:
    book = make_book(Highest(), retry_backoff_initial_s=0.1, retry_backoff_max_s=0.3,
                     max_retries=10)
    call = sent(book, timeout=100.0)
    delays = []
    for _ in range(3):
        book.on_frame(error(call.id, OVERLOADED), 1.0)
        delays.append(round(call.resend_at - 1.0, 9))
        book.encode(call, 1.0)

    assert delays == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(("sends", "retried"), [(2, True), (3, False)])
def test_a_transient_error_completes_its_call_once_the_sends_exceed_max_retries(
    sends: int, retried: bool,
) -> None:
    book = make_book(max_retries=2)
    call = book.new_call("add", None, 100.0, 0.0)
    for _ in range(sends):
        book.encode(call, 0.0)
    book.on_frame(error(call.id, NO_WORKER), 1.0)

    assert call.done is not retried
    assert retried or (isinstance(call.error, RpcError) and call.error.code == -32001)


def test_a_transient_error_completes_its_call_when_the_backoff_would_reach_the_deadline() -> None:
    book = make_book(Highest(), retry_backoff_initial_s=0.5)
    call = sent(book, now=0.0, timeout=1.0)

    assert book.on_frame(error(call.id, WORKER_LOST), 0.5) == [call]
    assert isinstance(call.error, RpcError) and book.retries == 0


def test_a_batch_response_completes_every_call_it_answers() -> None:
    book = make_book()
    first, second, third = sent(book), sent(book), sent(book)
    batch = b"[" + result(first.id, 1) + b"," + error(second.id, -32602) + b"]"

    assert book.on_frame(batch, 1.0) == [first, second]
    assert (first.result, book.calls) == (1, {third.id: third})


@pytest.mark.parametrize("frame", [
    b"not json", b"", b"42", b"[1, null]",
    b'{"jsonrpc": "2.0", "method": "add", "id": 1}',
    b'{"jsonrpc": "2.0", "id": 1}',
])
def test_frames_that_are_not_responses_are_ignored_but_count_as_hearing_from_the_broker(
    frame: bytes,
) -> None:
    book = make_book()
    call = sent(book)

    assert book.on_frame(frame, 4.0) == []
    assert (call.done, book.calls, book.last_heard) == (False, {call.id: call}, 4.0)


# ================================================================ the probe


def test_a_probe_is_wanted_when_calls_wait_none_is_out_and_the_broker_was_quiet_long_enough(
) -> None:
    book = make_book(probe_interval_s=1.0)
    book.on_frame(b"{}", 10.0)
    assert book.wants_probe(1000.0) is False
    sent(book)

    assert (book.wants_probe(10.999), book.wants_probe(11.0)) == (False, True)
    book.probe(11.0)
    assert book.wants_probe(1000.0) is False


def test_a_probe_is_a_ping_request_with_an_id_of_its_own() -> None:
    book = make_book()
    first = orjson.loads(book.probe(1.0))
    second = orjson.loads(book.probe(2.0))

    assert first == {"jsonrpc": "2.0", "method": "_ping", "id": first["id"]}
    assert isinstance(first["id"], str) and first["id"] != second["id"]
    assert (book.probe_id, book.probe_sent_at) == (second["id"], 2.0)


def test_probe_answers_record_the_broker_run_and_clear_the_probe_and_one_run_is_no_restart(
) -> None:
    book = make_book()
    book.probe(1.0)

    assert book.on_frame(result(book.probe_id, {"broker": "run-a", "grace_s": 3}), 1.0) == []
    assert (book.broker_instance, book.probe_id, book.broker_restarted) == ("run-a", None, False)
    answer_probe(book, 2.0, "run-a", grace_s=3)
    assert book.broker_restarted is False


@pytest.mark.parametrize(("grace", "resend_after"), [({"grace_s": 3}, 8.0), ({}, 5.0),
                                                     ({"grace_s": "soon"}, 5.0)])
def test_a_probe_answer_naming_a_new_run_is_a_restart_resent_after_the_brokers_grace(
    grace: dict[str, Any], resend_after: float,
) -> None:
    book = make_book()
    answer_probe(book, 1.0, "run-a")
    answer_probe(book, 5.0, "run-b", **grace)

    assert (book.broker_restarted, book.resend_after, book.broker_instance) == (
        True, resend_after, "run-b")


@pytest.mark.parametrize("answer", [{"grace_s": 1}, {"broker": 7}, "pong", None])
def test_a_probe_answer_without_a_broker_run_only_clears_the_probe(answer: Any) -> None:
    book = make_book()
    answer_probe(book, 1.0, "run-a")
    book.probe(2.0)
    book.on_frame(result(book.probe_id, answer), 2.0)

    assert (book.probe_id, book.broker_instance, book.broker_restarted) == (None, "run-a", False)


def test_an_answer_to_a_probe_given_up_on_is_ignored() -> None:
    book = make_book()
    answer_probe(book, 1.0, "run-a")
    stale = book.probe(2.0)
    book.on_reconnect()
    book.on_frame(result(orjson.loads(stale)["id"], {"broker": "run-b"}), 3.0)

    assert (book.broker_instance, book.broker_restarted) == ("run-a", False)


def test_after_a_restart_every_waiting_call_is_resent_once_when_the_grace_has_passed() -> None:
    book = make_book(retry_interval_s=50.0, probe_interval_s=30.0)
    calls = [sent(book, timeout=100.0), sent(book, timeout=100.0)]
    answer_probe(book, 1.0, "run-a")
    answer_probe(book, 2.0, "run-b", grace_s=3)

    assert book.next_wakeup(2.0) == 5.0
    assert book.housekeeping(4.999, 0.0) == (False, [], [])
    assert book.housekeeping(5.0, 0.0) == (False, calls, [])
    assert book.housekeeping(5.0, 0.0) == (False, [], [])


# ================================================================ silence and reconnects


@pytest.mark.parametrize(("connected_at", "silent_at"), [(0.0, 15.0), (12.0, 17.0)])
def test_a_probe_unanswered_for_a_retry_interval_since_it_or_the_connection_means_silence(
    connected_at: float, silent_at: float,
) -> None:
    book = make_book(retry_interval_s=5.0)
    assert book.broker_silent(1000.0, connected_at) is False   # no probe out, no silence
    book.probe(10.0)

    assert book.broker_silent(silent_at - 0.001, connected_at) is False
    assert book.broker_silent(silent_at, connected_at) is True


def test_a_silent_broker_means_a_reconnect_and_every_waiting_call_resent() -> None:
    book = make_book(retry_interval_s=5.0)
    calls = [sent(book, timeout=100.0), sent(book, now=4.0, timeout=100.0)]
    book.probe(1.0)

    assert book.housekeeping(6.0, 0.0) == (True, calls, [])
    assert (book.reconnects, book.probe_id) == (1, None)


# ================================================================ resends and expiry


def test_a_call_is_due_for_resend_when_its_resend_time_comes_and_the_resend_is_counted() -> None:
    book = make_book(retry_interval_s=5.0, probe_interval_s=100.0)
    call = sent(book, timeout=100.0)

    assert book.housekeeping(4.999, 0.0) == (False, [], [])
    assert book.housekeeping(5.0, 0.0) == (False, [call], [])
    assert book.retries == 1


def test_a_call_past_its_deadline_expires_with_a_timeout_naming_method_timeout_and_attempts(
) -> None:
    book = make_book()
    call = book.new_call("slow", None, 2.0, 0.0)
    book.encode(call, 0.0)
    book.encode(call, 1.0)

    assert book.expire(1.999) == []
    assert book.housekeeping(2.0, 0.0) == (False, [], [call])
    assert isinstance(call.error, RpcTimeoutError) and isinstance(call.error, TimeoutError)
    assert call.error.code == CLIENT_TIMEOUT
    assert "'slow' within 2 s (2 attempt(s))" in call.error.message
    assert book.calls == {}


# ================================================================ next_wakeup


def test_with_no_calls_there_is_nothing_to_wake_up_for() -> None:
    assert make_book().next_wakeup(0.0) is None


def test_the_next_wakeup_is_the_earliest_resend() -> None:
    book = make_book(retry_interval_s=5.0, probe_interval_s=100.0)
    sent(book, now=2.0, timeout=30.0)
    sent(book, now=1.0, timeout=30.0)

    assert book.next_wakeup(3.0) == 6.0


def test_the_next_wakeup_is_when_a_probe_is_wanted_or_when_the_one_out_goes_unanswered(
) -> None:
    book = make_book(retry_interval_s=50.0, probe_interval_s=1.0)
    sent(book, now=9.0, timeout=100.0)   # resent at 59
    book.on_frame(b"{}", 7.0)
    assert book.next_wakeup(7.0) == 8.0
    book.probe(8.0)

    assert book.next_wakeup(8.0) == 58.0


# ================================================================ abandon and fail_all


def test_abandoning_a_waiting_call_completes_it_with_the_error_but_a_finished_one_stays(
) -> None:
    book = make_book()
    call, other, finished = sent(book), sent(book), sent(book)
    book.on_frame(result(finished.id, 3), 1.0)
    reason = TransportError("send queue full")
    book.abandon(call, reason)
    book.abandon(finished, reason)

    assert (call.done, call.error, book.calls) == (True, reason, {other.id: other})
    assert (finished.result, finished.error) == (3, None)


def test_fail_all_completes_every_waiting_call_with_the_error() -> None:
    book = make_book()
    calls = [sent(book), sent(book)]
    reason = TransportError("client closed")
    book.fail_all(reason)

    assert [(c.done, c.error) for c in calls] == [(True, reason), (True, reason)]
    assert book.calls == {}


def test_an_overloaded_answer_is_retried_no_sooner_than_its_retry_after_hint() -> None:
    book = make_book(random.Random(1), retry_backoff_initial_s=0.01)
    call = sent(book, now=0.0, timeout=10.0)
    book.on_frame(error(call.id, OVERLOADED, data={"retry_after_ms": 750}), 1.0)

    assert not call.done and call.resend_at >= 1.75


def test_a_retry_after_hint_longer_than_the_call_has_left_ends_the_call() -> None:
    book = make_book()
    call = sent(book, now=0.0, timeout=1.0)
    book.on_frame(error(call.id, OVERLOADED, data={"retry_after_ms": 5000}), 0.5)

    assert call.done and isinstance(call.error, RpcError) and call.error.code == OVERLOADED


@pytest.mark.parametrize("hint", [-5, "soon", True, None, [100]])
def test_a_malformed_retry_after_hint_is_ignored(hint: Any) -> None:
    book = make_book(random.Random(1), retry_backoff_initial_s=0.01)
    call = sent(book, now=0.0, timeout=10.0)
    book.on_frame(error(call.id, OVERLOADED, data={"retry_after_ms": hint}), 1.0)

    assert not call.done and call.resend_at <= 1.01


# ---------------------------------------------------------------- map's batches, timers


def test_batch_frames_join_requests_into_json_rpc_batches_in_order() -> None:
    frames = [orjson.dumps({"id": i}) for i in range(5)]

    joined = batch_frames(frames, 1000)

    assert [orjson.loads(frame) for frame in joined] == [[{"id": i} for i in range(5)]]


def test_batch_frames_split_at_the_size_limit_and_leave_a_lone_request_bare() -> None:
    frames = [b'{"id":%d,"p":"%s"}' % (i, b"x" * 40) for i in range(5)]   # 55 bytes each

    joined = batch_frames(frames, 120)   # [a,b] is 113 bytes; [a,b,c] would be 169

    assert [len(orjson.loads(f)) if f.startswith(b"[") else 1 for f in joined] == [2, 2, 1]
    assert joined[-1] == frames[-1]
    assert all(len(frame) <= 120 for frame in joined)


def test_next_wakeup_is_the_soonest_resend_of_a_call_still_waiting() -> None:
    book = make_book(retry_interval_s=5.0, probe_interval_s=100.0)
    first = sent(book, now=0.0)
    second = sent(book, now=1.0)

    assert book.next_wakeup(1.0) == first.resend_at == 5.0
    book.on_frame(result(first.id), 1.5)
    assert book.next_wakeup(1.5) == second.resend_at == 6.0


def test_the_timers_of_completed_calls_neither_wake_nor_pile_up() -> None:
    book = make_book(retry_interval_s=5.0, probe_interval_s=100.0)
    for _ in range(10_000):
        call = sent(book, now=0.0)
        book.on_frame(result(call.id), 0.0)
    last = sent(book, now=1.0)

    assert book.next_wakeup(1.0) == last.resend_at == 6.0
    assert book.due_for_resend(5.9) == []
    assert book.due_for_resend(6.0) == [last]


def test_expired_calls_fail_and_the_others_stay_due_for_a_resend() -> None:
    book = make_book(retry_interval_s=5.0)
    short = sent(book, now=0.0, timeout=5.0)
    long = sent(book, now=0.0, timeout=60.0)

    assert book.expire(5.0) == [short]
    assert isinstance(short.error, RpcTimeoutError)
    assert book.due_for_resend(5.0) == [long]
