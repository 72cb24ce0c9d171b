"""The worker protocol between broker and workers (Majordomo / Paranoid Pirate style).

Pure code: frame layouts, encoders and a decoder. Every message a worker's DEALER sends
(the broker's ROUTER adds the worker identity in front) and every message the broker
sends starts with the protocol tag :data:`TAG` (which carries the version) and a
command frame. The command's frames follow; see docs/protocol.md for the full table.

Request keys are opaque 8-byte values chosen by the broker; both sides use them as
dictionary keys without decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .errors import ProtocolError

__all__ = [
    "ABANDON",
    "ADOPT",
    "CALL",
    "CANCEL",
    "COMMANDS",
    "CREDIT",
    "DISCONNECT",
    "DRAIN",
    "FETCH",
    "HEARTBEAT",
    "KEY_SIZE",
    "MORE",
    "NO_PARENT",
    "PARTIAL",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "READY",
    "REPLY",
    "REQUEST",
    "RESULT",
    "SCRIPT",
    "TAG",
    "WRONG_PORT",
    "Message",
    "RequestMeta",
    "broker_run",
    "decode",
    "decode_adopt_meta",
    "decode_call_meta",
    "decode_credit",
    "decode_grant",
    "decode_key",
    "decode_request_meta",
    "disconnect_reason",
    "encode_adopt_meta",
    "encode_call_meta",
    "encode_credit",
    "encode_grant",
    "encode_key",
    "encode_request_meta",
    "json_message",
    "message",
]

PROTOCOL_NAME = b"MADRPC-W"
PROTOCOL_VERSION = 1
TAG = PROTOCOL_NAME + str(PROTOCOL_VERSION).encode()
"""First frame of every worker-protocol message: name and version."""

# Commands (Final: compiled modules that use them read a C static, not the module dict).
READY: Final = b"READY"           # W->B  [info json]
HEARTBEAT: Final = b"HEARTBEAT"   # both  [stats json]?
DISCONNECT: Final = b"DISCONNECT" # both [reason]?
REQUEST: Final = b"REQUEST"       # B->W  ([meta][method][body])+
REPLY: Final = b"REPLY"           # W->B  [credit] ([key][fragment])*
CREDIT: Final = b"CREDIT"         # W->B  [credit]
CALL: Final = b"CALL"             # W->B  ([call meta][body])+
RESULT: Final = b"RESULT"         # B->W  ([call key][fragment])+
CANCEL: Final = b"CANCEL"         # B->W  [key]+
DRAIN: Final = b"DRAIN"           # W->B  (no body): send me nothing more
ADOPT: Final = b"ADOPT"           # W->B  ([adopt meta][method][idempotency key][fragment])+
# Streams (docs/protocol.md §5.12): items travel producer -> consumer in PARTIAL, the
# consumer's grants travel back in MORE. Keys name the stream as its opener knows it.
PARTIAL: Final = b"PARTIAL"       # W->B  ([request key][items])+   B->W  ([call key][items])+
MORE: Final = b"MORE"             # B->W  ([request key][n])+       W->B  ([call key][n])+
ABANDON: Final = b"ABANDON"       # W->B  [call key]+: the worker's code no longer wants that call
# Code shipped through the grid (docs/protocol.md §5.13): a worker started without a
# script asks for the grid's current version; the broker sends it, and every new one.
FETCH: Final = b"FETCH"           # W->B  [version it runs, or empty]
SCRIPT: Final = b"SCRIPT"         # B->W  [version][bundle json]; [version]: none newer;
                                  # none yet: []

WRONG_PORT = "wrong port: "
"""How the reason of the DISCONNECT a broker sends to a worker at its clients' port starts."""

COMMANDS = frozenset(
    {READY, HEARTBEAT, DISCONNECT, REQUEST, REPLY, CREDIT, CALL, RESULT, CANCEL, DRAIN, ADOPT,
     PARTIAL, MORE, ABANDON, FETCH, SCRIPT}
)

_KEY = struct.Struct(">Q")
_CREDIT = struct.Struct(">I")
# Keys travel as their 8 bytes (the big-endian u64 of encode_key), packed as they are.
_REQUEST_META = struct.Struct(">8sIIHI")  # key, timeout_ms, cpu_limit_ms, depth, memory_mb
_CALL_META = struct.Struct(">Q8s")  # call key (worker's), parent request key (broker's)
_ADOPT_META = struct.Struct(">8sIH")  # request key (previous broker's), timeout_ms left, depth
KEY_SIZE = _KEY.size
NO_PARENT = bytes(KEY_SIZE)
"""The parent key in a CALL's meta when no request made the call (code outside any)."""


@dataclass(init=False, slots=True)
class RequestMeta:
    """What a worker needs to know about a request besides its body. One is built per
    request, so it writes its own ``__init__`` (see :mod:`madrpc.native_modules`)."""

    key: bytes
    timeout_ms: int
    """Time left until the request's deadline when the broker sent it."""
    cpu_limit_ms: int
    """Per-request CPU limit asked by the client; 0 means the worker's default."""
    depth: int
    """0 for a client's request, n for the n-th level of nested calls."""
    memory_mb: int
    """Per-request heap limit asked by the client; 0 means the worker's default."""

    def __init__(self, key: bytes, timeout_ms: int, cpu_limit_ms: int, depth: int,
                 memory_mb: int = 0) -> None:
        self.key = key
        self.timeout_ms = timeout_ms
        self.cpu_limit_ms = cpu_limit_ms
        self.depth = depth
        self.memory_mb = memory_mb


@dataclass(init=False, slots=True)
class Message:
    """A decoded worker-protocol message (one per message: its own ``__init__``, see
    :mod:`madrpc.native_modules`)."""

    command: bytes
    frames: list[bytes]
    """The frames after the command."""

    def __init__(self, command: bytes, frames: list[bytes] | None = None) -> None:
        self.command = command
        self.frames = frames if frames is not None else []

    def json(self) -> Any:
        """The first body frame as JSON (READY, HEARTBEAT); ``{}`` if absent."""
        if not self.frames or not self.frames[0]:
            return {}
        try:
            return orjson.loads(self.frames[0])
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"{self.command.decode()}: body is not JSON: {exc}") from exc

    def credit(self) -> int:
        """The credit frame of REPLY and CREDIT."""
        return decode_credit(self.frames[0])

    def pairs(self, start: int = 0) -> list[tuple[bytes, bytes]]:
        """Frames from ``start`` as (key, value) pairs (REPLY, CALL, RESULT)."""
        rest = self.frames[start:]
        return list(zip(rest[0::2], rest[1::2], strict=True))


def decode(frames: Sequence[bytes]) -> Message:
    """Check tag, version, command and frame counts; raise ProtocolError on any defect."""
    if len(frames) < 2:
        raise ProtocolError(f"message of {len(frames)} frame(s) is too short")
    tag, command = frames[0], frames[1]
    if tag != TAG:
        if tag.startswith(PROTOCOL_NAME):
            raise ProtocolError(
                f"protocol version mismatch: peer speaks {tag.decode(errors='replace')}, "
                f"we speak {TAG.decode()}"
            )
        raise ProtocolError(f"not a MaDRPC worker-protocol message (tag {tag[:16]!r})")
    if command not in COMMANDS:
        raise ProtocolError(f"unknown command {command[:16]!r}")
    message = Message(command, list(frames[2:]))
    _check_shape(message)
    return message


def _check_shape(message: Message) -> None:
    command, frames = message.command, message.frames
    count = len(frames)
    if command == REQUEST:
        ok = count > 0 and count % 3 == 0 and all(
            len(frames[i]) == _REQUEST_META.size for i in range(0, count, 3)
        )
    elif command == REPLY:
        ok = count % 2 == 1 and len(frames[0]) == _CREDIT.size and all(
            len(frames[i]) == KEY_SIZE for i in range(1, count, 2)
        )
    elif command == CREDIT:
        ok = count == 1 and len(frames[0]) == _CREDIT.size
    elif command == CALL:
        ok = count > 0 and count % 2 == 0 and all(
            len(frames[i]) == _CALL_META.size for i in range(0, count, 2)
        )
    elif command == RESULT:
        ok = count > 0 and count % 2 == 0 and all(
            len(frames[i]) == KEY_SIZE for i in range(0, count, 2)
        )
    elif command in (CANCEL, ABANDON):
        ok = count > 0 and all(len(f) == KEY_SIZE for f in frames)
    elif command == PARTIAL:
        ok = count > 0 and count % 2 == 0 and all(
            len(frames[i]) == KEY_SIZE for i in range(0, count, 2)
        )
    elif command == MORE:
        ok = count > 0 and count % 2 == 0 and all(
            len(frames[i]) == KEY_SIZE and len(frames[i + 1]) == _CREDIT.size
            for i in range(0, count, 2)
        )
    elif command == DRAIN:
        ok = count == 0
    elif command == FETCH:
        ok = count <= 1
    elif command == SCRIPT:
        ok = count <= 2
    elif command == ADOPT:
        ok = count > 0 and count % 4 == 0 and all(
            len(frames[i]) == _ADOPT_META.size for i in range(0, count, 4)
        )
    else:  # READY, HEARTBEAT, DISCONNECT
        ok = count <= 1
    if not ok:
        raise ProtocolError(f"malformed {command.decode()} ({count} frames)")


# ---------------------------------------------------------------- encoders


def encode_key(key: int) -> bytes:
    return _KEY.pack(key)


def decode_key(key: bytes) -> int:
    return int(_KEY.unpack(key)[0])


def encode_credit(credit: int) -> bytes:
    return _CREDIT.pack(credit)


def decode_credit(frame: bytes) -> int:
    return int(_CREDIT.unpack(frame)[0])


def encode_grant(items: int) -> bytes:
    """MORE's count: how many more items of a stream its consumer took."""
    return _CREDIT.pack(max(0, min(items, 0xFFFFFFFF)))


def decode_grant(frame: bytes) -> int:
    return int(_CREDIT.unpack(frame)[0])


def encode_request_meta(
    key: bytes, timeout_ms: float, cpu_limit_ms: float, depth: int, memory_mb: float = 0
) -> bytes:
    return _REQUEST_META.pack(
        _key_bytes(key),
        _u32(timeout_ms),
        _u32(cpu_limit_ms),
        min(depth, 0xFFFF),
        _u32(memory_mb),
    )


def _u32(value: float) -> int:
    number = int(value)
    if 0 <= number <= 0xFFFFFFFF:
        return number
    return 0 if number < 0 else 0xFFFFFFFF


def _key_bytes(key: bytes) -> bytes:
    if len(key) != KEY_SIZE:
        raise struct.error(f"a key is {KEY_SIZE} bytes, not {len(key)}")
    return key


def decode_request_meta(frame: bytes) -> RequestMeta:
    key, timeout_ms, cpu_limit_ms, depth, memory_mb = _REQUEST_META.unpack(frame)
    return RequestMeta(key, timeout_ms, cpu_limit_ms, depth, memory_mb)


def encode_call_meta(call_key: int, parent_key: bytes) -> bytes:
    return _CALL_META.pack(call_key, _key_bytes(parent_key))


def decode_call_meta(frame: bytes) -> tuple[bytes, bytes]:
    """(call key, parent request key), both as 8-byte keys."""
    return frame[:KEY_SIZE], frame[KEY_SIZE:]


def encode_adopt_meta(key: bytes, timeout_ms: float, depth: int = 0) -> bytes:
    return _ADOPT_META.pack(_key_bytes(key), _u32(timeout_ms), min(depth, 0xFFFF))


def decode_adopt_meta(frame: bytes) -> tuple[bytes, int, int]:
    """(request key, timeout_ms left, call depth) of one ADOPT entry."""
    key, timeout_ms, depth = _ADOPT_META.unpack(frame)
    return key, int(timeout_ms), int(depth)


def message(command: bytes, *frames: bytes) -> list[bytes]:
    """Frames of one message: tag, command, body frames."""
    return [TAG, command, *frames]


def json_message(command: bytes, body: Any) -> list[bytes]:
    return [TAG, command, orjson.dumps(body)]


def broker_run(message: Message) -> tuple[str | None, float]:
    """(run id, adoption grace left in s) from a broker's HEARTBEAT body."""
    try:
        body = message.json()
    except ProtocolError:
        return None, 0.0
    if not isinstance(body, dict):
        return None, 0.0
    instance, grace = body.get("broker"), body.get("grace_s")
    return (instance if isinstance(instance, str) else None,
            float(grace) if isinstance(grace, (int, float)) else 0.0)


def disconnect_reason(message: Message) -> str:
    """The reason in a DISCONNECT body (JSON from MaDRPC brokers, plain text from others)."""
    try:
        body = message.json()
    except ProtocolError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("reason"), str):
        return str(body["reason"])
    return message.frames[0].decode(errors="replace") if message.frames else ""
