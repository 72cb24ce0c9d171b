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
A stream (:mod:`madrpc.client_stream`) has no key and is never run twice: it is not
resent by timer, a transient error is retried only before its first item, and one that
delivered items fails with -32005 when the broker is lost.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .client_args import AUTO_KEY, call_options
from .client_stream import StreamState, check_window
from .client_timers import ResendTimers
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

__all__ = ["CANCEL_LINGER_MS", "MAX_RETRY_AFTER_MS", "RETRYABLE_CODES", "CallBook",
           "PendingCall"]

CANCEL_LINGER_MS = 1000
"""After cancelling calls, how long closing a client may take to send the cancellations."""
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
    stream: StreamState | None = None
    """A stream's items and credit; None for an ordinary call."""

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class CallBook:
    """Calls in flight on one client, keyed by JSON-RPC id."""

    def __init__(self, config: ClientConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.calls: dict[int, PendingCall] = {}
        self._timers = ResendTimers(self.calls)
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
        max_memory_mb: float | None = None, stream_window: int | None = None,
    ) -> PendingCall:
        """Book a call (not sent yet: see :meth:`encode`). With ``stream_window`` it is a
        stream: it gets no idempotency key (an explicit one is a ValueError)."""
        timeout, limits = call_options(self.config.timeout_s, timeout_s, cpu_limit_ms,
                                       max_memory_mb)
        stream = None if stream_window is None else StreamState(check_window(stream_window))
        if stream is not None and (idempotency_key is not AUTO_KEY
                               and idempotency_key is not None):
            raise ValueError("a stream cannot carry an idempotency key (it never runs twice)")
        call_id = next(self._ids)
        if idempotency_key is AUTO_KEY:
            auto = self.config.idempotency and stream is None
            key = f"{self._prefix}-{call_id}" if auto else None
        else:
            key = idempotency_key  # type: ignore[assignment]
        call = PendingCall(call_id, method, params, now + timeout, key, timeout, limits,
                           stream=stream)
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
        if call.stream is not None:
            options["stream"] = {"window": call.stream.window}
        frame = encode_request(call.method, call.params, call.id, options)
        try:
            self.check_size(frame)
        except MessageTooLargeError:
            self.calls.pop(call.id, None)
            raise
        call.attempts += 1
        call.sent_at = now
        retry_in = self.config.retry_interval_s * 2 ** (call.attempts - 1)
        # A stream has no key: sent again on a hunch, it could run twice.
        call.resend_at = (call.deadline if call.stream is not None
                         else min(call.deadline, now + retry_in))
        self._timers.schedule(call)
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
        """Apply a response frame; return the calls it changed: those now complete, and
        streams that received items (``call.done`` tells which)."""
        self.last_heard = now
        try:
            document = decode_response(frame)
        except ValueError:
            return []
        responses = document if isinstance(document, list) else [document]
        changed: dict[int, PendingCall] = {}
        for response in responses:
            call = self._on_response(response, now) if isinstance(response, dict) else None
            if call is not None:
                changed[call.id] = call
        return list(changed.values())

    def _on_response(self, response: dict[str, Any], now: float) -> PendingCall | None:
        """Apply one response object; the call it changed, if any."""
        if "result" not in response and "error" not in response:
            return self._on_items(response)
        if self.probe_id is not None and response.get("id") == self.probe_id:
            self._on_probe_answer(response.get("result"), now)
            return None
        call = self._call_of(response.get("id"))
        if call is None:
            return None   # a duplicate of a retried call, or a call we gave up on
        if "error" in response:
            error = rpc_error_from_object(response["error"])
            untouched = call.stream is None or call.stream.received == 0
            if error.code in RETRYABLE_CODES and untouched and self._retry_later(
                    call, now, _retry_after_s(error)):
                return None
            self._complete(call, error=error)
        elif call.stream is not None:
            result = response.get("result")
            self._complete(call, result=result, error=call.stream.end_error(result, call.method))
        else:
            self._complete(call, result=response.get("result"))
        return call

    def _on_items(self, response: dict[str, Any]) -> PendingCall | None:
        """A stream's partial reply (``"madrpc": {"items": [...]}``) keeps its items;
        anything else without a result or an error (a request echoed back) is not ours."""
        options = response.get("madrpc")
        items = options.get("items") if isinstance(options, dict) else None
        call = self._call_of(response.get("id"))
        if call is None or call.stream is None or not isinstance(items, list):
            return None
        call.stream.add(items)
        return call

    def _call_of(self, call_id: Any) -> PendingCall | None:
        return self.calls.get(call_id) if type(call_id) is int else None

    def take_item(self, call: PendingCall) -> tuple[Any, bytes | None]:
        """Take the oldest waiting item of stream ``call`` (IndexError when none waits),
        with the ``_more`` notification to send now if the user has taken enough since
        the last one (None otherwise, and once the stream has ended)."""
        if call.stream is None:
            raise ValueError(f"call {call.id} is not a stream")
        item, count = call.stream.take()
        if count == 0 or call.done:
            return item, None
        return item, encode_request("_more", {"id": call.id, "n": count}, None)

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
        self._timers.schedule(call)
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
        expired = []
        for call in self._timers.take_ripe(now):
            if now >= call.deadline:
                expired.append(call)
            else:
                self._timers.schedule(call)   # due for a resend (due_for_resend), not expired
        for call in expired:
            self._complete(call, error=RpcTimeoutError(
                ErrorCode.CLIENT_TIMEOUT,
                f"Client timeout: no reply to {call.method!r} within {call.timeout_s:g} s "
                f"({call.attempts} attempt(s))",
            ))
        return expired

    def due_for_resend(self, now: float) -> list[PendingCall]:
        """Calls to send again now (each is then encoded, which schedules its next try)."""
        due = self._timers.take_ripe(now)
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
        wake = self._timers.soonest()
        if wake is None:
            wake = now
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
        """(reconnect?, calls to send again, calls that just ended) due now; calls end
        here when they expire, or are streams lost with the broker."""
        expired = self.expire(now)
        if self.broker_silent(now, connected_at):
            self.on_reconnect()
            resend, lost = self._resend_all()
            return True, resend, expired + lost
        if self.broker_restarted and now >= self.resend_after:
            self.broker_restarted = False
            resend, lost = self._resend_all()
            return False, resend, expired + lost
        return False, self.due_for_resend(now), expired

    def _resend_all(self) -> tuple[list[PendingCall], list[PendingCall]]:
        """(every waiting call, to send again; the streams that delivered items, which
        cannot be: they fail with -32005, as their run was lost with the broker)."""
        resend, lost = [], []
        for call in list(self.calls.values()):
            if call.stream is not None and call.stream.received:
                self._complete(call, error=RpcError(
                    ErrorCode.WORKER_LOST, f"Worker lost: the broker was lost during the "
                    f"stream of {call.method!r} (after {call.stream.received} item(s))"))
                lost.append(call)
            else:
                resend.append(call)
        self.retries += len(resend)
        return resend, lost

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

    def close_all(self, error: Exception) -> list[bytes]:
        """The client closes: every call still waiting ends with ``error``; returns the
        ``_cancel`` notifications that stop the ones sent on the grid (nobody will read
        their results)."""
        frames = [encode_request("_cancel", {"id": call.id}, None)
                  for call in self.calls.values() if call.attempts]
        self.fail_all(error)
        return frames


def _retry_after_s(error: RpcError) -> float:
    """The ``data.retry_after_ms`` an 'Overloaded' answer may carry, in seconds."""
    data = error.data
    hint = data.get("retry_after_ms") if isinstance(data, dict) else None
    if isinstance(hint, (int, float)) and not isinstance(hint, bool) and hint > 0:
        return min(float(hint), MAX_RETRY_AFTER_MS) / 1000
    return 0.0
