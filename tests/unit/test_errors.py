"""The error code table and the exception tree."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from madrpc.errors import (
    ERROR_MESSAGES,
    ErrorCode,
    JSError,
    MadrpcError,
    MessageTooLargeError,
    ProtocolError,
    RpcError,
    RpcTimeoutError,
    TransportError,
    rpc_error_from_object,
)

STANDARD_CODES = {
    "PARSE_ERROR": -32700,
    "INVALID_REQUEST": -32600,
    "METHOD_NOT_FOUND": -32601,
    "INVALID_PARAMS": -32602,
    "INTERNAL_ERROR": -32603,
}
"""The five codes the JSON-RPC 2.0 specification defines (section 5.1)."""


def test_the_standard_codes_are_the_json_rpc_2_0_numbers() -> None:
    assert {name: int(ErrorCode[name]) for name in STANDARD_CODES} == STANDARD_CODES


@pytest.mark.parametrize(
    "code", [c for c in ErrorCode if c.name not in STANDARD_CODES], ids=lambda c: c.name
)
def test_every_madrpc_code_is_in_the_implementation_defined_server_error_range(
    code: ErrorCode,
) -> None:
    assert -32099 <= code <= -32000


def test_the_timeout_and_js_exception_codes_are_the_documented_ones() -> None:
    assert (ErrorCode.TIMEOUT, ErrorCode.JS_EXCEPTION) == (-32003, -32000)


def test_every_error_code_has_a_default_message() -> None:
    assert set(ERROR_MESSAGES) == set(ErrorCode)


def test_the_standard_codes_have_the_specification_messages() -> None:
    assert [ERROR_MESSAGES[ErrorCode[name]] for name in STANDARD_CODES] == [
        "Parse error", "Invalid Request", "Method not found", "Invalid params", "Internal error",
    ]


# ================================================================ rpc_error_from_object


def test_a_timeout_error_object_becomes_an_rpc_timeout_error() -> None:
    error = rpc_error_from_object({"code": -32003, "message": "Timeout", "data": {"ms": 5}})

    assert type(error) is RpcTimeoutError
    assert (error.code, error.message, error.data) == (-32003, "Timeout", {"ms": 5})


def test_a_js_exception_error_object_becomes_a_js_error_with_name_and_stack() -> None:
    data = {"name": "TypeError", "message": "x is undefined", "stack": "at f (script.js:1)"}
    error = rpc_error_from_object({"code": -32000, "message": "JavaScript exception", "data": data})

    assert type(error) is JSError
    assert (error.name, error.stack) == ("TypeError", "at f (script.js:1)")


@pytest.mark.parametrize("code", [-32601, -32602, -32001, -32005, -31999, 42])
def test_any_other_error_object_becomes_a_plain_rpc_error(code: int) -> None:
    error = rpc_error_from_object({"code": code, "message": "m"})

    assert type(error) is RpcError
    assert (error.code, error.message) == (code, "m")


@pytest.mark.parametrize(
    "error_object", [None, "boom", 17, ["code", -32000]], ids=["null", "string", "number", "array"]
)
def test_an_error_member_that_is_not_an_object_becomes_an_internal_error(
    error_object: Any,
) -> None:
    error = rpc_error_from_object(error_object)

    assert type(error) is RpcError
    assert error.code == -32603
    assert repr(error_object) in error.message


@pytest.mark.parametrize(
    "error_object",
    [{"message": "m"}, {"code": "-32000", "message": "m"}, {"code": None, "message": "m"},
     {"code": -32000.5, "message": "m"}],
    ids=["missing", "string", "null", "fraction"],
)
def test_an_error_object_without_an_integer_code_becomes_an_internal_error(
    error_object: dict[str, Any],
) -> None:
    error = rpc_error_from_object(error_object)

    assert (type(error), error.code) == (RpcError, -32603)


def test_an_error_object_with_a_boolean_code_becomes_an_internal_error() -> None:
    error = rpc_error_from_object({"code": True, "message": "m"})

    assert error.code == -32603 and not isinstance(error.code, bool)


@pytest.mark.parametrize("message", [None, 5, ["m"]], ids=["missing", "number", "array"])
def test_an_error_object_with_a_message_that_is_not_a_string_still_gives_a_string(
    message: Any,
) -> None:
    error_object = {"code": -32601} if message is None else {"code": -32601, "message": message}

    assert isinstance(rpc_error_from_object(error_object).message, str)


def test_an_rpc_error_shows_its_code_and_message() -> None:
    assert str(RpcError(-32601, "Method not found")) == "[-32601] Method not found"


@pytest.mark.parametrize("data", [None, "text", ["TypeError"]], ids=["none", "string", "array"])
def test_a_js_error_without_a_data_object_has_no_name_or_stack(data: Any) -> None:
    error = JSError(-32000, "JavaScript exception", data)

    assert (error.name, error.stack) == (None, None)


# ================================================================ the tree


def test_an_rpc_timeout_error_is_a_builtin_timeout_error() -> None:
    assert isinstance(RpcTimeoutError(), TimeoutError)


def test_an_rpc_timeout_error_defaults_to_the_timeout_code_and_message() -> None:
    error = RpcTimeoutError()

    assert (error.code, error.message, error.data) == (-32003, "Timeout", None)


@pytest.mark.parametrize(
    ("exception", "parent"),
    [
        (RpcError, MadrpcError),
        (RpcTimeoutError, RpcError),
        (JSError, RpcError),
        (TransportError, MadrpcError),
        (MessageTooLargeError, TransportError),
        (ProtocolError, MadrpcError),
    ],
    ids=lambda cls: cls.__name__,
)
def test_the_exception_tree_matches_the_documented_hierarchy(
    exception: type[Exception], parent: type[Exception]
) -> None:
    assert issubclass(exception, parent)


@pytest.mark.parametrize(
    "error",
    [
        RpcError(-32601, "Method not found", {"method": "nope"}),
        RpcTimeoutError(-32003, "Timeout after 5 ms", {"timeout_ms": 5}),
        JSError(-32000, "boom", {"name": "Error", "stack": "at f"}),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_rpc_error_survives_pickling_with_its_type_and_fields(error: RpcError) -> None:
    copy = pickle.loads(pickle.dumps(error))

    assert (type(copy), copy.code, copy.message, copy.data, str(copy)) == (
        type(error), error.code, error.message, error.data, str(error),
    )


@pytest.mark.parametrize(
    "error",
    [MadrpcError("a"), TransportError("b"), MessageTooLargeError("c"), ProtocolError("d")],
    ids=lambda error: type(error).__name__,
)
def test_the_other_exceptions_survive_pickling(error: MadrpcError) -> None:
    copy = pickle.loads(pickle.dumps(error))

    assert (type(copy), copy.args) == (type(error), error.args)
