"""JSON-RPC 2.0 over one ZeroMQ frame: parsing, validation and response building.

Pure code (no sockets). The broker parses each client frame once with :func:`parse_frame`,
which never raises: every defect becomes an :class:`Invalid` carrying the JSON-RPC error
to send back. Responses are assembled from bytes so that a worker's result travels to
the client exactly as the worker encoded it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import orjson

from .config import MAX_TIMEOUT_MS
from .errors import ERROR_MESSAGES, ErrorCode

__all__ = [
    "DEFAULT_STREAM_WINDOW", "MAX_METHOD_LENGTH", "MAX_STREAM_WINDOW", "NULL", "Call",
    "CallOptions", "Invalid", "Parsed", "batch_response", "checked_fragment", "checked_items",
    "decode_response", "encode_request", "error_fragment", "error_response", "fit_frame",
    "fragment_error_code", "json_dumps", "load_frame", "parse_document", "parse_frame",
    "partial_response", "response",
]

_ERROR_CODE = re.compile(rb'"code"\s*:\s*(-?\d+)')
MAX_IDEMPOTENCY_KEY_LENGTH = 256
"""Longest ``madrpc.idempotency_key`` accepted (characters)."""
MAX_METHOD_LENGTH = 256
"""Longest method name accepted (characters); longer ones get -32600."""
MAX_MEMORY_MB = 1 << 20
"""Largest ``madrpc.max_memory_mb`` accepted (the worker's own limit applies anyway)."""
NULL = b"null"
"""The id of an error response to a request whose id could not be read."""


class CallOptions(NamedTuple):
    """MaDRPC's own request options, from the ``madrpc`` member of a request.

    (A named tuple: it is built for every request that has options, and a frozen
    dataclass costs several times more to build.)"""

    timeout_ms: float | None = None
    idempotency_key: str | None = None
    cpu_limit_ms: float | None = None
    max_memory_mb: float | None = None
    stream_window: int | None = None
    """For a stream (``"stream": true`` or ``{"window": n}``): items the worker may run
    ahead of what the client has taken; None for an ordinary call."""


NO_OPTIONS = CallOptions()
DEFAULT_STREAM_WINDOW = 64
"""Items a stream may run ahead of its consumer when it names no window (js/bootstrap.js
uses the same number)."""
MAX_STREAM_WINDOW = 10_000
"""Largest stream window a request may ask for."""


@dataclass(init=False, slots=True)
class Call:
    """One valid JSON-RPC request (or notification). One is built per request, so it writes
    its own ``__init__`` (see :mod:`madrpc.native_modules`)."""

    method: str
    params: list[Any] | dict[str, Any] | None
    id_json: bytes | None
    """The request id, encoded; ``None`` for a notification."""
    options: CallOptions
    body: bytes | None
    """The request as received, when it came alone in its frame (forwarded untouched)."""

    def __init__(
        self, method: str, params: list[Any] | dict[str, Any] | None, id_json: bytes | None,
        options: CallOptions, body: bytes | None = None,
    ) -> None:
        self.method = method
        self.params = params
        self.id_json = id_json
        self.options = options
        self.body = body

    @property
    def is_notification(self) -> bool:
        return self.id_json is None

    def encoded_body(self) -> bytes:
        """The request as the worker receives it: the original bytes when available."""
        if self.body is not None:
            return self.body
        member: dict[str, Any] = {"method": self.method}
        if self.params is not None:
            member["params"] = self.params
        if self.id_json is not None:
            member["id"] = orjson.loads(self.id_json)
        window = self.options.stream_window
        options = {name: value for name, value in (
            ("timeout_ms", self.options.timeout_ms),
            ("idempotency_key", self.options.idempotency_key),
            ("cpu_limit_ms", self.options.cpu_limit_ms),
            ("max_memory_mb", self.options.max_memory_mb),
            ("stream", None if window is None else {"window": window}),
        ) if value is not None}
        if options:
            member["madrpc"] = options
        self.body = json_dumps(member)
        return self.body


@dataclass(frozen=True, slots=True)
class Invalid:
    """A request that must be answered with an error (or a whole frame that failed)."""

    id_json: bytes
    code: int
    message: str
    data: Any = None

    def response(self) -> bytes:
        return error_response(self.id_json, self.code, self.message, self.data)


Parsed = Call | Invalid | list[Call | Invalid]


def json_dumps(value: Any) -> bytes:
    """Encode with orjson; this is the only JSON encoder the package uses."""
    return orjson.dumps(value)


def parse_frame(frame: bytes, *, max_batch: int = 10_000) -> Parsed:
    """Parse one client frame into a call, an error, or a batch of those. Never raises."""
    document = load_frame(frame)
    return document if isinstance(document, Invalid) else \
        parse_document(document, frame, max_batch=max_batch)


def load_frame(frame: bytes) -> Any:
    """The JSON document of ``frame``, or the -32700 :class:`Invalid` answering it."""
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        return Invalid(NULL, ErrorCode.PARSE_ERROR, f"Parse error: {exc}")


def parse_document(document: Any, frame: bytes | None, *, max_batch: int = 10_000) -> Parsed:
    """:func:`parse_frame` of the document decoded from ``frame`` (kept by a lone call)."""
    if isinstance(document, dict):
        return _parse_member(document, frame)
    if isinstance(document, list):
        if not document:
            return Invalid(NULL, ErrorCode.INVALID_REQUEST, "Invalid Request: empty batch")
        if len(document) > max_batch:
            return Invalid(
                NULL,
                ErrorCode.INVALID_REQUEST,
                f"Invalid Request: batch of {len(document)} exceeds the limit of {max_batch}",
            )
        return [_encodable(_no_stream(_parse_member(member, None))) for member in document]
    return Invalid(NULL, ErrorCode.INVALID_REQUEST, "Invalid Request: not an object or array")


def _parse_member(member: Any, body: bytes | None) -> Call | Invalid:
    if not isinstance(member, dict):
        return Invalid(NULL, ErrorCode.INVALID_REQUEST, "Invalid Request: not an object")
    if "id" in member:
        request_id = member["id"]
        if request_id is not None and (
            isinstance(request_id, bool) or not isinstance(request_id, (str, int, float))
        ):
            return _invalid(NULL, "id must be a string, a number or null")
        if isinstance(request_id, float) and request_id.is_integer() and abs(request_id) >= 2**63:
            # orjson reads integers beyond 64 bits as floats: echoing one would change it.
            return _invalid(NULL, "id is an integer too large to echo exactly; use a string")
        id_json: bytes | None = json_dumps(request_id)
    else:
        id_json = None
    error_id = id_json if id_json is not None else NULL
    if member.get("jsonrpc") != "2.0":
        return _invalid(error_id, 'jsonrpc must be exactly "2.0"')
    method = member.get("method")
    if not isinstance(method, str) or not method:
        return _invalid(error_id, "method must be a non-empty string")
    if len(method) > MAX_METHOD_LENGTH:
        return _invalid(error_id, f"method names are at most {MAX_METHOD_LENGTH} characters")
    params = member.get("params")
    if params is not None and not isinstance(params, (list, dict)):
        return _invalid(error_id, "params must be an array or an object")
    if "params" in member and params is None:
        return _invalid(error_id, "params must be an array or an object")
    options = NO_OPTIONS
    if "madrpc" in member:
        parsed_options = _parse_options(member["madrpc"])
        if isinstance(parsed_options, str):
            return _invalid(error_id, parsed_options)
        options = parsed_options
    return Call(method, params, id_json, options, body)


def _encodable(member: Call | Invalid) -> Call | Invalid:
    """A batch member is re-encoded for its worker now, so a member that cannot be
    (orjson writes less nesting than it reads) is refused here, not in the broker loop."""
    if isinstance(member, Call):
        try:
            member.encoded_body()
        except orjson.JSONEncodeError as exc:
            return _invalid(member.id_json or NULL, f"params cannot be forwarded: {exc}")
    return member


def _no_stream(member: Call | Invalid) -> Call | Invalid:
    """A stream's partial replies cannot be members of one batch response."""
    if isinstance(member, Call) and member.options.stream_window is not None:
        return _invalid(member.id_json or NULL, "a stream cannot be a batch member")
    return member


def _invalid(id_json: bytes, detail: str) -> Invalid:
    return Invalid(id_json, ErrorCode.INVALID_REQUEST, f"Invalid Request: {detail}")


def _parse_options(raw: Any) -> CallOptions | str:
    """Validate the ``madrpc`` member; return the options or a description of the defect."""
    if not isinstance(raw, dict):
        return "madrpc must be an object"
    timeout_ms = raw.get("timeout_ms")
    if timeout_ms is not None and not _positive_number(timeout_ms, MAX_TIMEOUT_MS):
        return f"madrpc.timeout_ms must be a number in (0, {MAX_TIMEOUT_MS}]"
    cpu_limit_ms = raw.get("cpu_limit_ms")
    if cpu_limit_ms is not None and not _positive_number(cpu_limit_ms, MAX_TIMEOUT_MS):
        return f"madrpc.cpu_limit_ms must be a number in (0, {MAX_TIMEOUT_MS}]"
    max_memory_mb = raw.get("max_memory_mb")
    if max_memory_mb is not None and not _positive_number(max_memory_mb, MAX_MEMORY_MB):
        return f"madrpc.max_memory_mb must be a number in (0, {MAX_MEMORY_MB}]"
    key = raw.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH
    ):
        return (
            "madrpc.idempotency_key must be a non-empty string of at most "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    stream = raw.get("stream")
    window: int | None = None
    if stream is True:
        window = DEFAULT_STREAM_WINDOW
    elif isinstance(stream, dict):
        window = stream.get("window", DEFAULT_STREAM_WINDOW)
        if not isinstance(window, int) or isinstance(window, bool) or not (
                0 < window <= MAX_STREAM_WINDOW):
            return f"madrpc.stream.window must be an integer in [1, {MAX_STREAM_WINDOW}]"
    elif stream is not None and stream is not False:
        return 'madrpc.stream must be true, false or {"window": n}'
    if window is not None and key is not None:
        return "a stream cannot be retried by idempotency key: leave one of them out"
    return CallOptions(timeout_ms, key, cpu_limit_ms, max_memory_mb, window)


def _positive_number(value: Any, upper: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 < value <= upper
    )


# ---------------------------------------------------------------- responses


def error_fragment(code: int, message: str | None = None, data: Any = None) -> bytes:
    """The ``"error": {...}`` member of a response, without braces."""
    error: dict[str, Any] = {
        "code": int(code),
        "message": message if message is not None else _default_message(code),
    }
    if data is not None:
        error["data"] = data
    return b'"error":' + json_dumps(error)


def fit_frame(frame: bytes, limit: int, what: str) -> bytes:
    """``frame``, or a -32008 error fragment in its place when it is over ``limit`` bytes."""
    if len(frame) <= limit:
        return frame
    return error_fragment(
        ErrorCode.MESSAGE_TOO_LARGE,
        f"Message too large: the {what} is {len(frame)} bytes, the limit is {limit}",
    )


def _default_message(code: int) -> str:
    try:
        return ERROR_MESSAGES[ErrorCode(code)]
    except ValueError:
        return "Server error"


def fragment_error_code(fragment: bytes) -> int | None:
    """The code of an ``"error": {"code": N, ...`` fragment; None for a result."""
    if not fragment.startswith(b'"error"'):
        return None
    match = _ERROR_CODE.search(fragment)
    return int(match.group(1)) if match else int(ErrorCode.INTERNAL_ERROR)


class _ErrorShape(msgspec.Struct):
    code: int
    message: str


_VALUE = msgspec.json.Decoder(msgspec.Raw)
_ERROR_OBJECT = msgspec.json.Decoder(_ErrorShape)
_RESULT_PREFIX = b'"result":'
_ERROR_PREFIX = b'"error":'


def checked_fragment(fragment: bytes) -> tuple[int | None, bytes] | None:
    """(error code or None, fragment) if ``fragment`` is exactly ``"result":<one JSON
    value>`` or ``"error":{"code":<int>,"message":<string>,...}``; None otherwise.

    A worker's fragment is spliced into a response as bytes (never decoded and encoded
    again); this check is what keeps it from closing the value early and adding members
    (a second ``id``). It validates the JSON without building Python objects."""
    try:
        if fragment.startswith(_RESULT_PREFIX):
            _VALUE.decode(memoryview(fragment)[len(_RESULT_PREFIX):])
            return None, fragment
        if fragment.startswith(_ERROR_PREFIX):
            error = _ERROR_OBJECT.decode(memoryview(fragment)[len(_ERROR_PREFIX):])
            if -(2**63) <= error.code < 2**63:   # what every JSON-RPC client can read
                return error.code, fragment
    except (msgspec.DecodeError, OverflowError):
        pass
    return None


_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def checked_items(items: bytes) -> int | None:
    """The number of items in ``items`` if it is exactly one JSON array of at least one
    value (a stream's partial reply, spliced into a response as bytes); None otherwise."""
    try:
        count = len(_ITEMS.decode(items))
    except msgspec.DecodeError:
        return None
    return count or None


def partial_response(id_json: bytes, items: bytes) -> bytes:
    """A stream's partial reply: ``items`` (a checked JSON array) for request ``id_json``."""
    return b"".join((b'{"jsonrpc":"2.0","id":', id_json, b',"madrpc":{"items":', items, b"}}"))


def response(id_json: bytes, fragment: bytes) -> bytes:
    """A whole response from a ``"result": ...`` or ``"error": ...`` fragment (one copy)."""
    return b"".join((b'{"jsonrpc":"2.0","id":', id_json, b",", fragment, b"}"))


def error_response(
    id_json: bytes, code: int, message: str | None = None, data: Any = None
) -> bytes:
    return response(id_json, error_fragment(code, message, data))


def batch_response(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


# ---------------------------------------------------------------- client side


def encode_request(
    method: str,
    params: list[Any] | tuple[Any, ...] | dict[str, Any] | None,
    request_id: int | str | None,
    options: dict[str, Any] | None = None,
) -> bytes:
    """Encode a request; ``request_id=None`` makes a notification."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        request["params"] = list(params) if isinstance(params, tuple) else params
    if request_id is not None:
        request["id"] = request_id
    if options:
        request["madrpc"] = options
    return json_dumps(request)


def decode_response(frame: bytes) -> Any:
    """Decode a response frame (object or batch array); raises ``ValueError`` if not JSON."""
    return orjson.loads(frame)
