"""Circuit breaker and idempotency table, driven by a fake clock (plain floats)."""

from __future__ import annotations

import pytest

from madrpc.errors import ErrorCode
from madrpc.policy import TRANSIENT_CODES, CircuitBreaker, CircuitState, IdempotencyTable

# ================================================================ CircuitBreaker


def tripped(now: float = 0.0, **settings: float) -> CircuitBreaker:
    """A breaker that has just opened at ``now``."""
    breaker = CircuitBreaker(**settings)  # type: ignore[arg-type]
    for _ in range(breaker.failure_threshold):
        breaker.on_failure(now)
    return breaker


def half_open(now: float = 0.0, **settings: float) -> tuple[CircuitBreaker, float]:
    """A breaker that opened at ``now`` and reached half-open; returns it and the time."""
    breaker = tripped(now, **settings)
    later = now + breaker.initial_open_s
    assert breaker.allows(later)
    return breaker, later


def test_a_new_breaker_is_closed_and_allows_requests() -> None:
    breaker = CircuitBreaker()

    assert (breaker.state, breaker.allows(0.0)) == (CircuitState.CLOSED, True)


def test_failures_below_the_threshold_keep_the_circuit_closed() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    breaker.on_failure(0.0)
    breaker.on_failure(0.0)

    assert breaker.allows(0.0)


def test_the_threshold_of_consecutive_failures_opens_the_circuit() -> None:
    breaker = tripped(failure_threshold=3)

    assert (breaker.state, breaker.allows(0.0)) == (CircuitState.OPEN, False)


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    breaker.on_failure(0.0)
    breaker.on_failure(0.0)
    breaker.on_success(0.0)
    breaker.on_failure(0.0)
    breaker.on_failure(0.0)

    assert breaker.allows(0.0)


def test_an_open_circuit_refuses_requests_until_the_open_time_has_passed() -> None:
    breaker = tripped(10.0, initial_open_s=2.0)

    assert breaker.allows(11.999) is False


def test_after_the_open_time_the_circuit_is_half_open_and_allows_a_trial() -> None:
    breaker = tripped(10.0, initial_open_s=2.0)

    assert (breaker.allows(12.0), breaker.state) == (True, CircuitState.HALF_OPEN)


def test_a_half_open_circuit_allows_exactly_one_trial_request() -> None:
    breaker, now = half_open()
    breaker.on_dispatch(now)

    assert breaker.allows(now + 100.0) is False


def test_a_successful_trial_closes_the_circuit() -> None:
    breaker, now = half_open()
    breaker.on_dispatch(now)
    breaker.on_success(now)

    assert (breaker.state, breaker.allows(now), breaker.failures) == (CircuitState.CLOSED, True, 0)


def test_a_closed_circuit_lets_many_requests_through() -> None:
    breaker, now = half_open()
    breaker.on_dispatch(now)
    breaker.on_success(now)
    breaker.on_dispatch(now)
    breaker.on_dispatch(now)

    assert breaker.allows(now)


def test_a_failed_trial_opens_the_circuit_again_for_twice_as_long() -> None:
    breaker, now = half_open(initial_open_s=1.0)
    breaker.on_dispatch(now)
    breaker.on_failure(now)

    assert (breaker.allows(now + 1.999), breaker.allows(now + 2.0)) == (False, True)


def test_the_open_time_doubles_up_to_its_cap() -> None:
    breaker, now = half_open(initial_open_s=1.0, max_open_s=5.0)
    open_times = []
    for _ in range(5):
        breaker.on_dispatch(now)
        breaker.on_failure(now)
        open_times.append(breaker.reopen_at - now)
        now = breaker.reopen_at
        assert breaker.allows(now)

    assert open_times == [2.0, 4.0, 5.0, 5.0, 5.0]


def test_after_closing_the_next_opening_starts_again_from_the_initial_open_time() -> None:
    breaker, now = half_open(initial_open_s=1.0)
    breaker.on_dispatch(now)
    breaker.on_failure(now)  # open for 2 s
    now += 2.0
    breaker.allows(now)
    breaker.on_success(now)
    for _ in range(breaker.failure_threshold):
        breaker.on_failure(now)

    assert (breaker.allows(now + 0.999), breaker.allows(now + 1.0)) == (False, True)


def test_the_breaker_counts_how_many_times_it_opened() -> None:
    breaker, now = half_open()
    breaker.on_dispatch(now)
    breaker.on_failure(now)

    assert breaker.opened == 2


def test_failures_reported_while_the_circuit_is_open_do_not_extend_it() -> None:
    breaker = tripped(0.0, failure_threshold=5, initial_open_s=1.0)
    for _ in range(5):  # requests dispatched before it opened fail afterwards
        breaker.on_failure(0.5)

    assert (breaker.allows(1.0), breaker.opened) == (True, 1)


def test_to_dict_of_a_closed_breaker() -> None:
    breaker = CircuitBreaker()
    breaker.on_failure(0.0)

    assert breaker.to_dict(0.0) == {
        "state": "closed", "consecutive_failures": 1, "opened": 0, "retry_in_s": None,
    }


def test_to_dict_of_an_open_breaker_says_when_it_retries() -> None:
    breaker = tripped(10.0, failure_threshold=2, initial_open_s=3.0)

    assert breaker.to_dict(11.25) == {
        "state": "open", "consecutive_failures": 2, "opened": 1, "retry_in_s": 1.75,
    }


def test_to_dict_shows_half_open_once_the_open_time_has_passed() -> None:
    breaker = tripped(10.0, initial_open_s=3.0)

    report = breaker.to_dict(13.0)

    assert (report["state"], report["retry_in_s"]) == ("half-open", None)


# ================================================================ IdempotencyTable

OK: tuple[int | None, bytes] = (None, b'"result":42')
FAILED: tuple[int | None, bytes] = (int(ErrorCode.JS_EXCEPTION), b'"error":{"code":-32000}')


def test_an_unknown_key_is_not_found() -> None:
    assert IdempotencyTable(60.0, 10).lookup("k", 0.0) is None


def test_a_started_key_is_running_and_names_its_request() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")

    assert table.lookup("k", 0.0) == b"req-1"


def test_finishing_returns_the_requests_that_joined_in_order() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")
    table.join("k", b"req-2")
    table.join("k", b"req-3")

    assert table.finish("k", b"req-1", OK, 1.0) == [b"req-2", b"req-3"]


def test_finishing_without_joined_requests_returns_nothing() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")

    assert table.finish("k", b"req-1", OK, 1.0) == []


def test_joining_an_unknown_key_is_ignored() -> None:
    table = IdempotencyTable(60.0, 10)
    table.join("k", b"req-2")

    assert (len(table), table.lookup("k", 0.0)) == (0, None)


def test_a_finish_from_a_request_that_is_not_the_running_one_is_ignored() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")
    table.join("k", b"req-2")

    assert (table.finish("k", b"stale", OK, 1.0), table.lookup("k", 1.0)) == ([], b"req-1")


def test_the_outcome_is_replayed_within_the_window() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")
    table.finish("k", b"req-1", OK, 100.0)

    assert table.lookup("k", 159.999) == OK


def test_the_outcome_is_forgotten_once_the_window_has_passed() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")
    table.finish("k", b"req-1", OK, 100.0)

    assert (table.lookup("k", 160.0), len(table)) == (None, 0)


def test_a_non_transient_error_is_stored_and_replayed() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")
    table.finish("k", b"req-1", FAILED, 0.0)

    assert table.lookup("k", 1.0) == FAILED


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES), ids=lambda code: code.name)
def test_a_transient_error_is_not_stored_so_a_retry_runs_again(code: ErrorCode) -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")
    table.finish("k", b"req-1", (int(code), b'"error":{}'), 0.0)

    assert (table.lookup("k", 0.0), len(table)) == (None, 0)


def test_a_transient_error_is_still_passed_to_the_joined_requests() -> None:
    table = IdempotencyTable(60.0, 10)
    table.start("k", b"req-1")
    table.join("k", b"req-2")

    assert table.finish("k", b"req-1", (int(ErrorCode.TIMEOUT), b'"error":{}'), 0.0) == [b"req-2"]


def test_the_transient_codes_are_those_that_say_nothing_about_the_request() -> None:
    transient = {
        ErrorCode.NO_WORKER, ErrorCode.OVERLOADED, ErrorCode.TIMEOUT,
        ErrorCode.WORKER_LOST, ErrorCode.SHUTTING_DOWN,
    }

    assert transient == TRANSIENT_CODES


def test_the_table_never_holds_more_than_max_entries() -> None:
    table = IdempotencyTable(60.0, 3)
    for index in range(10):
        table.start(f"k{index}", b"req")

    assert len(table) == 3


def test_the_oldest_entry_is_dropped_first_when_the_table_is_full() -> None:
    table = IdempotencyTable(60.0, 2)
    table.start("a", b"req-a")
    table.start("b", b"req-b")
    table.start("c", b"req-c")

    assert [table.lookup(key, 0.0) for key in "abc"] == [None, b"req-b", b"req-c"]


def test_expire_drops_finished_entries_older_than_the_window() -> None:
    table = IdempotencyTable(10.0, 10)
    table.start("old", b"req-1")
    table.finish("old", b"req-1", OK, 0.0)
    table.start("fresh", b"req-2")
    table.finish("fresh", b"req-2", OK, 5.0)

    table.expire(12.0)

    assert (len(table), table.lookup("fresh", 12.0)) == (1, OK)


def test_expire_keeps_running_entries() -> None:
    table = IdempotencyTable(10.0, 10)
    table.start("running", b"req-1")
    table.start("done", b"req-2")
    table.finish("done", b"req-2", OK, 0.0)

    table.expire(1000.0)

    assert (len(table), table.lookup("running", 1000.0)) == (1, b"req-1")


def test_a_key_started_again_after_its_window_runs_afresh() -> None:
    table = IdempotencyTable(10.0, 10)
    table.start("k", b"req-1")
    table.finish("k", b"req-1", OK, 0.0)
    table.expire(20.0)
    table.start("k", b"req-2")

    assert table.lookup("k", 20.0) == b"req-2"


# ================================================================ IdempotencyTable bounds


def test_outcomes_over_the_result_size_limit_are_not_kept() -> None:
    table = IdempotencyTable(300.0, 100, max_bytes=1000, max_result_bytes=10)
    table.start("big", b"k1")
    table.finish("big", b"k1", (None, b"x" * 11), 0.0)

    assert table.lookup("big", 1.0) is None and table.too_large == 1 and table.bytes == 0


def test_stored_outcomes_stay_within_their_byte_bound_oldest_forgotten_first() -> None:
    table = IdempotencyTable(300.0, 100, max_bytes=25, max_result_bytes=10)
    for n in range(4):
        table.start(f"k{n}", b"r%d" % n)
        table.finish(f"k{n}", b"r%d" % n, (None, b"x" * 10), float(n))

    assert table.bytes <= 25 and table.evicted == 2
    assert [table.lookup(f"k{n}", 5.0) is not None for n in range(4)] == [False, False, True, True]


def test_expired_and_replaced_outcomes_give_their_bytes_back() -> None:
    table = IdempotencyTable(10.0, 100, max_bytes=100)
    table.start("a", b"r1")
    table.finish("a", b"r1", (None, b"x" * 10), 0.0)
    table.start("a", b"r2")   # a retry after a transient problem starts it again
    assert table.bytes == 0

    table.finish("a", b"r2", (None, b"x" * 10), 0.0)
    table.expire(11.0)
    assert table.bytes == 0 and len(table) == 0
