"""The worker's parts, each alone: credit ledger, run times, request book, engine slots,
hand-over memory and figures. Pure: plain floats for time."""

from __future__ import annotations

import orjson
import pytest

from madrpc import protocol as p
from madrpc.worker_credit import EWMA_WEIGHT, CreditLedger, RunTimes
from madrpc.worker_figures import WorkerFigures
from madrpc.worker_handover import (
    MAX_RECENT_BYTES,
    MAX_RECENT_RESULT_BYTES,
    MAX_RECENT_RESULTS,
    RECENT_RESULTS_S,
    HandOver,
    idempotency_key,
)
from madrpc.worker_requests import RequestBook
from madrpc.worker_tables import EngineSlot, LocalRequest, Stage, StepInput

WALL_MS = 1_700_000_000_000.0


def body(method: str = "work", key: str | None = None) -> bytes:
    member: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if key is not None:
        member["madrpc"] = {"idempotency_key": key}
    return orjson.dumps(member)


def add(book: RequestBook, number: int, method: str = "work", memory_mb: int = 0,
        key: str | None = None) -> LocalRequest:
    meta = p.RequestMeta(p.encode_key(number), 5000, 0, 1)
    return book.add(meta, method, body(method, key), 0.0, WALL_MS, 60_000, memory_mb)


# ================================================================ CreditLedger


def test_the_target_is_contexts_times_one_plus_prefetch_while_quick_else_times_two() -> None:
    ledger = CreditLedger(initial=4, prefetch=8)

    assert (ledger.target(2, quick=True), ledger.target(2, quick=False)) == (18, 4)
    assert ledger.target(0, quick=False) == 2   # never below one context's worth


def test_a_released_unit_is_returned_while_at_or_under_target() -> None:
    ledger = CreditLedger(initial=4, prefetch=8)
    ledger.release(target=4, draining=False)

    assert (ledger.issued, ledger.take_return(), ledger.take_return()) == (4, 1, 0)


def test_a_released_unit_is_withheld_above_target_or_while_draining() -> None:
    ledger = CreditLedger(initial=10, prefetch=8)
    ledger.release(target=4, draining=False)
    ledger.release(target=20, draining=True)

    assert (ledger.issued, ledger.to_return) == (8, 0)


def test_top_up_grants_what_is_missing_to_reach_the_target_unless_draining() -> None:
    ledger = CreditLedger(initial=4, prefetch=8)
    ledger.top_up(target=18, draining=True)
    assert (ledger.issued, ledger.to_return) == (4, 0)

    ledger.top_up(target=18, draining=False)
    assert (ledger.issued, ledger.to_return) == (18, 14)


def test_a_new_broker_connection_restarts_from_the_initial_credit_plus_what_is_held() -> None:
    ledger = CreditLedger(initial=4, prefetch=8)
    ledger.top_up(target=18, draining=False)
    ledger.restart(holding=3)

    assert (ledger.issued, ledger.to_return) == (7, 0)


# ================================================================ RunTimes


def test_run_times_start_with_the_first_sample_then_move_by_the_ewma_weight() -> None:
    times = RunTimes()
    times.learn({"a"}, 1.0)
    times.learn({"a", "b"}, 2.0)

    assert times.estimate_s("a") == pytest.approx(1.0 + EWMA_WEIGHT * 1.0)
    assert times.estimate_s("b") == 2.0 and times.estimate_s("c") is None
    assert times.recent_s == pytest.approx(1.0 + EWMA_WEIGHT * 1.0)


def test_quick_means_recent_requests_ran_under_the_threshold() -> None:
    times = RunTimes()
    assert not times.quick(2.0)   # nothing known yet

    times.learn({"a"}, 0.001)
    assert times.quick(2.0) and not times.quick(0.5)


# ================================================================ RequestBook


def test_added_requests_are_found_by_local_and_broker_key_and_queued_in_order() -> None:
    book = RequestBook()
    first, second = add(book, 1), add(book, 2)

    assert (first.local, second.local) == (1, 2)
    assert book[1] is first and book.find(p.encode_key(2)) is second
    assert list(book.queue) == [1, 2] and len(book) == 2
    assert first.deadline_ms == WALL_MS + 5000 and first.depth == 1


def test_a_popped_request_is_gone_from_both_lookups() -> None:
    book = RequestBook()
    request = add(book, 1)

    assert book.pop(1) is request and book.pop(1) is None
    assert book.find(p.encode_key(1)) is None and 1 not in book


def test_a_request_with_its_own_memory_limit_runs_alone() -> None:
    assert add(RequestBook(), 1, memory_mb=64).solo


def test_a_batch_takes_quick_requests_up_to_the_threshold() -> None:
    book = RequestBook()
    for n in range(1, 6):
        add(book, n, "quick")

    batch = book.take_batch({"quick": 0.0004}, threshold_s=0.001, max_batch=64)

    assert [r.local for r in batch] == [1, 2]
    assert list(book.queue) == [3, 4, 5]


def test_a_batch_stops_at_max_batch() -> None:
    book = RequestBook()
    for n in range(1, 6):
        add(book, n, "quick")

    assert len(book.take_batch({"quick": 0.0}, threshold_s=1.0, max_batch=3)) == 3


def test_a_slow_or_unknown_or_solo_request_runs_in_a_step_of_its_own() -> None:
    book = RequestBook()
    add(book, 1, "unknown")
    add(book, 2, "quick")
    add(book, 3, "slow")
    add(book, 4, "quick", memory_mb=8)
    add(book, 5, "quick")
    estimates = {"quick": 0.0001, "slow": 0.5}

    steps = [[r.local for r in book.take_batch(estimates, 0.002, 64)] for _ in range(4)]

    assert steps == [[1], [2], [3], [4]] and list(book.queue) == [5]


def test_without_batching_every_request_runs_alone() -> None:
    book = RequestBook()
    add(book, 1, "quick")
    add(book, 2, "quick")

    assert len(book.take_batch({"quick": 0.0}, 1.0, 64, batching=False)) == 1


def test_stale_queue_entries_are_skipped() -> None:
    book = RequestBook()
    add(book, 1)
    add(book, 2)
    book.pop(1)

    assert [r.local for r in book.take_batch({}, 0.002, 64)] == [2]


def test_a_requeued_request_goes_to_the_front_queued_again() -> None:
    book = RequestBook()
    first, second = add(book, 1), add(book, 2)
    book.take_batch({}, 0.002, 64)
    first.stage, first.engine = Stage.RUNNING, 3
    book.requeue(first, solo=True)

    assert list(book.queue) == [1, 2] and second.stage is Stage.QUEUED
    assert (first.stage, first.engine, first.solo) == (Stage.QUEUED, None, True)


def test_clear_forgets_everything_and_returns_what_was_held() -> None:
    book = RequestBook()
    held = [add(book, 1), add(book, 2)]
    held[0].holds_credit = False

    assert book.holding_credit() == 1 and book.count(Stage.QUEUED) == 2
    assert book.clear() == held
    assert (len(book), list(book.queue), book.by_key) == (0, [], {})


# ================================================================ EngineSlot


def test_a_step_marks_its_requests_running_on_the_engine() -> None:
    book, engine = RequestBook(), EngineSlot(3, ready=True)
    batch = [add(book, 1, "a"), add(book, 2, "b")]
    engine.begin_step(batch, 5.0)

    assert not engine.idle and engine.held == {1, 2}
    assert [(r.stage, r.engine) for r in batch] == [(Stage.RUNNING, 3)] * 2
    assert (engine.step_methods, engine.step_started) == ({"a", "b"}, 5.0)
    assert engine.end_step(6.0) == [1, 2] and engine.idle


def test_a_step_sent_while_busy_is_queued_and_starts_when_the_running_one_ends() -> None:
    book, engine = RequestBook(), EngineSlot(3, ready=True)
    engine.begin_step([add(book, 1, "a")], 5.0, estimate_s=0.006)
    assert engine.can_queue(0.05) and not engine.can_queue(0.001)

    engine.begin_step([add(book, 2, "b"), add(book, 3, "b")], 5.001, estimate_s=0.012)

    assert engine.queued == [2, 3] and engine.step_requests == [1]
    assert not engine.can_queue(0.05)   # one queued step at most
    assert engine.end_step(5.006) == [1]
    assert (engine.busy, engine.step_requests, engine.step_methods) == (True, [2, 3], {"b"})
    assert (engine.step_started, engine.step_estimate_s, engine.queued) == (5.006, 0.012, None)
    assert engine.end_step(5.02) == [2, 3] and engine.idle


def test_an_engine_with_input_waiting_or_an_unknown_step_gets_no_queued_step() -> None:
    book, engine = RequestBook(), EngineSlot(0, ready=True)
    engine.begin_step([add(book, 1)], 0.0)   # no estimate: a method never seen
    assert not engine.can_queue(0.05)
    engine.step_estimate_s = 0.001
    engine.settle(b"", 4, b'"result":1')
    assert not engine.can_queue(0.05)
    assert not EngineSlot(1, ready=True).can_queue(0.05)   # idle: it gets a step anyway


def test_results_and_cancellations_wait_by_context_slot_until_a_step_takes_them() -> None:
    engine = EngineSlot(0, ready=True)
    engine.settle(b"7", 1, b'"result":1')
    engine.cancel(b"8", 8)

    assert engine.has_input and engine.input_slot() == b"7"
    assert engine.take_input(b"7") == StepInput(settles=[(1, b'"result":1')])
    assert engine.input_slot() == b"8" and engine.take_input(b"8") == StepInput(cancels=[8])
    assert not engine.has_input


def test_stream_items_and_grants_wait_with_the_other_input_of_their_slot() -> None:
    engine = EngineSlot(0, ready=True)
    engine.feed(b"", 3, b"[1,2]")
    engine.grant(b"", 9, 32)
    engine.settle(b"", 3, b'"result":{"items":2}')

    assert engine.take_input(b"") == StepInput(settles=[(3, b'"result":{"items":2}')],
                                               feeds=[(3, b"[1,2]")], grants=[(9, 32)])
    assert not engine.has_input and engine.take_input(b"") == StepInput()


def test_losing_the_contexts_starts_a_new_generation_holding_nothing() -> None:
    book, engine = RequestBook(), EngineSlot(0, ready=True)
    engine.begin_step([add(book, 1), add(book, 2)], 0.0)
    engine.settle(b"", 4, b'"result":1')
    engine.end_step(0.1)   # the step was stopped (RESET)

    assert engine.lose_contexts() == [2, 1]   # newest first
    assert (engine.generation, engine.busy, engine.held, engine.has_input) == (1, False,
                                                                              set(), False)


def test_losing_the_contexts_keeps_the_steps_the_engine_has_still_to_run() -> None:
    book, engine = RequestBook(), EngineSlot(0, ready=True)
    engine.begin_step([add(book, 1)], 0.0, 0.001)
    engine.end_step(0.001)   # request 1 parked (awaits a nested call)
    engine.begin_step([add(book, 2)], 0.002, 0.001)
    engine.begin_step([add(book, 3)], 0.003, 0.001)

    assert engine.lose_contexts() == [1]   # a flush was reset: 2 and 3 run in the new one
    assert engine.held == {2, 3} and engine.busy and engine.queued == [3]


def test_an_engine_process_that_died_forgets_its_steps_and_says_which_never_started() -> None:
    book, engine = RequestBook(), EngineSlot(0, ready=True)
    engine.begin_step([add(book, 1)], 0.0, 0.001)
    engine.begin_step([add(book, 2)], 0.0, 0.001)

    assert engine.forget_steps() == [2]
    assert engine.lose_contexts() == [2, 1] and not engine.busy and engine.queued is None


def test_a_retiring_engine_is_drained_once_it_holds_nothing() -> None:
    engine = EngineSlot(0, ready=True, retiring=True)
    engine.held.add(1)
    assert not engine.drained

    engine.held.clear()
    assert engine.drained


# ================================================================ HandOver


def test_only_keyed_results_are_remembered_for_a_new_broker() -> None:
    book, handover = RequestBook(), HandOver()
    handover.remember_result(add(book, 1), b'"result":1', 0.0)
    handover.remember_result(add(book, 2, key="job-2"), b'"result":2', 0.0)

    assert list(handover.recent) == [p.encode_key(2)] and handover


def test_remembered_results_expire_and_are_bounded() -> None:
    book, handover = RequestBook(), HandOver()
    handover.remember_result(add(book, 1, key="old"), b"x", 0.0)
    handover.remember_result(add(book, 2, key="new"), b"x", RECENT_RESULTS_S + 1)
    assert list(handover.recent) == [p.encode_key(2)]

    for n in range(MAX_RECENT_RESULTS + 5):
        handover.recent[p.encode_key(100 + n)] = handover.recent[p.encode_key(2)]
    handover.remember_result(add(book, 3, key="last"), b"x", RECENT_RESULTS_S + 1)
    assert len(handover.recent) == MAX_RECENT_RESULTS


def test_remembered_results_are_bounded_in_bytes_and_big_ones_are_not_kept() -> None:
    book, handover = RequestBook(), HandOver()
    handover.remember_result(add(book, 1, key="huge"), b"x" * (MAX_RECENT_RESULT_BYTES + 1), 0.0)
    assert not handover.recent and handover.recent_bytes == 0

    result = b"r" * (MAX_RECENT_RESULT_BYTES // 2)
    kept = MAX_RECENT_BYTES // (len(result) + len(add(book, 0, key="k-0").body))
    for n in range(kept + 10):
        handover.remember_result(add(book, 10 + n, key=f"k-{n}"), result, 1.0)
    assert kept - 1 <= len(handover.recent) <= kept   # bodies differ by a byte or two
    assert handover.recent_bytes == sum(len(r.body) + len(r.fragment)
                                        for r in handover.recent.values())
    assert handover.recent_bytes <= MAX_RECENT_BYTES
    handover.clear()
    assert handover.recent_bytes == 0


def test_the_adoption_body_lists_held_requests_then_recent_keyed_results() -> None:
    book, handover = RequestBook(), HandOver()
    running = add(book, 1, key="job-1")
    cancelled = add(book, 2)
    cancelled.cancelled = True
    handover.remember_result(add(book, 3, key="job-3"), b'"result":3', 10.0)

    frames = handover.adoption_frames([running, cancelled], WALL_MS + 1000, 12.0)

    assert [p.decode_adopt_meta(frames[0]), frames[1:4]] == [
        (p.encode_key(1), 4000, 1), [b"work", b"job-1", b""]
    ]
    assert [p.decode_adopt_meta(frames[4]), frames[5:8]] == [
        (p.encode_key(3), 0, 0), [b"work", b"job-3", b'"result":3']
    ]
    assert len(frames) == 8


def test_nested_calls_awaiting_results_are_kept_for_resending_until_answered() -> None:
    handover = HandOver()
    handover.track_call(1, b"meta1", b"body1")
    handover.track_call(2, b"meta2", b"body2")
    handover.call_answered(1)

    assert handover.pending_calls() == [b"meta2", b"body2"]
    handover.clear()
    assert not handover and handover.pending_calls() == []


@pytest.mark.parametrize(("raw", "expected"), [
    (body(key="k-1"), "k-1"),
    (body(), None),
    (b'{"madrpc": {"idempotency_key": 5}, "idempotency_key": 1}', None),
    (b'["idempotency_key"]', None),
    (b'{"idempotency_key" broken', None),
])
def test_the_idempotency_key_is_read_from_the_body_only_when_present(
    raw: bytes, expected: str | None
) -> None:
    assert idempotency_key(raw) == expected


# ================================================================ WorkerFigures


def test_the_snapshot_describes_engines_requests_rates_and_methods() -> None:
    figures, book = WorkerFigures(), RequestBook()
    add(book, 1)
    parked = add(book, 2)
    parked.stage = Stage.PARKED
    engines = [EngineSlot(0, ready=True, busy=True), EngineSlot(1, ready=True, retiring=True)]
    figures.record("work", 0.01, None)
    figures.record("work", 0.02, -32000)
    figures.engine_restarts = 2

    snapshot = figures.snapshot(10.5, engines, book)

    assert {k: snapshot[k] for k in ("busy", "contexts", "ready_contexts", "held", "queued",
                                     "parked", "engine_restarts")} == {
        "busy": 1, "contexts": 1, "ready_contexts": 1, "held": 2, "queued": 2, "parked": 1,
        "engine_restarts": 2,
    }
    assert snapshot["totals"]["requests"] == 2
    assert snapshot["methods"]["work"]["errors"] == {"-32000": 1}


def test_without_metrics_completions_are_counted_but_no_histograms_kept() -> None:
    figures = WorkerFigures(collect_metrics=False)
    figures.record("work", 0.01, None)

    assert (figures.completed, figures.methods) == (1, {})
