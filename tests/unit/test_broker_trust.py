"""The broker's trust boundary and bounds as a pure state machine: keys by role, what a
worker may answer, fair sharing between clients, and tables hostile input cannot grow."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from broker_support import W1, W2, call, error_code, hold, new_state, ready, reply, sent

from madrpc import protocol as p
from madrpc.broker_state import BrokerState
from madrpc.curve import KeyRing
from madrpc.errors import ErrorCode

CLIENT_KEY = "c" * 40
ADMIN_KEY = "a" * 40
WORKER_KEY = "w" * 40
OTHER_WORKER_KEY = "v" * 40


def ring(clients: set[str] | None = None, workers: set[str] | None = None,
         admins: set[str] | None = None) -> KeyRing:
    def encoded(keys: set[str] | None) -> set[bytes] | None:
        return None if keys is None else {k.encode() for k in keys}

    return KeyRing(encoded(clients if clients is not None else {CLIENT_KEY}),
                   encoded(workers if workers is not None else {WORKER_KEY}) or set(),
                   encoded(admins if admins is not None else {ADMIN_KEY}))


def curve_state(**overrides: Any) -> tuple[BrokerState, KeyRing]:
    keys = ring()
    state = new_state(keys=keys, **overrides)
    ready(state, W1, peer=WORKER_KEY)
    state.take_sends()
    return state, keys


# ================================================================ keys by role


def test_a_ready_from_a_key_outside_the_worker_directory_registers_nothing() -> None:
    state = new_state(keys=ring())
    for peer in (None, CLIENT_KEY, ADMIN_KEY, "x" * 40):
        ready(state, W1, peer=peer)

    assert not state.workers and state.figures.dropped["bad worker frames"] == 4


def test_a_worker_registers_with_its_key_and_a_message_under_another_key_is_a_strangers(
) -> None:
    state, _ = curve_state()
    [key] = hold(state, W1, peer=CLIENT_KEY)
    reply(state, W1, (key, b'"result":3'), peer=OTHER_WORKER_KEY)
    out = sent(state)

    assert state.workers[W1].key == WORKER_KEY
    assert out.replies == [] and out.to(W1, p.DISCONNECT)
    assert state.figures.counters["late_replies"] == 1


def test_a_revoked_worker_leaves_with_a_disconnect_and_its_requests_run_elsewhere() -> None:
    keys = ring(workers={WORKER_KEY, OTHER_WORKER_KEY})
    state = new_state(keys=keys)
    ready(state, W1, peer=WORKER_KEY, credit=1)
    ready(state, W2, peer=OTHER_WORKER_KEY, credit=1)
    state.take_sends()
    [key] = hold(state, W1, peer=CLIENT_KEY)
    keys.update({CLIENT_KEY.encode()}, {OTHER_WORKER_KEY.encode()}, {ADMIN_KEY.encode()})
    state.on_keys_reloaded(1.0)
    out = sent(state)

    assert list(state.workers) == [W2]
    assert out.to(W1, p.DISCONNECT) and out.keys(W2) == [key]
    ready(state, W1, peer=WORKER_KEY)   # and it cannot come back on its open connection
    assert list(state.workers) == [W2]


def test_a_client_key_may_call_and_an_admin_key_too() -> None:
    state, _ = curve_state()
    call(state, rid=1, peer=CLIENT_KEY)
    call(state, rid=2, peer=ADMIN_KEY)

    assert len(sent(state).keys(W1)) == 2


def test_a_key_no_longer_allowed_gets_forbidden_for_each_request_with_its_id() -> None:
    state, _ = curve_state()
    call(state, rid=7, peer="z" * 40)
    batch = orjson.dumps([{"jsonrpc": "2.0", "method": "add", "id": 8},
                          {"jsonrpc": "2.0", "method": "add"},
                          {"jsonrpc": "2.0", "method": "_ping", "id": 9}])
    state.on_client_frame([b"client", b"", batch], 0.0, "z" * 40)
    out = sent(state)

    [(_, single), (_, group)] = out.replies
    assert (single["id"], error_code(single)) == (7, ErrorCode.FORBIDDEN)
    assert [(r["id"], error_code(r)) for r in group] == [(8, -32010), (9, -32010)]
    assert out.keys(W1) == []


@pytest.mark.parametrize(("peer", "allowed"), [(CLIENT_KEY, False), (ADMIN_KEY, True)])
def test_drain_is_for_admin_keys_only(peer: str, allowed: bool) -> None:
    state, _ = curve_state()
    worker_id = W1.hex()
    call(state, "_drain", params={"worker": worker_id}, peer=peer)
    [(_, response)] = sent(state).replies

    if allowed:
        assert response["result"]["paused"] is True and state.workers[W1].paused
    else:
        assert error_code(response) == ErrorCode.FORBIDDEN and not state.workers[W1].paused


def test_a_drained_worker_gets_nothing_new_until_resumed() -> None:
    state = new_state()
    ready(state, W1, credit=5)
    call(state, "_drain", rid=1, params={"worker": W1.hex()})
    call(state, rid=2)
    assert sent(state).keys(W1) == [] and state.requests.queued == 1

    call(state, "_drain", rid=3, params={"worker": W1.hex(), "resume": True})
    state.on_tick(0.1)
    assert len(sent(state).keys(W1)) == 1


# ================================================================ what a worker may answer


def test_a_reply_fragment_that_would_add_an_id_becomes_an_internal_error() -> None:
    state = new_state()
    ready(state, W1)
    [key] = hold(state, W1)
    reply(state, W1, (key, b'"result":1,"id":"spoofed"'))
    [(_, response)] = sent(state).replies

    assert response["id"] == 1 and error_code(response) == ErrorCode.INTERNAL_ERROR
    assert "malformed reply" in response["error"]["message"]
    assert state.report.metrics(0.0)["broker"]["bounds"]["malformed_replies"] == 1


@pytest.mark.parametrize("fragment", [
    b'"result":{"a":1}}', b'"result":', b'"error":{"code":-1}', b'"error":{"message":"m"}',
    b'"error":[1]', b"whatever", b'"result":1 2',
])
def test_a_malformed_fragment_never_reaches_the_client_as_is(fragment: bytes) -> None:
    state = new_state()
    ready(state, W1)
    [key] = hold(state, W1)
    reply(state, W1, (key, fragment))
    [(_, response)] = sent(state).replies

    assert set(response) == {"jsonrpc", "id", "error"} and response["id"] == 1


def test_a_well_formed_error_fragment_passes_with_its_code() -> None:
    state = new_state()
    ready(state, W1)
    [key] = hold(state, W1)
    reply(state, W1, (key, b'"error":{"code":-32602,"message":"bad","data":{"x":[1]}}'))
    [(_, response)] = sent(state).replies

    assert response["error"] == {"code": -32602, "message": "bad", "data": {"x": [1]}}


def test_a_reply_for_a_request_the_worker_was_never_sent_is_dropped_and_counted() -> None:
    state = new_state()
    ready(state, W1)
    ready(state, W2)
    [key] = hold(state, W1)
    reply(state, W2, (key, b'"result":666'))

    assert sent(state).replies == [] and state.figures.counters["late_replies"] == 1
    reply(state, W1, (key, b'"result":3'))
    assert [r["result"] for _, r in sent(state).replies] == [3]


def adopt_frames(key: int, client_key: str, fragment: bytes) -> list[bytes]:
    return p.message(p.ADOPT, p.encode_adopt_meta(p.encode_key(key), 5000, 0), b"add",
                     client_key.encode(), fragment)


def test_adopt_after_the_adoption_window_plants_nothing_and_cancels_what_runs() -> None:
    state = new_state(adoption_grace_s=1.0)
    ready(state, W1, now=2.0)
    state.take_sends()
    state.on_worker_message(W1, adopt_frames(7, "job-1", b'"result":"planted"'), 2.0)
    state.on_worker_message(W1, adopt_frames(8, "job-2", b""), 2.0)
    out = sent(state)
    call(state, "add", rid=1, now=2.0, idempotency_key="job-1")

    assert out.cancels(W1) == [p.encode_key(8)]
    assert state.figures.dropped["ADOPT after the adoption window"] == 2
    assert len(sent(state).keys(W1)) == 1   # it runs: nothing was planted


def test_adopt_within_the_window_stores_only_well_formed_results() -> None:
    state = new_state(adoption_grace_s=5.0)
    ready(state, W1)
    state.on_worker_message(W1, adopt_frames(7, "job-1", b'"result":1,"id":"x"'), 1.0)
    state.on_worker_message(W1, adopt_frames(8, "job-2", b'"result":42'), 1.0)
    call(state, "add", rid=1, now=1.0, idempotency_key="job-1")
    call(state, "add", rid=2, now=1.0, idempotency_key="job-2")
    out = sent(state)

    assert len(out.keys(W1)) == 1   # job-1 runs again; job-2 is answered from the store
    assert [r["result"] for _, r in out.replies] == [42]


# ================================================================ fair sharing


def test_a_client_over_its_request_cap_gets_overloaded_with_a_retry_hint() -> None:
    state = new_state(max_client_requests=3)
    for rid in range(1, 5):
        call(state, "add", rid=rid, client=b"greedy")
    call(state, "add", rid=9, client=b"modest")
    [(_, refused)] = [r for r in sent(state).replies]

    assert refused["id"] == 4 and error_code(refused) == ErrorCode.OVERLOADED
    assert refused["error"]["data"] == {"retry_after_ms": 100}
    assert state.requests.queued == 4   # three of greedy's and modest's one wait


def test_a_finished_request_gives_its_client_room_again() -> None:
    state = new_state(max_client_requests=1)
    ready(state, W1)
    [key] = hold(state, W1)
    reply(state, W1, (key, b'"result":3'))
    sent(state)
    call(state, "add", rid=2, client=b"c0")

    assert len(sent(state).keys(W1)) == 1


def test_with_curve_a_client_is_its_key_across_connections() -> None:
    state, _ = curve_state(max_client_requests=1)
    call(state, "add", rid=1, client=b"conn-1", peer=CLIENT_KEY)
    call(state, "add", rid=2, client=b"conn-2", peer=CLIENT_KEY)
    [(route, refused)] = sent(state).replies

    assert route == b"conn-2" and error_code(refused) == ErrorCode.OVERLOADED


def test_a_rate_limited_client_is_told_how_long_to_wait() -> None:
    state = new_state(client_rate=10.0, client_burst=2)
    for rid, now in ((1, 0.0), (2, 0.0), (3, 0.0), (4, 0.1)):
        call(state, "add", rid=rid, now=now)
    replies = sent(state).replies

    assert [(r["id"], r["error"]["data"]) for _, r in replies] == [(3, {"retry_after_ms": 100})]


def test_a_connection_that_leaves_replies_unread_gets_overloaded_and_others_do_not() -> None:
    state = new_state(max_client_backlog_bytes=100)
    assert state.backlog.hold([b"slow", b"", b"x" * 150])
    call(state, "add", rid=1, client=b"slow")
    call(state, "add", rid=2, client=b"fast")
    [(route, refused)] = sent(state).replies

    assert route == b"slow" and error_code(refused) == ErrorCode.OVERLOADED
    assert state.requests.queued == 1
    assert not state.backlog.hold([b"slow", b"", b"x" * 100])   # past twice the bound: dropped
    assert state.report.metrics(0.0)["broker"]["bounds"]["backlog_dropped"] == 1


# ================================================================ bounded tables


def test_unknown_methods_leave_nothing_behind() -> None:
    state = new_state()
    ready(state, W1)
    for n in range(2000):
        call(state, f"nope-{n}", rid=n, client=b"c%d" % (n % 50))
    replies = sent(state).replies

    assert {error_code(r) for _, r in replies} == {ErrorCode.METHOD_NOT_FOUND}
    assert set(state.figures.methods) == set()
    assert list(state.report.metrics(0.0)["methods"]) == ["add"]
    assert state.requests.queued_methods() == []


def test_requests_for_methods_nobody_serves_leave_no_queue_behind_when_they_expire() -> None:
    state = new_state()
    for n in range(500):
        call(state, f"later-{n}", rid=n, client=b"c%d" % (n % 50), timeout_ms=1000)
    state.on_tick(2.0)

    assert state.requests.queued == 0 and state.requests.queued_methods() == []
    assert set(state.figures.methods) == set()


def test_answered_requests_leave_the_deadline_heap_however_long_their_deadline() -> None:
    state = new_state()
    ready(state, W1, credit=100)
    for n in range(20_000):
        call(state, "add", rid=n, client=b"c%d" % (n % 10), timeout_ms=86_400_000)
        [key] = sent(state).keys(W1)
        reply(state, W1, (key, b'"result":3'))
        sent(state)

    assert state.requests.deadline_entries() < 5_000


def test_a_name_longer_than_the_limit_is_an_invalid_request() -> None:
    state = new_state()
    call(state, "x" * 257)
    [(_, response)] = sent(state).replies

    assert error_code(response) == ErrorCode.INVALID_REQUEST


def test_metrics_list_only_the_busiest_methods_however_many_are_registered() -> None:
    state = new_state(max_methods_reported=5)
    ready(state, W1, methods=tuple(f"m{n}" for n in range(500)), credit=1000)
    for n in range(20):
        call(state, "m7", rid=n, client=b"c%d" % n)
    for key in sent(state).keys(W1):
        reply(state, W1, (key, b'"result":1'))
    snapshot = state.report.metrics(1.0)

    assert len(snapshot["methods"]) == 5 and "m7" in snapshot["methods"]
    assert snapshot["broker"]["bounds"]["methods_known"] == 500
    assert len(orjson.dumps(snapshot)) < 256 * 1024


def test_only_max_workers_may_register() -> None:
    state = new_state(max_workers=2)
    for n in range(4):
        ready(state, b"w%d" % n)

    assert len(state.workers) == 2 and state.figures.dropped["bad worker frames"] == 2


def test_a_huge_heartbeat_snapshot_is_dropped_not_kept() -> None:
    state = new_state()
    ready(state, W1)
    state.on_worker_message(W1, p.json_message(p.HEARTBEAT, {"x": "y" * 300_000}), 0.1)

    assert state.workers[W1].stats == {}
    assert state.figures.dropped["heartbeat snapshot too large"] == 1


def test_error_codes_chosen_by_scripts_are_counted_within_a_bound() -> None:
    state = new_state()
    ready(state, W1, credit=1000)
    keys = hold(state, W1, count=300)
    for n, key in enumerate(keys):
        reply(state, W1, (key, b'"error":{"code":%d,"message":"m"}' % (1000 + n)))

    assert len(state.figures.errors) <= 101
    assert len(state.figures.methods["add"].errors) <= 101


def test_a_workers_own_call_cannot_plant_a_result_for_a_clients_key() -> None:
    state = new_state()
    ready(state, W1, credit=5)
    body = orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 2],
                         "madrpc": {"idempotency_key": "victim-8"}})
    state.on_worker_message(W1, p.message(p.CALL, p.encode_call_meta(1, p.NO_PARENT), body), 0)
    [planted] = sent(state).keys(W1)
    reply(state, W1, (planted, b'"result":200'))
    sent(state)
    call(state, "add", rid=1, idempotency_key="victim-8")

    assert len(sent(state).keys(W1)) == 1   # the client's call runs: nothing is replayed


def test_with_curve_one_clients_idempotency_keys_are_its_own() -> None:
    other_client = "d" * 40
    state = new_state(keys=ring(clients={CLIENT_KEY, other_client}))
    ready(state, W1, peer=WORKER_KEY, credit=5)
    call(state, "add", rid=1, peer=CLIENT_KEY, idempotency_key="k")
    call(state, "add", rid=2, peer=other_client, idempotency_key="k")

    assert len(sent(state).keys(W1)) == 2
    assert state.figures.counters["idempotent_hits"] == 0


# ---------------------------------------------------------------- the wrong port (first run)

def test_a_worker_at_the_clients_port_is_told_so_in_a_disconnect() -> None:
    from madrpc.broker_state import FRONTEND

    state = new_state()
    state.on_client_frame([b"w", p.TAG, p.READY, b'{"methods": ["a"], "credit": 1}'], 0.0)

    [(side, frames)] = state.take_sends()
    assert side == FRONTEND
    assert frames[:3] == [b"w", p.TAG, p.DISCONNECT]
    reason = orjson.loads(frames[3])["reason"]
    assert reason.startswith(p.WRONG_PORT) and "backend" in reason
    assert state.figures.dropped["worker message on the frontend"] == 1


def test_a_client_at_the_workers_port_gets_an_error_saying_so_for_each_id() -> None:
    state = new_state()
    batch = b'[{"jsonrpc": "2.0", "method": "a", "id": 7}, {"jsonrpc": "2.0", "method": "b"}]'
    state.on_worker_message(b"c", [b"", batch], 0.0)

    out = sent(state)
    [frames] = out.backend
    assert frames[:2] == [b"c", b""]
    response = orjson.loads(frames[2])
    assert response["id"] == 7 and response["error"]["code"] == -32600
    assert "backend, the workers' port" in response["error"]["message"]
