"""The HTTP gateway's pure parts: planning a body, putting ids back, API keys, --listen."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import orjson
import pytest

from madrpc.cli_gateway import parse_listen
from madrpc.config import GatewayConfig
from madrpc.errors import ConfigError
from madrpc.gateway import Gateway, is_loopback
from madrpc.gateway_auth import MIN_KEY_LENGTH, ApiKeys, parse_keys, presented_key
from madrpc.gateway_core import (
    Plan,
    Refusal,
    assemble_batch,
    cancel_frame,
    is_partial,
    more_frame,
    partial_items,
    plan_body,
    restore_id,
)
from madrpc.jsonrpc import parse_frame, partial_response, response

KEY = "k" * MIN_KEY_LENGTH


def plan(body: object, default_timeout_s: float = 60.0) -> Plan | Refusal:
    ids = itertools.count(100)
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return plan_body(raw, lambda: next(ids), default_timeout_s)


def test_a_lone_call_travels_under_a_gateway_id_and_keeps_everything_else() -> None:
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "mine",
               "madrpc": {"timeout_ms": 2500, "extra": True}, "x": 1}
    made = plan(request)
    assert isinstance(made, Plan) and made.frame is not None
    sent = orjson.loads(made.frame)
    assert sent == {**request, "id": 100}
    assert made.names == {b"100": b'"mine"'}
    assert made.timeout_s == 2.5 and made.calls == 1 and made.batch is None


def test_a_call_without_timeout_gets_the_default_deadline() -> None:
    made = plan({"jsonrpc": "2.0", "method": "m", "id": 1}, default_timeout_s=7)
    assert isinstance(made, Plan) and made.timeout_s == 7


def test_a_notification_travels_untouched_and_expects_nothing() -> None:
    body = b'{"jsonrpc":"2.0","method":"log","params":["hi"]}'
    made = plan(body)
    assert isinstance(made, Plan)
    assert made.frame == body and not made.expects_reply


@pytest.mark.parametrize("body", [b'{"jsonrpc":"2.0",', b"[]", b"42",
                                  b'{"jsonrpc":"1.0","method":"m","id":3}',
                                  b'{"jsonrpc":"2.0","method":"m","id":18446744073709551616}'])
def test_an_invalid_body_is_refused_with_the_brokers_own_error(body: bytes) -> None:
    made = plan(body)
    broker_answer = parse_frame(body)
    assert isinstance(made, Refusal) and made.status == 400
    assert not isinstance(broker_answer, list)
    assert made.body == broker_answer.response()   # type: ignore[union-attr]


@pytest.mark.parametrize(("method", "status", "code"),
                         [("_cancel", 400, -32600), ("_more", 400, -32600),
                          ("_drain", 403, -32010), ("_deploy", 403, -32010)])
def test_methods_that_name_gateway_ids_or_administer_are_closed(method: str, status: int,
                                                                code: int) -> None:
    made = plan({"jsonrpc": "2.0", "method": method, "params": {"id": 1}, "id": 5})
    assert isinstance(made, Refusal) and made.status == status
    error = orjson.loads(made.body)
    assert error["id"] == 5 and error["error"]["code"] == code
    assert "not available over HTTP" in error["error"]["message"]


def test_a_batch_forwards_valid_members_and_answers_the_rest_in_order() -> None:
    batch = [{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1},
             {"jsonrpc": "2.0", "method": "log", "params": ["hi"]},
             {"foo": 1},
             {"jsonrpc": "2.0", "method": "_drain", "params": {"worker": "w"}, "id": 8},
             {"jsonrpc": "2.0", "method": "_cancel", "params": {"id": 1}},
             {"jsonrpc": "2.0", "method": "nope", "id": 1}]   # the same id again
    made = plan(batch)
    assert isinstance(made, Plan) and made.frame is not None
    sent = orjson.loads(made.frame)
    assert [m.get("id") for m in sent] == [100, None, 101]
    assert made.names == {b"100": b"1", b"101": b"1"}
    reply = b"[" + response(b"100", b'"result":3') + b"," + \
        response(b"101", b'"error":{"code":-32601,"message":"Method not found: nope"}') + b"]"
    answer = orjson.loads(assemble_batch(made, reply) or b"")
    assert [part["id"] for part in answer] == [1, None, 8, 1]
    assert answer[0]["result"] == 3
    assert answer[1]["error"]["code"] == -32600
    assert answer[2]["error"]["code"] == -32010
    assert answer[3]["error"]["code"] == -32601


def test_a_batch_of_notifications_answers_nothing() -> None:
    made = plan([{"jsonrpc": "2.0", "method": "log"}, {"jsonrpc": "2.0", "method": "log"}])
    assert isinstance(made, Plan) and not made.expects_reply and made.frame is not None
    assert assemble_batch(made, None) is None


def test_the_brokers_whole_batch_error_is_passed_on() -> None:
    made = plan([{"jsonrpc": "2.0", "method": "a", "id": 1}])
    assert isinstance(made, Plan)
    refusal = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"too big"}}'
    assert assemble_batch(made, refusal) == refusal


def test_restore_id_splices_the_callers_id_without_parsing_the_result() -> None:
    names = {b"7": b'"a-2"'}
    assert restore_id(response(b"7", b'"result":{"id":7}'), names) == \
        b'{"jsonrpc":"2.0","id":"a-2","result":{"id":7}}'
    odd = b'{ "id": 7, "jsonrpc": "2.0", "result": 1 }'   # not built by the broker
    assert orjson.loads(restore_id(odd, names))["id"] == "a-2"
    assert restore_id(b"not json", names) == b"not json"


def test_stream_partials_are_recognised_and_counted() -> None:
    partial = partial_response(b"9", b"[1, 2, 3]")
    final = response(b"9", b'"result":{"items":3}')
    assert is_partial(partial) and not is_partial(final)
    assert partial_items(partial) == 3 and partial_items(b"{}") == 0
    assert orjson.loads(more_frame(b"9", 3)) == {
        "jsonrpc": "2.0", "method": "_more", "params": {"id": 9, "n": 3}}


def test_cancel_frames_are_notifications_one_per_call() -> None:
    assert cancel_frame([]) is None
    assert orjson.loads(cancel_frame([b"4"]) or b"") == {
        "jsonrpc": "2.0", "method": "_cancel", "params": {"id": 4}}
    assert [m["params"]["id"] for m in orjson.loads(cancel_frame([b"4", b"5"]) or b"")] == [4, 5]


# ------------------------------------------------------------------------ API keys


def test_keys_files_skip_comments_and_refuse_short_keys() -> None:
    assert parse_keys(f"# team a\n\n{KEY}\n  {KEY}x  \n") == [KEY.encode(), (KEY + "x").encode()]
    with pytest.raises(ConfigError, match="at least 16 characters"):
        parse_keys("short\n", "keys.txt")


def test_a_key_is_taken_from_x_api_key_or_a_bearer_token() -> None:
    assert presented_key({"X-API-Key": KEY}) == KEY.encode()
    assert presented_key({"Authorization": f"Bearer {KEY}"}) == KEY.encode()
    assert presented_key({"Authorization": f"Basic {KEY}"}) is None
    assert presented_key({}) is None


def test_api_keys_allow_listed_keys_only_and_follow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(KEY + "\n")
    keys = ApiKeys(str(path))
    assert keys.allows(KEY.encode())
    assert not keys.allows(b"x" * MIN_KEY_LENGTH) and not keys.allows(None)
    other = "z" * 20
    path.write_text(other + "\n")
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))
    time.sleep(1.05)   # RELOAD_CHECK_S
    assert keys.allows(other.encode()) and not keys.allows(KEY.encode())


def test_an_empty_keys_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="no API keys"):
        ApiKeys(str(path))


# -------------------------------------------------------------------------- listen


def test_listen_addresses_parse_with_ipv6_brackets() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", "host:http", "h:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_loopback_hosts() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "198.18.0.1", "example.com", "::"]))


def test_the_gateway_refuses_a_public_address_without_keys() -> None:
    with pytest.raises(ConfigError, match="without --api-keys"):
        Gateway(GatewayConfig(host="0.0.0.0"))
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        Gateway(GatewayConfig(tls_cert="cert.pem"))
