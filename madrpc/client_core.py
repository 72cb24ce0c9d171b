"""What both Python clients share: the book of calls in flight and the retry policy.

Pure: frames and ``now`` in, decisions out. Retries follow the Lazy Pirate pattern,
with a liveness probe:

* while calls wait and the broker has been quiet for ``probe_interval_s``, a ``_ping``
  goes out; its answer names the broker's run, so a restarted broker (which lost the
  calls it held) is noticed and every waiting call is sent again once the broker's
  adoption grace (``grace_s`` in the answer) has passed;
* a probe unanswered for ``retry_interval_s`` means the broker is unreachable: the
  socket is replaced and every waiting call sent again;
* a call with no reply after ``retry_interval_s`` is sent again anyway (doubling);
* a transient error reply (no worker, overloaded, worker lost, shutting down) is retried
  after an exponential back-off with full jitter.

Every resend carries the call's idempotency key, so the broker runs it at most once.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import ClientConfig
from .errors import (
    CancelledError,
    ErrorCode,
    MessageTooLargeError,
    RpcError,
    RpcTimeoutError,
    rpc_error_from_object,
)
from .jsonrpc import decode_response, encode_request
from .liveness import Backoff
from .policy import TRANSIENT_CODES

__all__ = [
    "AUTO_KEY", "MAX_RETRY_AFTER_MS", "RETRYABLE_CODES", "CallBook", "Params", "PendingCall",
    "check_params", "client_config",
]

AUTO_KEY: Any = object()
"""``idempotency_key`` default: the client makes a key of its own for the call."""
Params = Sequence[Any] | dict[str, Any] | None
"""A call's params: positional (list or tuple), named (dict), or none."""


def check_params(params: Any) -> Any:
    """Params as JSON-RPC wants them (a tuple becomes a list); TypeError otherwise."""
    if params is None or isinstance(params, (list, dict)):
        return params
    if isinstance(params, tuple):
        return list(params)
    raise TypeError(
        f"params must be a list, a tuple, a dict or None, not {type(params).__name__}"
    )


def client_config(
    endpoint: str, timeout: float | None, config: ClientConfig | None,
    curve_secret: Any = None, server_key: Any = None,
) -> ClientConfig:
    """The configuration a client constructor's arguments describe."""
    if config is not None:
        return config
    options: dict[str, Any] = {"curve_secret": curve_secret, "server_key": server_key}
    if timeout is not None:
        options["timeout_s"] = timeout
    return ClientConfig(endpoint=endpoint, **options)


MAX_RETRY_AFTER_MS = 60_000
"""The longest ``retry_after_ms`` hint a client heeds (a broker cannot stall it longer)."""
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
    limits: dict[str, float] = field(default_factory=dict)
    """Lower limits for this call: ``cpu_limit_ms``, ``max_memory_mb`` (sent as given)."""
    sent_at: float = 0.0
    resend_at: float = 0.0
    attempts: int = 0
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    callbacks: list[Callable[[PendingCall], None]] = field(default_factory=list)
    """Called once with the call when it completes (e.g. to settle a Future)."""

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
        """Calls sent again (after a timer, a transient error, a reconnection or a restart)."""
        self.reconnects = 0
        self.broker_instance: str | None = None
        self.probe_id: str | None = None
        self.probe_sent_at = 0.0
        self._probes = itertools.count(1)
        self.broker_restarted = False
        """Set when a probe's answer names a new broker run; the client then resends."""
        self.resend_after = 0.0
        """After a restart: when to send every waiting call again (the broker's grace)."""

    def new_call(
        self, method: str, params: Any, timeout_s: float | None, now: float,
        idempotency_key: str | None | object = AUTO_KEY, cpu_limit_ms: float | None = None,
        max_memory_mb: float | None = None,
    ) -> PendingCall:
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        limits = {name: value for name, value in (("cpu_limit_ms", cpu_limit_ms),
                                                  ("max_memory_mb", max_memory_mb))
                  if value is not None}
        for name, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number")
        call_id = next(self._ids)
        if idempotency_key is AUTO_KEY:
            key = f"{self._prefix}-{call_id}" if self.config.idempotency else None
        else:
            key = idempotency_key  # type: ignore[assignment]
        call = PendingCall(call_id, method, params, now + timeout, key, timeout, limits)
        self.calls[call_id] = call
        return call

    def encode(self, call: PendingCall, now: float) -> bytes:
        """The request frame for (re)sending ``call`` now; records the attempt."""
        remaining_ms = max(1, int((call.deadline - now) * 1000))
        options: dict[str, Any] = {"timeout_ms": remaining_ms}
        if call.idempotency_key is not None:
            options["idempotency_key"] = call.idempotency_key
        if call.limits:
            options.update(call.limits)
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
            if not isinstance(response, dict) or ("result" not in response
                                                  and "error" not in response):
                continue   # not a response (e.g. a request echoed back): not ours
            if self.probe_id is not None and response.get("id") == self.probe_id:
                self._on_probe_answer(response.get("result"), now)
                continue
            call_id = response.get("id")
            call = self.calls.get(call_id) if type(call_id) is int else None
            if call is None:
                continue   # a duplicate of a retried call, or a call we gave up on
            if "error" in response:
                error = rpc_error_from_object(response["error"])
                if error.code in RETRYABLE_CODES and self._retry_later(call, now,
                                                                        _retry_after_s(error)):
                    continue
                self._complete(call, error=error)
            else:
                self._complete(call, result=response.get("result"))
            finished.append(call)
        return finished

    def _on_probe_answer(self, result: Any, now: float) -> None:
        self.probe_id = None
        instance = result.get("broker") if isinstance(result, dict) else None
        if not isinstance(instance, str):
            return
        if self.broker_instance is not None and instance != self.broker_instance:
            grace = result.get("grace_s")
            self.broker_restarted = True
            self.resend_after = now + (grace if isinstance(grace, (int, float)) else 0.0)
        self.broker_instance = instance

    def probe(self, now: float) -> bytes:
        """A ``_ping`` request (its answer is handled by :meth:`on_frame`)."""
        self.probe_id = f"{self._prefix}-ping-{next(self._probes)}"
        self.probe_sent_at = now
        return encode_request("_ping", None, self.probe_id)

    def wants_probe(self, now: float) -> bool:
        """Calls wait, the broker has been quiet for a probe interval, no probe is out."""
        return (
            bool(self.calls)
            and self.probe_id is None
            and now - self.last_heard >= self.config.probe_interval_s
        )

    def _retry_later(self, call: PendingCall, now: float, at_least_s: float = 0.0) -> bool:
        """Schedule a resend after a jittered back-off (at least ``at_least_s``, the
        broker's ``retry_after_ms`` hint); False when retries or time are spent."""
        if call.attempts > self.config.max_retries:
            return False
        delay = max(at_least_s, self._backoff.jittered(call.attempts - 1, self._rng))
        if now + delay >= call.deadline:
            return False
        call.resend_at = now + delay
        return True

    def _complete(
        self, call: PendingCall, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        self.calls.pop(call.id, None)
        call.done = True
        call.result = result
        call.error = error
        for callback in call.callbacks:
            callback(call)

    def expire(self, now: float) -> list[PendingCall]:
        """Calls past their deadline fail with :class:`RpcTimeoutError`."""
        expired = [c for c in self.calls.values() if now >= c.deadline]
        for call in expired:
            self._complete(call, error=RpcTimeoutError(
                ErrorCode.CLIENT_TIMEOUT,
                f"Client timeout: no reply to {call.method!r} within {call.timeout_s:g} s "
                f"({call.attempts} attempt(s))",
            ))
        return expired

    def due_for_resend(self, now: float) -> list[PendingCall]:
        due = [c for c in self.calls.values() if now >= c.resend_at]
        self.retries += len(due)
        return due

    def broker_silent(self, now: float, since: float) -> bool:
        """True when a probe went unanswered for a whole retry interval."""
        return (
            self.probe_id is not None
            and now - max(self.probe_sent_at, since) >= self.config.retry_interval_s
        )

    def on_reconnect(self) -> None:
        self.reconnects += 1
        self.probe_id = None

    def next_wakeup(self, now: float) -> float | None:
        if not self.calls:
            return None
        wake = min(min(c.resend_at, c.deadline) for c in self.calls.values())
        if self.broker_restarted:
            wake = min(wake, self.resend_after)
        if self.probe_id is None:
            wake = min(wake, self.last_heard + self.config.probe_interval_s)
        else:
            wake = min(wake, self.probe_sent_at + self.config.retry_interval_s)
        return wake

    def housekeeping(
        self, now: float, connected_at: float
    ) -> tuple[bool, list[PendingCall], list[PendingCall]]:
        """(reconnect?, calls to send again, calls that just expired) due now."""
        expired = self.expire(now)
        if self.broker_silent(now, connected_at):
            self.on_reconnect()
            return True, self._resend_all(), expired
        if self.broker_restarted and now >= self.resend_after:
            self.broker_restarted = False
            return False, self._resend_all(), expired
        return False, self.due_for_resend(now), expired

    def _resend_all(self) -> list[PendingCall]:
        calls = list(self.calls.values())
        self.retries += len(calls)
        return calls

    def cancel(self, call: PendingCall) -> bytes | None:
        """Give up a call that has not completed: it ends with CancelledError here, and the
        returned ``_cancel`` notification asks the broker to stop it on the grid (and every
        nested call it made). None if the call had completed already."""
        if call.done:
            return None
        self._complete(call, error=CancelledError(
            ErrorCode.CANCELLED, f"Cancelled: the call to {call.method!r} was cancelled"))
        return encode_request("_cancel", {"id": call.id}, None)

    def abandon(self, call: PendingCall, error: BaseException) -> None:
        """Complete a call that will not be answered (a failed send) with ``error``."""
        if not call.done:
            self._complete(call, error=error)

    def fail_all(self, error: Exception) -> None:
        for call in list(self.calls.values()):
            self._complete(call, error=error)


def _retry_after_s(error: RpcError) -> float:
    """The ``data.retry_after_ms`` an 'Overloaded' answer may carry, in seconds."""
    data = error.data
    hint = data.get("retry_after_ms") if isinstance(data, dict) else None
    if isinstance(hint, (int, float)) and not isinstance(hint, bool) and hint > 0:
        return min(float(hint), MAX_RETRY_AFTER_MS) / 1000
    return 0.0
