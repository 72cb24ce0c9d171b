"""The JSON-RPC 2.0 layer: parsing client frames, building responses, client encoding.

Every expectation follows the JSON-RPC 2.0 specification (https://www.jsonrpc.org/specification)
and docs/protocol.md's ``madrpc`` options. ``parse_frame`` must never raise: each defect
becomes an ``Invalid`` holding the error to send back.
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from madrpc.config import MAX_TIMEOUT_MS
from madrpc.errors import ERROR_MESSAGES, ErrorCode
from madrpc.jsonrpc import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    Call,
    CallOptions,
    Invalid,
    batch_response,
    decode_response,
    encode_request,
    error_fragment,
    error_response,
    fragment_error_code,
    parse_frame,
    response,
)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def frame(value: Any) -> bytes:
    """Encode with the standard library, which also writes integers beyond 64 bits."""
    return json.dumps(value, allow_nan=False).encode()


def request(**members: Any) -> dict[str, Any]:
    """A valid request object, with ``members`` added or replaced."""
    base: dict[str, Any] = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}
    base.update(members)
    return base


def without(member: str, **members: Any) -> dict[str, Any]:
    value = request(**members)
    del value[member]
    return value


def parse_one(value: Any) -> Call | Invalid:
    parsed = parse_frame(frame(value))
    assert not isinstance(parsed, list)
    return parsed


def parse_call(value: Any) -> Call:
    parsed = parse_one(value)
    assert isinstance(parsed, Call), parsed
    return parsed


def parse_invalid(value: Any) -> Invalid:
    parsed = parse_one(value)
    assert isinstance(parsed, Invalid), parsed
    return parsed


def parse_raw_invalid(raw: bytes) -> Invalid:
    parsed = parse_frame(raw)
    assert isinstance(parsed, Invalid), parsed
    return parsed


def deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# ================================================================ single requests


def test_a_request_with_positional_params_becomes_a_call_with_a_list() -> None:
    call = parse_call(request(method="subtract", params=[42, 23], id=1))

    assert (call.method, call.params, call.id_json) == ("subtract", [42, 23], b"1")


def test_a_request_with_named_params_becomes_a_call_with_a_dict() -> None:
    call = parse_call(request(params={"subtrahend": 23, "minuend": 42}))

    assert call.params == {"subtrahend": 23, "minuend": 42}


def test_a_request_without_params_has_none_as_params() -> None:
    call = parse_call(without("params"))

    assert call.params is None


@pytest.mark.parametrize("params", [[], {}], ids=["empty-array", "empty-object"])
def test_empty_structured_params_are_accepted(params: Any) -> None:
    call = parse_call(request(params=params))

    assert call.params == params


def test_a_request_is_not_a_notification() -> None:
    call = parse_call(request())

    assert not call.is_notification


def test_a_request_without_an_id_is_a_notification() -> None:
    call = parse_call(without("id"))

    assert call.is_notification
    assert call.id_json is None


def test_a_null_id_is_a_request_that_gets_a_reply_with_a_null_id() -> None:
    call = parse_call(request(id=None))

    assert not call.is_notification
    assert call.id_json == b"null"


@pytest.mark.parametrize(
    ("request_id", "id_json"),
    [
        ("abc", b'"abc"'),
        ("", b'""'),
        ("\u00e9\u4e2d", '"\u00e9\u4e2d"'.encode()),
        (0, b"0"),
        (-7, b"-7"),
        (2**63 - 1, b"9223372036854775807"),
        (1.5, b"1.5"),
    ],
    ids=["string", "empty-string", "unicode-string", "zero", "negative", "int64-max", "fraction"],
)
def test_a_string_or_number_id_is_echoed_as_json(request_id: Any, id_json: bytes) -> None:
    call = parse_call(request(id=request_id))

    assert call.id_json == id_json


@pytest.mark.parametrize(
    "request_id", [True, False, {"a": 1}, {}, [1], []],
    ids=["true", "false", "object", "empty-object", "array", "empty-array"],
)
def test_an_id_that_is_not_a_string_number_or_null_is_an_invalid_request_with_null_id(
    request_id: Any,
) -> None:
    invalid = parse_invalid(request(id=request_id))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"null")


def test_a_missing_jsonrpc_member_is_an_invalid_request_that_keeps_the_id() -> None:
    invalid = parse_invalid(without("jsonrpc", id=7))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"7")


@pytest.mark.parametrize(
    "version", ["1.0", "2", "2.00", " 2.0", 2.0, 2, None, ["2.0"]],
    ids=["1.0", "2", "2.00", "leading-space", "float", "int", "null", "array"],
)
def test_a_jsonrpc_member_other_than_the_string_2_0_is_an_invalid_request(version: Any) -> None:
    invalid = parse_invalid(request(jsonrpc=version, id="x"))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b'"x"')


def test_a_missing_method_is_an_invalid_request_that_keeps_the_id() -> None:
    invalid = parse_invalid(without("method", id=3))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"3")


@pytest.mark.parametrize(
    "method", [1, None, True, ["add"], {"name": "add"}, ""],
    ids=["number", "null", "bool", "array", "object", "empty-string"],
)
def test_a_method_that_is_not_a_non_empty_string_is_an_invalid_request(method: Any) -> None:
    invalid = parse_invalid(request(method=method, id=3))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"3")


@pytest.mark.parametrize(
    "params", ["bar", 3, 1.5, True, None],
    ids=["string", "int", "float", "bool", "null"],
)
def test_params_that_are_not_an_array_or_object_are_an_invalid_request(params: Any) -> None:
    invalid = parse_invalid(request(params=params, id=4))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"4")


def test_an_invalid_notification_still_gets_an_error_with_a_null_id() -> None:
    invalid = parse_invalid(without("id", method=1))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"null")


def test_an_invalid_request_message_starts_with_the_standard_message() -> None:
    invalid = parse_invalid(request(method=""))

    assert invalid.message.startswith("Invalid Request")


@pytest.mark.parametrize(
    "document", [1, "request", None, True, 1.5],
    ids=["number", "string", "null", "bool", "float"],
)
def test_a_frame_that_is_neither_an_object_nor_an_array_is_an_invalid_request(
    document: Any,
) -> None:
    invalid = parse_invalid(document)

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"null")


def test_a_lone_request_keeps_its_frame_as_the_body_for_the_worker() -> None:
    raw = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'
    call = parse_frame(raw)

    assert isinstance(call, Call)
    assert call.encoded_body() == raw


def test_a_huge_integer_param_reaches_the_worker_digit_for_digit() -> None:
    raw = b'{"jsonrpc":"2.0","method":"f","params":[123456789012345678901234567890],"id":1}'
    call = parse_frame(raw)

    assert isinstance(call, Call)
    assert b"123456789012345678901234567890" in call.encoded_body()


def test_a_huge_integer_id_is_never_echoed_as_a_different_number() -> None:
    huge = 2**64 + 1
    parsed = parse_frame(b'{"jsonrpc":"2.0","method":"f","id":%d}' % huge)

    if isinstance(parsed, Invalid):  # refusing the id would also be correct
        assert parsed.code == INVALID_REQUEST
    else:
        assert isinstance(parsed, Call)
        assert json.loads(parsed.id_json or b"") == huge


def test_with_duplicate_keys_the_last_one_wins() -> None:
    call = parse_frame(b'{"jsonrpc":"2.0","method":"a","method":"b","id":1,"id":2}')

    assert isinstance(call, Call)
    assert (call.method, call.id_json) == ("b", b"2")


def test_nesting_within_the_parser_limit_is_accepted() -> None:
    call = parse_frame(b'{"jsonrpc":"2.0","method":"f","params":' + deep_array(200) + b',"id":1}')

    assert isinstance(call, Call)


# ================================================================ madrpc options


def test_a_request_without_madrpc_options_gets_the_defaults() -> None:
    call = parse_call(request())

    assert call.options == CallOptions(None, None, None)


def test_valid_madrpc_options_are_read() -> None:
    options = {"timeout_ms": 5000, "cpu_limit_ms": 250.5, "idempotency_key": "order-17"}
    call = parse_call(request(madrpc=options))

    assert call.options == CallOptions(
        timeout_ms=5000, idempotency_key="order-17", cpu_limit_ms=250.5
    )


def test_unknown_madrpc_keys_are_ignored() -> None:
    call = parse_call(request(madrpc={"timeout_ms": 10, "priority": "high", "future": [1]}))

    assert call.options == CallOptions(timeout_ms=10)


def test_an_empty_madrpc_object_gives_the_defaults() -> None:
    call = parse_call(request(madrpc={}))

    assert call.options == CallOptions()


@pytest.mark.parametrize("option", ["timeout_ms", "cpu_limit_ms"])
def test_a_limit_of_exactly_one_day_is_accepted(option: str) -> None:
    call = parse_call(request(madrpc={option: MAX_TIMEOUT_MS}))

    assert getattr(call.options, option) == MAX_TIMEOUT_MS


@pytest.mark.parametrize("option", ["timeout_ms", "cpu_limit_ms"])
@pytest.mark.parametrize(
    "value",
    [0, -1, -0.5, MAX_TIMEOUT_MS + 1, 10**30, "5000", True, [5000], {"ms": 5}],
    ids=["zero", "negative", "negative-fraction", "over-a-day", "huge-int", "string", "bool",
         "array", "object"],
)
def test_a_limit_that_is_not_a_number_in_range_is_an_invalid_request(
    option: str, value: Any
) -> None:
    invalid = parse_invalid(request(madrpc={option: value}, id=9))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"9")
    assert option in invalid.message


def test_an_idempotency_key_of_the_maximum_length_is_accepted() -> None:
    key = "k" * MAX_IDEMPOTENCY_KEY_LENGTH
    call = parse_call(request(madrpc={"idempotency_key": key}))

    assert call.options.idempotency_key == key


@pytest.mark.parametrize(
    "key", ["", "k" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1), 17, True, ["k"], {"k": 1}],
    ids=["empty", "too-long", "number", "bool", "array", "object"],
)
def test_an_idempotency_key_that_is_not_a_short_non_empty_string_is_an_invalid_request(
    key: Any,
) -> None:
    invalid = parse_invalid(request(madrpc={"idempotency_key": key}))

    assert invalid.code == INVALID_REQUEST
    assert "idempotency_key" in invalid.message


@pytest.mark.parametrize(
    "options", [5, "fast", [1], True], ids=["number", "string", "array", "bool"]
)
def test_a_madrpc_member_that_is_not_an_object_is_an_invalid_request(options: Any) -> None:
    invalid = parse_invalid(request(madrpc=options, id=2))

    assert (invalid.code, invalid.id_json) == (INVALID_REQUEST, b"2")


# ================================================================ batches


def test_a_batch_becomes_a_list_of_calls_in_order() -> None:
    parsed = parse_frame(frame([request(method="a", id=1), request(method="b", id=2)]))

    assert isinstance(parsed, list)
    assert [(c.method, c.id_json) for c in parsed if isinstance(c, Call)] == [
        ("a", b"1"), ("b", b"2"),
    ]


def test_a_batch_with_invalid_members_keeps_the_valid_ones_and_flags_the_rest() -> None:
    parsed = parse_frame(frame([
        request(method="sum", id="1"),
        without("id", method="notify_hello"),
        {"foo": "boo"},
        request(method=1, id="5"),
        request(method="get_data", id="9"),
    ]))

    assert isinstance(parsed, list)
    assert [(type(p).__name__, p.id_json) for p in parsed] == [
        ("Call", b'"1"'),
        ("Call", None),
        ("Invalid", b"null"),
        ("Invalid", b'"5"'),
        ("Call", b'"9"'),
    ]


def test_a_batch_of_notifications_parses_into_notifications_only() -> None:
    parsed = parse_frame(frame([without("id", method="a"), without("id", method="b")]))

    assert isinstance(parsed, list)
    assert all(isinstance(p, Call) and p.is_notification for p in parsed)


def test_an_empty_batch_is_a_single_invalid_request_not_a_list() -> None:
    parsed = parse_frame(b"[]")

    assert isinstance(parsed, Invalid)
    assert (parsed.code, parsed.id_json) == (INVALID_REQUEST, b"null")


@pytest.mark.parametrize(
    "member", [1, "x", None, True, [], [request()]],
    ids=["number", "string", "null", "bool", "empty-array", "nested-batch"],
)
def test_a_batch_member_that_is_not_an_object_is_an_invalid_request_with_null_id(
    member: Any,
) -> None:
    parsed = parse_frame(frame([member]))

    assert isinstance(parsed, list)
    assert [(type(p), p.code, p.id_json) for p in parsed if isinstance(p, Invalid)] == [
        (Invalid, INVALID_REQUEST, b"null")
    ]


def test_each_non_object_member_gets_its_own_error() -> None:
    parsed = parse_frame(b"[1,2,3]")

    assert isinstance(parsed, list)
    assert [p.code for p in parsed if isinstance(p, Invalid)] == [INVALID_REQUEST] * 3


def test_a_batch_larger_than_the_limit_is_a_single_invalid_request() -> None:
    parsed = parse_frame(frame([request(id=i) for i in range(4)]), max_batch=3)

    assert isinstance(parsed, Invalid)
    assert (parsed.code, parsed.id_json) == (INVALID_REQUEST, b"null")


def test_a_batch_exactly_at_the_limit_is_accepted() -> None:
    parsed = parse_frame(frame([request(id=i) for i in range(3)]), max_batch=3)

    assert isinstance(parsed, list)
    assert len(parsed) == 3


def test_a_batch_member_is_re_encoded_with_method_params_id_and_options_for_the_worker() -> None:
    parsed = parse_frame(frame([request(method="add", params={"a": 1},
                                        madrpc={"timeout_ms": 5, "idempotency_key": "k"})]))

    assert isinstance(parsed, list) and isinstance(parsed[0], Call)
    assert orjson.loads(parsed[0].encoded_body()) == {
        "method": "add", "params": {"a": 1}, "id": 1,
        "madrpc": {"timeout_ms": 5, "idempotency_key": "k"},
    }


def test_a_batch_member_without_params_is_re_encoded_without_params() -> None:
    parsed = parse_frame(frame([without("params", method="ping")]))

    assert isinstance(parsed, list) and isinstance(parsed[0], Call)
    assert orjson.loads(parsed[0].encoded_body()) == {"method": "ping", "id": 1}


def test_a_deeply_nested_batch_member_is_refused_or_encodable() -> None:
    raw = b'[{"jsonrpc":"2.0","method":"f","params":' + deep_array(300) + b',"id":1}]'
    parsed = parse_frame(raw)

    assert isinstance(parsed, list)
    member = parsed[0]
    if isinstance(member, Call):
        assert orjson.loads(member.encoded_body())["method"] == "f"
    else:
        assert member.code in (PARSE_ERROR, INVALID_REQUEST)


# ================================================================ parse errors


NOT_JSON = {
    "spec-example": b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
    "spec-batch-example": b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
    b'{"jsonrpc": "2.0", "method"]',
    "empty-frame": b"",
    "whitespace-only": b"  \n ",
    "trailing-garbage": b'{"jsonrpc":"2.0","method":"f","id":1} x',
    "two-documents": b"{}{}",
    "single-quotes": b"{'jsonrpc':'2.0'}",
    "trailing-comma": b'{"jsonrpc":"2.0","method":"f",}',
    "invalid-utf8-in-string": b'{"jsonrpc":"2.0","method":"f\xff","id":1}',
    "overlong-utf8": b'{"jsonrpc":"2.0","method":"\xc0\xaf","id":1}',
    "utf8-encoded-surrogate": b'{"jsonrpc":"2.0","method":"\xed\xa0\x80","id":1}',
    "latin1": '{"jsonrpc":"2.0","method":"caf\u00e9","id":1}'.encode("latin-1"),
    "nan": b'{"jsonrpc":"2.0","method":"f","params":[NaN],"id":1}',
    "infinity": b'{"jsonrpc":"2.0","method":"f","params":[Infinity],"id":1}',
    "minus-infinity": b'{"jsonrpc":"2.0","method":"f","params":[-Infinity],"id":1}',
    "1e400": b'{"jsonrpc":"2.0","method":"f","params":[1e400],"id":1}',
    "1e400-as-id": b'{"jsonrpc":"2.0","method":"f","id":1e400}',
    "lone-high-surrogate": b'{"jsonrpc":"2.0","method":"f","params":["\\ud800"],"id":1}',
    "lone-low-surrogate": b'{"jsonrpc":"2.0","method":"f","params":["\\udc00"],"id":1}',
    "reversed-surrogates": b'{"jsonrpc":"2.0","method":"f","params":["\\udc00\\ud800"],"id":1}',
    "deep-nesting-2000": b'{"jsonrpc":"2.0","method":"f","params":' + deep_array(2000)
    + b',"id":1}',
    "deep-batch-2000": deep_array(2000),
    "unterminated-string": b'{"jsonrpc":"2.0","method":"f',
    "control-char-in-string": b'{"jsonrpc":"2.0","method":"a\x01b","id":1}',
}


@pytest.mark.parametrize("raw", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_frame_that_is_not_valid_json_is_a_parse_error_with_null_id(raw: bytes) -> None:
    invalid = parse_raw_invalid(raw)

    assert (invalid.code, invalid.id_json) == (PARSE_ERROR, b"null")


def test_a_parse_error_message_starts_with_the_standard_message() -> None:
    invalid = parse_raw_invalid(b"{")

    assert invalid.message.startswith("Parse error")


def test_a_valid_surrogate_pair_escape_is_accepted() -> None:
    call = parse_frame(b'{"jsonrpc":"2.0","method":"f","params":["\\ud83d\\ude00"],"id":1}')

    assert isinstance(call, Call)
    assert call.params == ["\U0001f600"]


def _mutations(rng: random.Random, seed_frames: list[bytes], count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seed_frames))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0 and data:
                del data[min(position, len(data) - 1)]
            elif action == 1:
                data.insert(position, rng.randrange(256))
            else:
                data[position:position] = rng.choice(
                    [b"[", b"]", b"{", b"}", b'"', b"\\u", b"\\ud800", b"1e999", b",", b":",
                     b"null", b"true", b"-", b"\xff", b"NaN"]
                )
        out.append(bytes(data))
    return out


def test_parse_frame_never_raises_and_every_error_has_a_json_rpc_code() -> None:
    rng = random.Random(20240611)
    seeds = [
        frame(request()),
        frame([request(), without("id"), request(madrpc={"timeout_ms": 5, "x": 1})]),
        frame(request(params={"a": [1, {"b": None}], "c": "\u00e9"}, id="s")),
        *NOT_JSON.values(),
    ]
    inputs = seeds + _mutations(rng, seeds, 3000) + [rng.randbytes(rng.randrange(64))
                                                     for _ in range(500)]
    codes = {int(code) for code in ErrorCode}

    for raw in inputs:
        parsed = parse_frame(raw)
        for item in parsed if isinstance(parsed, list) else [parsed]:
            assert isinstance(item, (Call, Invalid)), raw
            if isinstance(item, Invalid):
                assert item.code in codes, raw
                orjson.loads(item.response())


# ================================================================ responses


def test_an_error_response_is_a_json_rpc_2_0_error_object() -> None:
    sent = orjson.loads(error_response(b"1", ErrorCode.METHOD_NOT_FOUND))

    assert sent == {
        "jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"},
    }


def test_an_error_response_carries_a_custom_message_and_data() -> None:
    sent = orjson.loads(
        error_response(b'"q"', ErrorCode.TIMEOUT, "Timeout after 5 ms", {"timeout_ms": 5})
    )

    assert sent["id"] == "q"
    assert sent["error"] == {
        "code": -32003, "message": "Timeout after 5 ms", "data": {"timeout_ms": 5},
    }


def test_an_error_response_without_data_has_no_data_member() -> None:
    sent = orjson.loads(error_response(b"null", ErrorCode.PARSE_ERROR))

    assert "data" not in sent["error"]


def test_a_response_wraps_a_result_fragment_with_the_id() -> None:
    sent = orjson.loads(response(b'"abc"', b'"result":{"sum":3}'))

    assert sent == {"jsonrpc": "2.0", "id": "abc", "result": {"sum": 3}}


def test_a_response_forwards_the_result_bytes_untouched() -> None:
    fragment = b'"result":[1.000,  2e0, "\\u00e9"]'

    assert fragment in response(b"1", fragment)


def test_a_batch_response_is_a_json_array_of_the_responses_in_order() -> None:
    parts = [response(b"1", b'"result":1'), error_response(b"2", ErrorCode.INVALID_PARAMS)]

    sent = orjson.loads(batch_response(parts))

    assert [item["id"] for item in sent] == [1, 2]
    assert sent[1]["error"]["code"] == -32602


def test_an_invalid_answers_with_its_own_error_response() -> None:
    invalid = Invalid(b'"x"', ErrorCode.INVALID_REQUEST, "Invalid Request: nope")

    assert invalid.response() == error_response(
        b'"x"', ErrorCode.INVALID_REQUEST, "Invalid Request: nope"
    )


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_an_error_fragment_without_a_message_uses_the_table_message(code: ErrorCode) -> None:
    error = orjson.loads(b"{" + error_fragment(code) + b"}")["error"]

    assert error == {"code": int(code), "message": ERROR_MESSAGES[code]}


def test_an_error_fragment_for_a_code_outside_the_table_says_server_error() -> None:
    error = orjson.loads(b"{" + error_fragment(-32099) + b"}")["error"]

    assert error == {"code": -32099, "message": "Server error"}


def test_an_error_fragment_starts_with_the_error_member_name() -> None:
    assert error_fragment(ErrorCode.OVERLOADED).startswith(b'"error":{')


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_fragment_error_code_reads_back_the_code_of_an_error_fragment(code: ErrorCode) -> None:
    assert fragment_error_code(error_fragment(code, "m", {"code": 1})) == int(code)


def test_fragment_error_code_is_none_for_a_result() -> None:
    assert fragment_error_code(b'"result":{"error":{"code":-32000}}') is None


def test_fragment_error_code_finds_the_code_after_other_members() -> None:
    assert fragment_error_code(b'"error":{"message":"m","code":-32601}') == -32601


@pytest.mark.parametrize(
    "fragment",
    [b'"error":{"message":"no code"}', b'"error":{"code":"x","message":"m"}',
     b'"error":{"code":'],
    ids=["missing-code", "string-code", "truncated"],
)
def test_fragment_error_code_reports_internal_error_for_a_malformed_error(
    fragment: bytes,
) -> None:
    assert fragment_error_code(fragment) == -32603


# ================================================================ client side


def test_an_encoded_request_parses_back_into_the_same_call() -> None:
    call = parse_frame(encode_request("add", [1, 2], 7, {"timeout_ms": 500}))

    assert isinstance(call, Call)
    assert (call.method, call.params, call.id_json, call.options) == (
        "add", [1, 2], b"7", CallOptions(timeout_ms=500),
    )


def test_an_encoded_request_is_a_json_rpc_2_0_request_object() -> None:
    assert orjson.loads(encode_request("add", {"a": 1}, "r1")) == {
        "jsonrpc": "2.0", "method": "add", "params": {"a": 1}, "id": "r1",
    }


def test_tuple_params_are_encoded_as_an_array() -> None:
    assert orjson.loads(encode_request("add", (1, 2), 1))["params"] == [1, 2]


def test_a_request_encoded_without_an_id_is_a_notification() -> None:
    call = parse_frame(encode_request("log", ["hi"], None))

    assert isinstance(call, Call)
    assert call.is_notification


def test_a_request_encoded_without_params_or_options_has_neither_member() -> None:
    assert orjson.loads(encode_request("ping", None, 1, {})) == {
        "jsonrpc": "2.0", "method": "ping", "id": 1,
    }


def test_decode_response_reads_back_a_built_response() -> None:
    assert decode_response(error_response(b"5", ErrorCode.NO_WORKER)) == {
        "jsonrpc": "2.0", "id": 5, "error": {"code": -32001, "message": "No worker available"},
    }


def test_decode_response_reads_back_a_batch() -> None:
    sent = decode_response(batch_response([response(b"1", b'"result":null')]))

    assert sent == [{"jsonrpc": "2.0", "id": 1, "result": None}]


def test_decode_response_raises_value_error_for_a_frame_that_is_not_json() -> None:
    with pytest.raises(ValueError):
        decode_response(b"{oops")


# ---------------------------------------------------------------- worker fragments


@pytest.mark.parametrize(("fragment", "code"), [
    (b'"result":1', None),
    (b'"result":{"a":[1,"}",{"b":null}]}', None),
    (b'"result":"with \\"quotes\\" and , commas"', None),
    (b'"error":{"code":-32000,"message":"boom","data":{"stack":"x"}}', -32000),
])
def test_a_well_formed_fragment_passes_unchanged_with_its_code(
    fragment: bytes, code: int | None
) -> None:
    from madrpc.jsonrpc import checked_fragment

    assert checked_fragment(fragment) == (code, fragment)


@pytest.mark.parametrize("fragment", [
    b'"result":1,"id":"spoofed"', b'"result":{}}', b'"result":', b'"result":1 2',
    b'"error":{"code":"x","message":"m"}', b'"error":{"code":1}', b'"error":1',
    b'{"result":1}', b"", b'"result":[1',
])
def test_a_fragment_that_is_not_one_value_or_one_error_object_is_refused(
    fragment: bytes,
) -> None:
    from madrpc.jsonrpc import checked_fragment

    assert checked_fragment(fragment) is None


def test_a_method_name_over_the_length_limit_is_an_invalid_request() -> None:
    from madrpc.jsonrpc import MAX_METHOD_LENGTH

    ok = parse_frame(orjson.dumps({"jsonrpc": "2.0", "method": "m" * MAX_METHOD_LENGTH,
                                   "id": 1}))
    long = parse_frame(orjson.dumps({"jsonrpc": "2.0", "method": "m" * (MAX_METHOD_LENGTH + 1),
                                     "id": 1}))

    assert isinstance(ok, Call)
    assert isinstance(long, Invalid) and long.code == ErrorCode.INVALID_REQUEST
