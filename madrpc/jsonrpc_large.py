"""Large requests parsed without decoding their params.

The broker forwards a lone request to its worker as the bytes it received, so for a call
with 1 MiB of params, decoding them (as :func:`madrpc.jsonrpc.parse_frame` does) only
builds a second full-size copy that nobody reads, through a parser that needs a third
for a moment. :func:`parse_large_frame` gives the same answer for every frame, but a large
lone request's params are only checked (valid JSON, an array or an object), by msgspec,
which keeps them as a slice of the frame; its :class:`~madrpc.jsonrpc.Call` then has
``params`` None (its ``body`` is the frame). For 1 MiB: three quarters of the time, and
one copy fewer held while it runs.

msgspec does not check the UTF-8 inside the values it keeps as slices, so only frames
that are pure ASCII take this path: numbers, base64 or hex, ASCII text, and anything from
an encoder that escapes the rest (Python's ``json.dumps`` by default; orjson, which the
Python client uses, writes non-ASCII text as UTF-8). The rest, batches, frames that are not
valid JSON, and calls of the broker's own ``_`` methods (which read their params) are
parsed whole, as before.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from .jsonrpc import Call, Parsed, parse_document, parse_frame

__all__ = ["LARGE_REQUEST_BYTES", "parse_large_frame"]

LARGE_REQUEST_BYTES = 64 * 1024
"""Frames from this size on take the path that leaves params undecoded (smaller ones parse
faster whole)."""
BROKER_METHOD_PREFIX = "_"
"""Methods the broker answers itself start with this; their params are decoded."""

_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def parse_large_frame(frame: bytes, *, max_batch: int = 10_000) -> Parsed:
    """:func:`~madrpc.jsonrpc.parse_frame`'s answer for ``frame``; for a large lone
    request, with its params checked but not decoded (``params`` None). Never raises."""
    if len(frame) < LARGE_REQUEST_BYTES or not frame.isascii():
        return parse_frame(frame, max_batch=max_batch)
    document = _members_but_params(frame)
    if document is None:
        return parse_frame(frame, max_batch=max_batch)
    parsed = parse_document(document, frame, max_batch=max_batch)
    if isinstance(parsed, Call):
        parsed.params = None
    return parsed


def _members_but_params(frame: bytes) -> dict[str, Any] | None:
    """The request's members, decoded, with a stand-in of the same kind for its params
    (so the usual checks answer as they would); None when the frame should be parsed
    whole: not one JSON object, no params, or a method of the broker's."""
    try:
        members = _MEMBERS.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return None
    raw_params = members.pop("params", None)
    if raw_params is None:
        return None
    try:
        document = {name: orjson.loads(memoryview(raw)) for name, raw in members.items()}
    except orjson.JSONDecodeError:
        return None
    method = document.get("method")
    if isinstance(method, str) and method.startswith(BROKER_METHOD_PREFIX):
        return None
    document["params"] = _stand_in(memoryview(raw_params)[:1].tobytes())
    return document


def _stand_in(first: bytes) -> Any:
    """A small value of the kind a JSON value starting with ``first`` has, as far as the
    params check tells kinds apart: an array, an object, null, or anything else."""
    if first == b"[":
        return []
    if first == b"{":
        return {}
    return None if first == b"n" else 0
