"""Every failure MaDRPC can report, and the JSON-RPC code it maps to.

One table (:data:`ERROR_MESSAGES`) maps each :class:`ErrorCode` to its default
message; docs/protocol.md reproduces it. Exceptions raised to Python callers::

    MadrpcError
    ├── RpcError                  the grid answered with a JSON-RPC error
    │   ├── RpcTimeoutError       -32003 (the grid's deadline) or -32013 (the client gave
    │   │                         up waiting), also a builtin TimeoutError
    │   ├── CancelledError        -32011, the call was cancelled
    │   └── JSError               -32000, a JavaScript exception (name, stack)
    ├── TransportError            the broker could not be reached / socket trouble
    │   └── MessageTooLargeError  a request larger than the broker accepts
    ├── ProtocolError             a peer sent frames we cannot decode
    ├── ConfigError               settings that cannot work (a key file, a public bind)
    ├── ScriptError               a user script failed to load (file:line:column)
    ├── WorkerStartError          a worker could not start (its script, its engines)
    └── EngineError               V8 failed outside any request (a broken install or a bug)

Exceptions from outside (zmq, V8) are translated into these once, where they arise.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

__all__ = [
    "CancelledError",
    "ConfigError",
    "ERROR_MESSAGES",
    "ErrorCode",
    "JSError",
    "MadrpcError",
    "MessageTooLargeError",
    "ProtocolError",
    "RpcError",
    "RpcTimeoutError",
    "ScriptError",
    "EngineError",
    "TransportError",
    "WorkerStartError",
    "rpc_error_from_object",
]


class ErrorCode(IntEnum):
    """JSON-RPC 2.0 error codes: the standard five, then MaDRPC's own (-32000..-32099)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    JS_EXCEPTION = -32000
    NO_WORKER = -32001
    OVERLOADED = -32002
    TIMEOUT = -32003
    OUT_OF_MEMORY = -32004
    WORKER_LOST = -32005
    DEPTH_EXCEEDED = -32006
    SHUTTING_DOWN = -32007
    MESSAGE_TOO_LARGE = -32008
    RESULT_NOT_SERIALIZABLE = -32009
    FORBIDDEN = -32010
    CANCELLED = -32011
    CPU_LIMIT = -32012
    CLIENT_TIMEOUT = -32013
    BROKER_UNREACHABLE = -32014


ERROR_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.PARSE_ERROR: "Parse error",
    ErrorCode.INVALID_REQUEST: "Invalid Request",
    ErrorCode.METHOD_NOT_FOUND: "Method not found",
    ErrorCode.INVALID_PARAMS: "Invalid params",
    ErrorCode.INTERNAL_ERROR: "Internal error",
    ErrorCode.JS_EXCEPTION: "JavaScript exception",
    ErrorCode.NO_WORKER: "No worker available",
    ErrorCode.OVERLOADED: "Overloaded",
    ErrorCode.TIMEOUT: "Timeout",
    ErrorCode.OUT_OF_MEMORY: "Out of memory",
    ErrorCode.WORKER_LOST: "Worker lost",
    ErrorCode.DEPTH_EXCEEDED: "Call depth exceeded",
    ErrorCode.SHUTTING_DOWN: "Shutting down",
    ErrorCode.MESSAGE_TOO_LARGE: "Message too large",
    ErrorCode.RESULT_NOT_SERIALIZABLE: "Result not serializable",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.CANCELLED: "Cancelled",
    ErrorCode.CPU_LIMIT: "CPU limit exceeded",
    ErrorCode.CLIENT_TIMEOUT: "Client timeout",
    ErrorCode.BROKER_UNREACHABLE: "Broker unreachable",
}


class MadrpcError(Exception):
    """Base of every exception MaDRPC raises."""


class RpcError(MadrpcError):
    """The grid answered a call with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.data))


class RpcTimeoutError(RpcError, TimeoutError):
    """The call did not finish in time: the grid's deadline passed (-32003), or the client
    gave up waiting (-32013)."""

    def __init__(
        self, code: int = ErrorCode.TIMEOUT, message: str = "Timeout", data: Any = None
    ) -> None:
        super().__init__(code, message, data)


class CancelledError(RpcError):
    """The call was cancelled (code -32011): by its client, or because the request that
    made it (a nested call's parent) failed or was cancelled."""

    def __init__(
        self, code: int = ErrorCode.CANCELLED, message: str = "Cancelled", data: Any = None
    ) -> None:
        super().__init__(code, message, data)


class JSError(RpcError):
    """The JavaScript function threw; ``name`` and ``stack`` come from the JS error."""

    @property
    def name(self) -> str | None:
        return self.data.get("name") if isinstance(self.data, dict) else None

    @property
    def stack(self) -> str | None:
        return self.data.get("stack") if isinstance(self.data, dict) else None


class TransportError(MadrpcError):
    """The broker could not be reached, or the socket failed."""


class MessageTooLargeError(TransportError):
    """A request is larger than the broker's maximum message size."""


class ProtocolError(MadrpcError):
    """A peer sent frames that do not follow the protocol."""


class ConfigError(MadrpcError):
    """Settings that cannot work: an unreadable key file, a public bind without CURVE."""


class ScriptError(MadrpcError):
    """A user script failed to load; the message names file, line and column."""


class WorkerStartError(MadrpcError):
    """A worker could not start: its script failed to load, registers nothing, or its
    engines did not come up."""


class EngineError(MadrpcError):
    """The V8 engine failed outside any request: the runtime could not be set up, or it
    was used wrongly (a MaDRPC bug, or a mini-racer it was not built for)."""


def rpc_error_from_object(error: Any) -> RpcError:
    """Build the right :class:`RpcError` subclass from a JSON-RPC ``error`` member."""
    if not isinstance(error, dict):
        return RpcError(ErrorCode.INTERNAL_ERROR, f"malformed error object: {error!r}")
    code = error.get("code")
    message = error.get("message")
    data = error.get("data")
    if not isinstance(code, int) or isinstance(code, bool):
        code = int(ErrorCode.INTERNAL_ERROR)
    if message is None:
        try:
            message = ERROR_MESSAGES[ErrorCode(code)]
        except ValueError:
            message = "Server error"
    elif not isinstance(message, str):
        message = str(message)
    if code in (ErrorCode.TIMEOUT, ErrorCode.CLIENT_TIMEOUT):
        return RpcTimeoutError(code, message, data)
    if code == ErrorCode.CANCELLED:
        return CancelledError(code, message, data)
    if code == ErrorCode.JS_EXCEPTION:
        return JSError(code, message, data)
    return RpcError(code, message, data)
