"""Large requests parsed without decoding their params (madrpc.jsonrpc_large): the same
answer as parse_frame for every frame, and no decoded params for a large lone call."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from madrpc.jsonrpc import Call, parse_frame
from madrpc.jsonrpc_large import LARGE_REQUEST_BYTES, parse_large_frame

BIG = "x" * LARGE_REQUEST_BYTES


def frame(**members: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **members})


def same_answer(data: bytes) -> None:
    """parse_large_frame answers as parse_frame, params aside (None for a large call)."""
    expected, got = parse_frame(data), parse_large_frame(data)
    if isinstance(expected, Call) and isinstance(got, Call):
        assert got.params is None or got.params == expected.params
        assert (got.method, got.id_json, got.options, got.body) == \
            (expected.method, expected.id_json, expected.options, expected.body)
    else:
        assert got == expected


@pytest.mark.parametrize("params", [[BIG], {"text": BIG}, [1, [2, {"a": BIG}]]])
def test_a_large_call_is_answered_as_before_without_decoding_its_params(params: Any) -> None:
    data = frame(id=7, method="echo", params=params,
                 madrpc={"timeout_ms": 5000, "idempotency_key": "k-1"})
    parsed = parse_large_frame(data)

    assert isinstance(parsed, Call)
    assert parsed.params is None and parsed.body == data   # forwarded as received
    assert (parsed.method, parsed.id_json) == ("echo", b"7")
    assert parsed.options.timeout_ms == 5000 and parsed.options.idempotency_key == "k-1"
    same_answer(data)


@pytest.mark.parametrize("data", [
    frame(id=1, method="echo", params=BIG),                        # params a string
    frame(id=1, method="echo", params=None, pad=BIG),              # params null
    frame(id=1, method="echo", params=12, pad=BIG),                # params a number
    frame(id=True, method="echo", params=[BIG]),                   # id a boolean
    frame(id=1, params=[BIG]),                                     # no method
    frame(id=1, method="", params=[BIG]),                          # empty method
    frame(id=1, method="m" * 300, params=[BIG]),                   # method too long
    orjson.dumps({"jsonrpc": "1.0", "id": 1, "method": "echo", "params": [BIG]}),
    frame(id=1, method="echo", params=[BIG], madrpc={"timeout_ms": -5}),
    frame(id=1, method="echo", params=[BIG], madrpc="nope"),
    frame(id=1, method="echo", params=[BIG]).replace(b'"id":1', b'"id":' + b"9" * 30),  # big id
    frame(method="echo", params=[BIG]),                            # a notification
])
def test_every_defect_of_a_large_call_gets_the_same_error_as_before(data: bytes) -> None:
    same_answer(data)


@pytest.mark.parametrize("data", [
    orjson.dumps([{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": [BIG]}]),  # batch
    frame(id=1, method="echo", params=[BIG])[:-1] + b",}",          # not valid JSON
    frame(id=1, method="echo", params=[BIG])[:-1],                 # cut short
    frame(id=1, method="echo", params=["\u00e9" + BIG]),           # not ASCII
    frame(id=1, method="echo", params=[BIG]).replace(b"xxxx", b"\xff\xfe", 1),   # bad UTF-8
    frame(id=1, method="echo", params=[BIG]).replace(b"xxxxxx", b"\\ud800", 1),  # lone surrogate
    b'{"jsonrpc":"2.0","id":1,"method":"echo","params":' + b"[" * 5000 + b"]" * 5000 + b"," +
    b'"pad":"' + BIG.encode() + b'"}',                             # nested too deep
    frame(id=1, method="echo", pad=BIG),                           # no params at all
    b" " * LARGE_REQUEST_BYTES + b"[]",                            # an empty batch
    b'"' + BIG.encode() + b'"',                                    # not an object
])
def test_frames_that_are_not_a_plain_large_call_are_parsed_whole_as_before(
    data: bytes,
) -> None:
    assert parse_large_frame(data) == parse_frame(data)


def test_the_brokers_own_methods_still_get_their_params() -> None:
    data = frame(id=1, method="_deploy", params={"files": {"a.js": BIG}})
    parsed = parse_large_frame(data)

    assert isinstance(parsed, Call) and parsed.params == {"files": {"a.js": BIG}}


def test_a_small_call_is_parsed_whole() -> None:
    data = frame(id=1, method="echo", params=[1, 2])
    assert parse_large_frame(data) == parse_frame(data)
