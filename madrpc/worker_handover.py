"""What a worker keeps so that a broker restart loses nothing (docs/protocol.md §5.11).

Two memories, both pure data:

* results of keyed requests finished lately, for a new broker run (their replies may
  have died with the old one): handed over in ADOPT, so a client's retry gets the result
  without running the function again;
* the bodies of nested calls still awaiting their results, sent again (same keys) to a
  new broker run once it has had its adoption grace.

The idempotency key is read from a request's body only when a hand-over needs it, never
on the per-request path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from . import protocol as p
from .worker_tables import LocalRequest, madrpc_options

__all__ = [
    "KEY_MARK", "MAX_RECENT_BYTES", "MAX_RECENT_RESULT_BYTES", "MAX_RECENT_RESULTS",
    "RECENT_RESULTS_S", "HandOver", "idempotency_key",
]

RECENT_RESULTS_S = 30.0
"""How long results of keyed requests are kept to hand to a restarted broker."""
MAX_RECENT_RESULTS = 10_000
"""Most keyed results kept for a restarted broker (oldest forgotten first)."""
MAX_RECENT_RESULT_BYTES = 1024 * 1024
"""A keyed result longer than this is not kept (the broker stores none longer by default:
its --max-idempotent-result-bytes)."""
MAX_RECENT_BYTES = 64 * 1024 * 1024
"""Request bodies and results kept for a restarted broker, in all (oldest forgotten first)."""
KEY_MARK = b'"idempotency_key"'
"""Bodies without it have no idempotency key (a cheap test before parsing; looked for with
``rfind``, as :data:`~madrpc.worker_tables.STREAM_MARK` is)."""


class _Result(NamedTuple):
    method: str
    body: bytes
    fragment: bytes
    finished_at: float


class HandOver:
    """Recent keyed results and unanswered nested calls of one worker."""

    def __init__(self) -> None:
        self.recent: OrderedDict[bytes, _Result] = OrderedDict()
        """Broker key -> a keyed request that finished lately."""
        self.recent_bytes = 0
        """Bytes of the bodies and results in :attr:`recent`."""
        self.call_bodies: dict[int, tuple[bytes, bytes]] = {}
        """Nested call key -> (CALL meta, body), until its result arrives."""

    def __bool__(self) -> bool:
        return bool(self.recent or self.call_bodies)

    def remember_result(self, request: LocalRequest, fragment: bytes, now: float) -> None:
        """Keep a finished request's reply if the request carries an idempotency key."""
        if len(fragment) > MAX_RECENT_RESULT_BYTES or request.body.rfind(KEY_MARK) < 0:
            return
        recent = self.recent
        replaced = recent.pop(request.key, None)
        if replaced is not None:
            self.recent_bytes -= len(replaced.body) + len(replaced.fragment)
        recent[request.key] = _Result(request.method, request.body, fragment, now)
        self.recent_bytes += len(request.body) + len(fragment)
        while recent:
            oldest = next(iter(recent.values()))
            if (len(recent) <= MAX_RECENT_RESULTS and self.recent_bytes <= MAX_RECENT_BYTES
                    and now - oldest.finished_at <= RECENT_RESULTS_S):
                break
            recent.popitem(last=False)
            self.recent_bytes -= len(oldest.body) + len(oldest.fragment)

    def track_call(self, call_key: int, meta: bytes, body: bytes) -> None:
        self.call_bodies[call_key] = (meta, body)

    def call_answered(self, call_key: int) -> None:
        self.call_bodies.pop(call_key, None)

    def pending_calls(self) -> list[bytes]:
        """CALL frames of every nested call still awaiting its result."""
        return [frame for meta, body in self.call_bodies.values() for frame in (meta, body)]

    def adoption_frames(
        self, held: Iterable[LocalRequest], wall_ms: float, now: float
    ) -> list[bytes]:
        """ADOPT body for a new broker run: the requests still ``held`` (placeholders, so
        it waits for their replies instead of running them again) and recent keyed
        results it may lack."""
        frames: list[bytes] = []
        for request in held:
            if request.cancelled:
                continue
            frames += [
                p.encode_adopt_meta(request.key, request.deadline_ms - wall_ms, request.depth),
                request.method.encode(),
                (idempotency_key(request.body) or "").encode(),
                b"",
            ]
        for key, result in self.recent.items():
            client_key = idempotency_key(result.body)
            if client_key is not None and now - result.finished_at <= RECENT_RESULTS_S:
                frames += [p.encode_adopt_meta(key, 0, 0), result.method.encode(),
                           client_key.encode(), result.fragment]
        return frames

    def clear(self) -> None:
        """The broker re-dispatched all we held: nothing of it is ours to hand over."""
        self.recent.clear()
        self.recent_bytes = 0
        self.call_bodies.clear()


def idempotency_key(body: bytes) -> str | None:
    """The request's ``madrpc.idempotency_key`` (parsed only when the body mentions one)."""
    key = madrpc_options(body, KEY_MARK).get("idempotency_key")
    return key if isinstance(key, str) else None
