"""What both Python clients share: the book of calls in flight and the retry policy.

Pure: frames and ``now`` in, decisions out. Retries follow the Lazy Pirate pattern:
a call with no reply after ``retry_interval_s`` is sent again (the interval doubling
each time), a transient error reply (no worker, overloaded, worker lost, shutting down)
is retried after an exponential back-off with full jitter, and when the broker has
been silent for a whole interval the socket is replaced. Every resend carries the
call's idempotency key, so the broker runs it at most once.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field
from typing import Any

from .config import ClientConfig
from .errors import ErrorCode, MessageTooLargeError, RpcTimeoutError, rpc_error_from_object
from .jsonrpc import decode_response, encode_request
from .liveness import Backoff
from .policy import TRANSIENT_CODES

__all__ = ["CallBook", "PendingCall"]

_UNSET = object()
RETRYABLE_CODES = frozenset(TRANSIENT_CODES - {ErrorCode.TIMEOUT})
"""Error replies worth another try (a timeout means the call's own time is spent)."""


@dataclass(eq=False)
class PendingCall:
    """One call in flight."""

    id: int
    method: str
    params: Any
    deadline: float
    idempotency_key: str | None
    timeout_s: float
    sent_at: float = 0.0
    resend_at: float = 0.0
    attempts: int = 0
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    callbacks: list[Any] = field(default_factory=list)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class CallBook:
    """Calls in flight on one client, keyed by JSON-RPC id."""

    def __init__(self, config: ClientConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.calls: dict[int, PendingCall] = {}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(6).hex()
        self._rng = rng or random.Random()
        self._backoff = Backoff(config.retry_backoff_initial_s, config.retry_backoff_max_s)
        self.last_heard = 0.0
        self.retries = 0
        self.reconnects = 0

    def new_call(
        self, method: str, params: Any, timeout_s: float | None, now: float,
        idempotency_key: str | None | object = _UNSET,
    ) -> PendingCall:
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        call_id = next(self._ids)
        if idempotency_key is _UNSET:
            key = f"{self._prefix}-{call_id}" if self.config.idempotency else None
        else:
            key = idempotency_key  # type: ignore[assignment]
        call = PendingCall(call_id, method, params, now + timeout, key, timeout)
        self.calls[call_id] = call
        return call

    def encode(self, call: PendingCall, now: float) -> bytes:
        """The request frame for (re)sending ``call`` now; records the attempt."""
        remaining_ms = max(1, int((call.deadline - now) * 1000))
        options: dict[str, Any] = {"timeout_ms": remaining_ms}
        if call.idempotency_key is not None:
            options["idempotency_key"] = call.idempotency_key
        frame = encode_request(call.method, call.params, call.id, options)
        try:
            self.check_size(frame)
        except MessageTooLargeError:
            self.calls.pop(call.id, None)
            raise
        call.attempts += 1
        call.sent_at = now
        retry_in = self.config.retry_interval_s * 2 ** (call.attempts - 1)
        call.resend_at = min(call.deadline, now + retry_in)
        return frame

    def check_size(self, frame: bytes) -> bytes:
        """``frame`` if the broker will accept it; else MessageTooLargeError (the broker
        would silently disconnect us)."""
        if len(frame) > self.config.max_message_bytes:
            raise MessageTooLargeError(
                f"request of {len(frame)} bytes exceeds the limit of "
                f"{self.config.max_message_bytes} bytes (max_message_bytes)"
            )
        return frame

    def on_frame(self, frame: bytes, now: float) -> list[PendingCall]:
        """Apply a response frame; return calls that are now complete."""
        self.last_heard = now
        try:
            document = decode_response(frame)
        except ValueError:
            return []
        responses = document if isinstance(document, list) else [document]
        finished = []
        for response in responses:
            if not isinstance(response, dict):
                continue
            call = self.calls.get(response.get("id"))  # type: ignore[arg-type]
            if call is None:
                continue   # a duplicate of a retried call, or a call we gave up on
            if "error" in response:
                error = rpc_error_from_object(response["error"])
                if error.code in RETRYABLE_CODES and self._retry_later(call, now):
                    continue
                self._complete(call, error=error)
            else:
                self._complete(call, result=response.get("result"))
            finished.append(call)
        return finished

    def _retry_later(self, call: PendingCall, now: float) -> bool:
        if call.attempts > self.config.max_retries:
            return False
        delay = self._backoff.jittered(call.attempts - 1, self._rng)
        if now + delay >= call.deadline:
            return False
        call.resend_at = now + delay
        self.retries += 1
        return True

    def _complete(
        self, call: PendingCall, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        self.calls.pop(call.id, None)
        call.done = True
        call.result = result
        call.error = error

    def expire(self, now: float) -> list[PendingCall]:
        """Calls past their deadline fail with :class:`RpcTimeoutError`."""
        expired = [c for c in self.calls.values() if now >= c.deadline]
        for call in expired:
            self._complete(call, error=RpcTimeoutError(
                ErrorCode.TIMEOUT,
                f"Timeout: no reply to {call.method!r} within {call.timeout_s:g} s "
                f"({call.attempts} attempt(s))",
            ))
        return expired

    def due_for_resend(self, now: float) -> list[PendingCall]:
        due = [c for c in self.calls.values() if now >= c.resend_at]
        self.retries += len(due)
        return due

    def broker_silent(self, now: float, since: float) -> bool:
        """True when calls wait and nothing came back for a whole retry interval."""
        quiet_s = now - max(self.last_heard, since)
        return bool(self.calls) and quiet_s >= self.config.retry_interval_s

    def next_wakeup(self, now: float) -> float | None:
        if not self.calls:
            return None
        return min(min(c.resend_at, c.deadline) for c in self.calls.values())

    def abandon(self, call: PendingCall, error: BaseException) -> None:
        if call.id in self.calls:
            self._complete(call, error=error)

    def fail_all(self, error: Exception) -> None:
        for call in list(self.calls.values()):
            self._complete(call, error=error)
