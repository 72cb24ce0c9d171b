"""WorkerState as a pure state machine: broker frames, engine output and a float ``now``
in; broker messages and engine STEPs out. No sockets, no processes, no clocks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from madrpc import engine_protocol as ep
from madrpc import protocol as p
from madrpc.config import WorkerConfig
from madrpc.errors import ErrorCode
from madrpc.worker_calls import PendingCall
from madrpc.worker_state import MAX_ENGINE_RESETS, Stage, WorkerState

WALL_MS = 1_700_000_000_000.0
"""Wall clock (ms since the epoch) the tests pretend it is."""
CALL_BODY = b'{"jsonrpc":"2.0","method":"inner","params":[1]}'

# ---------------------------------------------------------------- helpers


def new_state(engines: int = 1, **overrides: Any) -> WorkerState:
    """A worker with ``engines`` ready engines (and as many contexts in its config). Steps
    are queued on busy engines only where a test asks (``queue_step_ms``)."""
    overrides.setdefault("queue_step_ms", 0.0)
    state = WorkerState(WorkerConfig(script="test.js", contexts=engines, **overrides))
    for _ in range(engines):
        index = state.add_engine()
        state.on_engine_ready(index, b"engine-%d" % index)
    return state


def key_of(number: int) -> bytes:
    return p.encode_key(number)


def body_of(method: str, rid: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": [rid], "id": rid})


def request_frames(
    number: int, method: str = "work", timeout_ms: int = 5000, cpu_limit_ms: int = 0,
    depth: int = 0,
) -> list[bytes]:
    meta = p.encode_request_meta(key_of(number), timeout_ms, cpu_limit_ms, depth)
    return [meta, method.encode(), body_of(method, number)]


def deliver(state: WorkerState, *numbers: int, method: str = "work", now: float = 0.0) -> None:
    """One REQUEST message from the broker holding requests with these key numbers."""
    frames = [f for n in numbers for f in request_frames(n, method)]
    state.on_requests(frames, now, WALL_MS)


def local_of(state: WorkerState, number: int) -> int:
    return state.requests.by_key[key_of(number)]


def steps(state: WorkerState, now: float = 0.0) -> dict[int, dict[str, Any]]:
    """Schedule, and return each engine's STEP payload decoded."""
    state.schedule(now, WALL_MS)
    out: dict[int, dict[str, Any]] = {}
    for index, frames in state.take_engine_messages():
        assert frames[0] == b"STEP" and len(frames) == 3 and frames[2] == b""
        assert index not in out
        out[index] = orjson.loads(frames[1])
    return out


def started(payload: dict[str, Any]) -> list[int]:
    """Local ids of the requests a STEP starts."""
    return [entry[0] for entry in payload.get("r", [])]


def broker_messages(state: WorkerState) -> list[p.Message]:
    return [p.decode(frames) for frames in state.take_broker_messages()]


def reply_of(state: WorkerState) -> tuple[int, list[tuple[bytes, bytes]]]:
    """(credit, [(broker key, fragment)]) of the one REPLY the worker has to send."""
    replies = [m for m in broker_messages(state) if m.command == p.REPLY]
    assert len(replies) == 1
    return replies[0].credit(), replies[0].pairs(1)


def error_code(fragment: bytes) -> int:
    return int(orjson.loads(b"{" + fragment + b"}")["error"]["code"])


def run(state: WorkerState, number: int, method: str, run_s: float, now: float) -> None:
    """Deliver one request and let an engine finish it in ``run_s``; discard the output."""
    deliver(state, number, method=method, now=now)
    [(index, payload)] = steps(state, now).items()
    assert started(payload) == [local_of(state, number)]
    state.on_engine_output(
        index, True, b'R %d "result":0' % local_of(state, number), now + run_s
    )
    state.take_broker_messages()


QUICK_S = 0.0001
SLOW_S = 0.5


# ---------------------------------------------------------------- requests in


def test_request_frames_become_queued_requests() -> None:
    state = new_state()
    frames = [*request_frames(1, "add", timeout_ms=5000, depth=2), *request_frames(2, "mul")]
    state.on_requests(frames, 3.0, WALL_MS)
    assert [state.requests[local].method for local in state.requests.queue] == ["add", "mul"]
    request = state.requests[local_of(state, 1)]
    assert request.stage is Stage.QUEUED
    assert request.key == key_of(1)
    assert request.body == body_of("add", 1)
    assert request.deadline_ms == WALL_MS + 5000
    assert request.depth == 2
    assert request.received_at == 3.0


def test_a_cpu_limit_asked_by_the_client_below_the_workers_own_applies() -> None:
    state = new_state(cpu_limit_s=60.0)
    state.on_requests(request_frames(1, cpu_limit_ms=250), 0.0, WALL_MS)
    state.on_requests(request_frames(2), 0.0, WALL_MS)
    assert state.requests[local_of(state, 1)].cpu_limit_ms == 250
    assert state.requests[local_of(state, 2)].cpu_limit_ms == 60_000


# ---------------------------------------------------------------- scheduling


def test_schedule_sends_a_step_with_the_request_body_to_an_idle_ready_engine() -> None:
    state = new_state()
    deliver(state, 1, method="add")
    assert steps(state) == {
        0: {"r": [[local_of(state, 1), WALL_MS + 5000, 60_000, 0, orjson.loads(body_of("add", 1))]]}
    }
    assert state.engines[0].busy
    assert state.requests[local_of(state, 1)].stage is Stage.RUNNING


def test_schedule_sends_nothing_to_an_engine_that_is_not_ready() -> None:
    state = WorkerState(WorkerConfig(script="test.js", contexts=1))
    state.add_engine()
    deliver(state, 1)
    assert steps(state) == {}


def test_schedule_sends_nothing_to_a_busy_engine() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    deliver(state, 2)
    assert steps(state) == {}
    assert list(state.requests.queue) == [local_of(state, 2)]


def test_quick_methods_are_batched_together_in_one_step() -> None:
    state = new_state()
    run(state, 100, "quick", QUICK_S, now=0.0)
    deliver(state, 1, 2, 3, method="quick", now=1.0)
    assert {i: started(s) for i, s in steps(state, 1.0).items()} == {
        0: [local_of(state, n) for n in (1, 2, 3)]
    }


def test_a_quick_batch_holds_at_most_max_batch_requests() -> None:
    state = new_state(max_batch=2)
    run(state, 100, "quick", QUICK_S, now=0.0)
    deliver(state, 1, 2, 3, method="quick", now=1.0)
    assert started(steps(state, 1.0)[0]) == [local_of(state, 1), local_of(state, 2)]


def test_a_quick_batch_holds_no_more_than_batch_threshold_ms_of_estimated_work() -> None:
    state = new_state(batch_threshold_ms=2.0)
    run(state, 100, "quick", 0.0008, now=0.0)
    deliver(state, 1, 2, 3, 4, 5, method="quick", now=1.0)
    assert started(steps(state, 1.0)[0]) == [local_of(state, 1), local_of(state, 2)]


def test_a_method_with_unknown_run_time_goes_alone_in_its_step() -> None:
    state = new_state()
    deliver(state, 1, 2, 3, method="new")
    assert {i: started(s) for i, s in steps(state).items()} == {0: [local_of(state, 1)]}


def test_a_slow_method_goes_alone_in_its_step() -> None:
    state = new_state()
    run(state, 100, "slow", SLOW_S, now=0.0)
    deliver(state, 1, 2, method="slow", now=1.0)
    assert started(steps(state, 1.0)[0]) == [local_of(state, 1)]


def test_a_quick_batch_stops_before_a_slow_request() -> None:
    state = new_state()
    run(state, 100, "quick", QUICK_S, now=0.0)
    run(state, 101, "slow", SLOW_S, now=1.0)
    deliver(state, 1, method="quick", now=2.0)
    deliver(state, 2, method="slow", now=2.0)
    assert started(steps(state, 2.0)[0]) == [local_of(state, 1)]


# ---------------------------------------------------------------- engine output


def test_an_r_line_becomes_a_reply_with_the_broker_key_and_returned_credit() -> None:
    state = new_state()
    deliver(state, 7)
    steps(state)
    local = local_of(state, 7)
    state.on_engine_output(0, True, b'R %d "result":42' % local, 0.1)
    assert reply_of(state) == (1, [(key_of(7), b'"result":42')])
    assert local not in state.requests and key_of(7) not in state.requests.by_key
    assert state.engines[0].held == set()


def test_a_request_unfinished_at_the_end_of_its_step_is_parked_and_its_credit_returned() -> None:
    state = new_state()
    deliver(state, 7)
    steps(state)
    state.on_engine_output(0, True, b"", 0.1)
    request = state.requests[local_of(state, 7)]
    assert request.stage is Stage.PARKED
    assert not request.holds_credit
    assert reply_of(state) == (1, [])
    assert not state.engines[0].busy


def test_a_c_line_becomes_a_call_with_the_parents_broker_key() -> None:
    state = new_state()
    deliver(state, 7)
    steps(state)
    state.on_engine_output(0, False, b"C 5 %d %b" % (local_of(state, 7), CALL_BODY), 0.01)
    [message] = [m for m in broker_messages(state) if m.command == p.CALL]
    [(meta, body)] = message.pairs()
    call_key, parent = p.decode_call_meta(meta)
    assert parent == key_of(7)
    assert body == CALL_BODY
    assert state.calls.get(call_key) == PendingCall(0, 0, 5, b"", stream=False)


def test_a_c_line_from_code_outside_any_request_has_no_parent() -> None:
    state = new_state()
    state.on_engine_output(0, False, b"C 5 0 %b" % CALL_BODY, 0.01)
    [message] = [m for m in broker_messages(state) if m.command == p.CALL]
    [(meta, _)] = message.pairs()
    assert p.decode_call_meta(meta)[1] == bytes(8)


def _park_a_call_on_engine_1(state: WorkerState) -> bytes:
    """Requests 1 and 2 run on engines 0 and 1; request 2 calls out and parks. Returns
    the call key the broker will answer."""
    deliver(state, 1, 2)
    assert {i: started(s) for i, s in steps(state).items()} == {
        0: [local_of(state, 1)], 1: [local_of(state, 2)],
    }
    state.on_engine_output(0, True, b'R %d "result":1' % local_of(state, 1), 0.1)
    state.on_engine_output(1, True, b"C 9 %d %b" % (local_of(state, 2), CALL_BODY), 0.1)
    [message] = [m for m in broker_messages(state) if m.command == p.CALL]
    return p.decode_call_meta(message.frames[0])[0]


def test_a_result_is_delivered_to_the_calling_engine_in_its_next_step() -> None:
    state = new_state(engines=2)
    call_key = _park_a_call_on_engine_1(state)
    state.on_results([(call_key, b'"result":42')])
    assert steps(state, 0.2) == {1: {"s": [[9, {"result": 42}]]}}
    assert len(state.calls) == 0


def test_a_result_for_an_engine_reset_since_the_call_is_dropped() -> None:
    state = new_state(engines=2)
    call_key = _park_a_call_on_engine_1(state)
    state.on_engine_died(1, "killed by signal 9", False, 0.15)
    state.on_engine_ready(1, b"engine-1-again")
    state.on_results([(call_key, b'"result":42')])
    payloads = steps(state, 0.2)
    assert all("s" not in payload for payload in payloads.values())
    assert started(payloads[0]) == [local_of(state, 2)]


def test_a_result_for_an_unknown_call_is_ignored() -> None:
    state = new_state()
    state.on_results([(key_of(999), b'"result":42')])
    assert steps(state) == {}


# ---------------------------------------------------------------- cancels


def test_a_cancel_of_a_queued_request_frees_its_credit_without_a_reply() -> None:
    state = new_state()
    deliver(state, 1)
    state.on_cancels([key_of(1)])
    assert reply_of(state) == (1, [])
    assert state.requests == {} and state.requests.by_key == {}
    assert steps(state) == {}


def test_a_cancel_of_a_parked_request_is_passed_to_its_engine() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    local = local_of(state, 1)
    state.on_engine_output(0, True, b"", 0.1)
    state.take_broker_messages()
    state.on_cancels([key_of(1)])
    assert local not in state.requests
    assert broker_messages(state) == []
    assert steps(state, 0.2) == {0: {"x": [local]}}


def test_the_reply_of_a_request_cancelled_while_running_is_dropped() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    local = local_of(state, 1)
    state.on_cancels([key_of(1)])
    state.on_engine_output(0, True, b'R %d "result":1' % local, 0.1)
    assert reply_of(state) == (1, [])
    assert local not in state.requests


def test_a_request_cancelled_while_running_that_then_parks_is_cancelled_in_its_engine() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    local = local_of(state, 1)
    state.on_cancels([key_of(1)])
    assert state.take_engine_messages() == [(0, ep.interrupt_message(local, b""))]
    state.on_engine_output(0, True, b"", 0.1)
    assert local not in state.requests
    assert steps(state, 0.2) == {0: {"x": [local]}}


def test_a_cancel_for_an_unknown_key_is_ignored() -> None:
    state = new_state()
    state.on_cancels([key_of(12345)])
    assert broker_messages(state) == []


# ---------------------------------------------------------------- engine trouble


def _two_quick_requests_in_one_step(state: WorkerState) -> tuple[int, int]:
    run(state, 100, "quick", QUICK_S, now=0.0)
    deliver(state, 1, 2, method="quick", now=1.0)
    first, second = local_of(state, 1), local_of(state, 2)
    assert started(steps(state, 1.0)[0]) == [first, second]
    return first, second


@pytest.mark.parametrize(
    ("reason", "code"), [("timeout", ErrorCode.TIMEOUT), ("oom", ErrorCode.OUT_OF_MEMORY)]
)
def test_an_engine_reset_fails_its_culprit_with_the_matching_error(
    reason: str, code: ErrorCode
) -> None:
    state = new_state()
    culprit, _ = _two_quick_requests_in_one_step(state)
    state.on_engine_reset(0, reason, culprit, b"", "limit hit", 1.5)
    credit, [(key, fragment)] = reply_of(state)
    assert key == key_of(1)
    assert error_code(fragment) == code
    assert code in (-32003, -32004)
    assert credit == 1


def test_an_engine_reset_requeues_the_other_requests_of_its_step() -> None:
    state = new_state()
    culprit, other = _two_quick_requests_in_one_step(state)
    state.on_engine_reset(0, "timeout", culprit, b"", "limit hit", 1.5)
    request = state.requests[other]
    assert request.stage is Stage.QUEUED and request.resets == 1
    assert state.engines[0].ready and not state.engines[0].busy
    assert started(steps(state, 1.6)[0]) == [other]


def test_an_engine_reset_keeps_what_the_engine_wrote_before_it() -> None:
    state = new_state()
    culprit, other = _two_quick_requests_in_one_step(state)
    state.on_engine_reset(0, "timeout", culprit, b'R %d "result":5' % other, "limit hit", 1.5)
    _, pairs = reply_of(state)
    assert dict(pairs)[key_of(2)] == b'"result":5'
    assert other not in state.requests


def _one_running_and_one_parked(state: WorkerState) -> tuple[int, int]:
    """Request 1 parked on engine 0, request 2 running alone on it."""
    run(state, 100, "quick", QUICK_S, now=0.0)
    deliver(state, 1, method="quick", now=1.0)
    steps(state, 1.0)
    state.on_engine_output(0, True, b"", 1.0001)
    deliver(state, 2, method="quick", now=1.1)
    assert started(steps(state, 1.1)[0]) == [local_of(state, 2)]
    state.take_broker_messages()
    return local_of(state, 1), local_of(state, 2)


@pytest.mark.parametrize(
    ("oom_likely", "code"), [(True, ErrorCode.OUT_OF_MEMORY), (False, ErrorCode.WORKER_LOST)]
)
def test_an_engine_that_died_running_one_request_blames_it(
    oom_likely: bool, code: ErrorCode
) -> None:
    state = new_state()
    parked, running = _one_running_and_one_parked(state)
    state.on_engine_died(0, "killed by signal 9", oom_likely, 1.2)
    _, [(key, fragment)] = reply_of(state)
    assert key == key_of(2)
    assert error_code(fragment) == code
    assert running not in state.requests
    assert not state.engines[0].ready


def test_an_engine_that_died_requeues_its_other_requests_to_run_solo() -> None:
    state = new_state()
    parked, _ = _one_running_and_one_parked(state)
    state.on_engine_died(0, "killed by signal 9", True, 1.2)
    assert state.requests[parked].stage is Stage.QUEUED
    assert state.requests[parked].solo
    state.on_engine_ready(0, b"engine-0-again")
    deliver(state, 3, method="quick", now=1.3)
    assert started(steps(state, 1.3)[0]) == [parked]


def test_an_engine_that_died_running_a_batch_blames_none_of_it() -> None:
    state = new_state()
    first, second = _two_quick_requests_in_one_step(state)
    state.take_broker_messages()
    state.on_engine_died(0, "exit status 1", True, 1.5)
    assert broker_messages(state) == []
    assert all(state.requests[r].solo for r in (first, second))
    assert list(state.requests.queue) == [first, second]


def test_a_request_that_survived_more_than_max_engine_resets_fails_with_worker_lost() -> None:
    state = new_state()
    deliver(state, 1)
    local = local_of(state, 1)
    for attempt in range(MAX_ENGINE_RESETS + 1):
        assert state.requests[local].stage is Stage.QUEUED
        now = float(attempt)
        assert started(steps(state, now)[0]) == [local]
        state.on_engine_output(0, True, b"", now + 0.1)  # parks: not blamed when it dies
        state.take_broker_messages()
        state.on_engine_died(0, "killed by signal 9", False, now + 0.2)
        state.on_engine_ready(0, b"engine-0-%d" % attempt)
    _, [(key, fragment)] = reply_of(state)
    assert key == key_of(1)
    assert error_code(fragment) == ErrorCode.WORKER_LOST
    assert local not in state.requests


def test_an_engine_reset_for_an_error_fails_the_requests_of_its_step() -> None:
    state = new_state()
    _two_quick_requests_in_one_step(state)
    state.on_engine_reset(0, "error", 0, b"", "context broke", 1.5)
    _, pairs = reply_of(state)
    assert [k for k, _ in pairs] == [key_of(1), key_of(2)]
    assert {error_code(f) for _, f in pairs} == {ErrorCode.INTERNAL_ERROR}


# ---------------------------------------------------------------- adaptive credit


def test_target_credit_after_quick_requests_is_contexts_times_one_plus_prefetch() -> None:
    state = new_state(engines=2, prefetch=4)
    run(state, 1, "quick", QUICK_S, now=0.0)
    assert state.target_credit == 2 * (1 + 4)


def test_target_credit_after_slow_requests_is_contexts_times_two() -> None:
    state = new_state(engines=2, prefetch=4)
    run(state, 1, "quick", QUICK_S, now=0.0)
    run(state, 2, "slow", SLOW_S, now=1.0)
    assert state.target_credit == 2 * 2


def test_credit_is_topped_up_when_requests_turn_quick() -> None:
    state = new_state(engines=2, prefetch=4)
    assert state.credit.issued == 4
    deliver(state, 1, method="quick")
    steps(state)
    state.on_engine_output(0, True, b'R %d "result":0' % local_of(state, 1), QUICK_S)
    credit, _ = reply_of(state)
    assert credit == 1 + (10 - 4)
    assert state.credit.issued == 10


def test_credit_is_withheld_when_requests_turn_slow() -> None:
    state = new_state(engines=2, prefetch=4)
    run(state, 1, "quick", QUICK_S, now=0.0)
    run(state, 2, "slow", SLOW_S, now=1.0)
    assert state.credit.issued == 10
    deliver(state, 3, method="slow", now=2.0)
    steps(state, 2.0)
    state.on_engine_output(0, True, b'R %d "result":0' % local_of(state, 3), 2.0 + SLOW_S)
    assert reply_of(state) == (0, [(key_of(3), b'"result":0')])
    assert state.credit.issued == 9


def test_a_draining_worker_returns_no_credit() -> None:
    state = new_state(engines=2, prefetch=4)
    state.draining = True
    deliver(state, 1, method="quick")
    steps(state)
    state.on_engine_output(0, True, b'R %d "result":0' % local_of(state, 1), QUICK_S)
    assert reply_of(state) == (0, [(key_of(1), b'"result":0')])
    assert state.credit.issued == 3


# ---------------------------------------------------------------- reset, logs, figures


def test_drop_all_forgets_every_request_and_resets_credit() -> None:
    state = new_state(engines=2)
    deliver(state, 1, 2, 3)
    steps(state)
    state.on_engine_output(1, True, b"C 4 %d %b" % (local_of(state, 2), CALL_BODY), 0.1)
    state.drop_all()
    assert state.requests == {} and state.requests.by_key == {}
    assert list(state.requests.queue) == [] and len(state.calls) == 0
    assert broker_messages(state) == []


def test_drop_all_resets_issued_credit_to_the_initial_credit() -> None:
    state = new_state(engines=2, prefetch=4)
    run(state, 1, "quick", QUICK_S, now=0.0)
    assert state.credit.issued == 10
    deliver(state, 2, 3, method="quick", now=1.0)
    state.drop_all()
    assert state.credit.issued == state.config.initial_credit == 4
    assert state.credit.to_return == 0


def test_drop_all_tells_engines_to_forget_their_parked_requests() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    local = local_of(state, 1)
    state.on_engine_output(0, True, b"", 0.1)
    state.drop_all()
    assert steps(state, 0.2) == {0: {"x": [local]}}


def test_a_reply_for_a_request_dropped_by_drop_all_is_not_sent() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    local = local_of(state, 1)
    state.drop_all()
    state.on_engine_output(0, True, b'R %d "result":1' % local, 0.1)
    assert broker_messages(state) == []


def test_a_retiring_engine_whose_requests_were_dropped_becomes_idle() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    local = local_of(state, 1)
    state.retire_engine(0)
    state.drop_all()
    state.on_engine_output(0, True, b'R %d "result":1' % local, 0.1)
    assert state.idle_retired() == [0]


def test_console_lines_end_up_in_logs() -> None:
    state = new_state()
    deliver(state, 1, method="add")
    steps(state)
    local = local_of(state, 1)
    outbox = b'L info %d ["add",1,"hello"]\nL warn 0 ["",null,"outside"]' % local
    state.on_engine_output(0, False, outbox, 0.01)
    assert state.logs == [("info", "add", 1, "hello"), ("warn", "", None, "outside")]


def test_a_console_line_that_is_not_json_is_logged_as_text() -> None:
    state = new_state()
    state.on_engine_output(0, False, b"L error 0 plain words", 0.01)
    assert state.logs == [("error", "", None, "plain words")]


def test_an_outbox_with_several_lines_yields_each_of_them() -> None:
    state = new_state()
    deliver(state, 1)
    steps(state)
    local = local_of(state, 1)
    outbox = b'L log %d ["work",1,"x"]\nC 3 %d %b\nR %d "result":2' % (
        local, local, CALL_BODY, local
    )
    state.on_engine_output(0, True, outbox, 0.5)
    commands = [m.command for m in broker_messages(state)]
    assert commands == [p.REPLY, p.CALL]
    assert len(state.logs) == 1


def test_removing_an_idle_retired_engine_is_not_counted_as_a_restart() -> None:
    state = new_state()
    new = state.add_engine()
    state.on_engine_ready(new, b"engine-new")
    state.retire_engine(0)
    assert state.idle_retired() == [0]
    state.remove_engine(0, 1.0)
    assert state.figures.engine_restarts == 0
    assert state.snapshot(1.0)["engine_restarts"] == 0


# ---------------------------------------------------------------- queued steps


def queued_state() -> WorkerState:
    """One engine, with 'work' known to take 6 ms and steps queued within 50 ms."""
    state = new_state(queue_step_ms=50.0)
    run(state, 100, "work", 0.006, 0.0)
    return state


def test_a_busy_engine_whose_step_ends_soon_is_sent_the_next_step_at_once() -> None:
    state = queued_state()
    deliver(state, 1, 2, now=1.0)
    state.schedule(1.0, WALL_MS)
    sent = state.take_engine_messages()

    assert [(index, started(orjson.loads(frames[1]))) for index, frames in sent] == [
        (0, [local_of(state, 1)]), (0, [local_of(state, 2)])]
    engine = state.engines[0]
    assert engine.step_requests == [local_of(state, 1)]
    assert engine.queued == [local_of(state, 2)]

    state.on_engine_output(0, True, b'R %d "result":1' % local_of(state, 1), 1.006)
    assert engine.step_requests == [local_of(state, 2)] and engine.busy
    assert [key for key, _ in reply_of(state)[1]] == [key_of(1)]


def test_no_step_is_queued_behind_a_long_or_unknown_one_or_with_queueing_off() -> None:
    long = new_state(queue_step_ms=50.0)
    run(long, 100, "work", 0.5, 0.0)
    off = new_state(queue_step_ms=0.0)
    run(off, 100, "work", 0.006, 0.0)
    unknown = new_state(queue_step_ms=50.0)
    for state in (long, off, unknown):
        deliver(state, 1, 2, now=1.0)
        state.schedule(1.0, WALL_MS)
        assert len(state.take_engine_messages()) == 1
        assert state.engines[0].queued is None


def test_a_reset_of_the_running_step_keeps_the_queued_one_which_runs_in_the_new_context(
) -> None:
    state = queued_state()
    deliver(state, 1, 2, now=1.0)
    state.schedule(1.0, WALL_MS)
    state.take_engine_messages()
    first, second = local_of(state, 1), local_of(state, 2)

    state.on_engine_reset(0, ep.ResetReason.CPU_LIMIT, first, b"", "ran 60000 ms", 1.5)

    [(_, [(key, fragment)])] = [reply_of(state)]
    assert key == key_of(1) and error_code(fragment) == ErrorCode.CPU_LIMIT
    engine = state.engines[0]
    assert engine.step_requests == [second] and engine.queued is None
    assert state.requests[second].stage is Stage.RUNNING   # not requeued: no second run
    assert state.requests[second].resets == 0
    assert steps(state, 1.5) == {}


def test_a_reset_of_a_flush_keeps_the_steps_sent_and_requeues_the_parked_requests() -> None:
    state = queued_state()
    deliver(state, 1, now=1.0)
    state.schedule(1.0, WALL_MS)
    state.take_engine_messages()
    parked = local_of(state, 1)
    state.on_engine_output(0, True, b"", 1.006)   # it awaits something: parked
    deliver(state, 2, now=1.01)
    state.schedule(1.01, WALL_MS)   # the engine runs a timer's flush meanwhile
    state.take_engine_messages()

    state.on_engine_reset(0, ep.ResetReason.CPU_LIMIT, 0, b"", "timer", 1.02,
                          step_done=False)

    engine = state.engines[0]
    assert engine.step_requests == [local_of(state, 2)] and engine.busy
    assert state.requests[local_of(state, 2)].stage is Stage.RUNNING
    assert state.requests[parked].stage is Stage.QUEUED and state.requests[parked].resets == 1


def test_an_engine_that_died_blames_its_running_request_not_the_queued_step() -> None:
    state = queued_state()
    deliver(state, 1, 2, now=1.0)
    state.schedule(1.0, WALL_MS)
    state.take_engine_messages()

    state.on_engine_died(0, "killed by signal 9", False, 1.1)

    [(key, fragment)] = reply_of(state)[1]
    assert key == key_of(1) and error_code(fragment) == ErrorCode.WORKER_LOST
    queued = state.requests[local_of(state, 2)]
    assert (queued.stage, queued.resets, queued.solo) == (Stage.QUEUED, 0, False)


def test_a_request_of_the_queued_step_is_interrupted_when_cancelled() -> None:
    state = queued_state()
    deliver(state, 1, 2, now=1.0)
    state.schedule(1.0, WALL_MS)
    state.take_engine_messages()

    state.on_cancels([key_of(2)])

    assert state.take_engine_messages() == [
        (0, ep.interrupt_message(local_of(state, 2), ep.POOLED))]


def test_abandoning_everything_drops_the_queued_step_with_the_engines_abort() -> None:
    state = queued_state()
    deliver(state, 1, 2, now=1.0)
    state.schedule(1.0, WALL_MS)
    state.take_engine_messages()

    assert state.abandon_all() == [0]
    state.on_engine_reset(0, ep.ResetReason.ABORTED, 0, b"", "", 1.1)

    assert state.engines[0].idle
