"""The blocking Python client, :class:`Client` (thread-safe); see also
:mod:`madrpc.async_client`.

Both keep many calls in flight on one DEALER socket, match replies by JSON-RPC id, and
retry transient failures within each call's timeout (see :mod:`madrpc.client_core`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

import zmq

from .client_args import AUTO_KEY, Params, call_options, check_params, client_config
from .client_batches import send_batch
from .client_core import CANCEL_LINGER_MS, CallBook, PendingCall
from .client_future import CallFuture
from .client_stats import ClientStats, stats_of
from .client_stream import check_window
from .config import DEFAULT_FRONTEND, ClientConfig
from .curve import apply_client, client_curve
from .errors import MadrpcError, TransportError
from .jsonrpc import encode_request
from .shortcut import preferred_endpoint
from .sockets import drain, make_socket, poll_timeout_ms, receive_frame

__all__ = ["CallFuture", "Client"]

_END = object()
POLL_SLICE_S = 0.05
"""Longest a thread pumps the socket before letting another thread look."""
FUTURES_POLL_SLICE_S = 0.005
"""The same for the thread that settles submitted calls: short, because it holds the
socket meanwhile and other threads wait for it to start their calls."""


class Client:
    """Blocking client; safe to share between threads.

    ``Client("tcp://127.0.0.1:5555").call("add", [1, 2])`` returns 3 or raises
    :class:`~madrpc.errors.RpcError` (``RpcTimeoutError`` when out of time).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_FRONTEND,
        *,
        timeout: float | None = None,
        config: ClientConfig | None = None,
        context: zmq.Context[Any] | None = None,
        curve_secret: Any = None,
        server_key: Any = None,
    ) -> None:
        """``curve_secret`` (our key pair: a ``.key_secret`` file or a z85 secret) and
        ``server_key`` (the broker's public key: a ``.key`` file or z85) turn CURVE on."""
        self.config = client_config(endpoint, timeout, config, curve_secret, server_key)
        self._curve = client_curve(self.config.curve_secret, self.config.server_key)
        self._context = context or zmq.Context.instance()
        self._lock = threading.RLock()
        """Held while sending or reading the socket; re-entrant, because a completed call's
        callbacks (a Future's done-callbacks among them) may start new calls."""
        self._book = CallBook(self.config)
        self._connected_at = time.monotonic()
        self._socket = self._new_socket()
        self._closed = False
        self._linger_ms = 0
        self._pending_futures = 0
        self._pumper: threading.Thread | None = None

    def _new_socket(self) -> zmq.Socket[Any]:
        socket = make_socket(self._context, zmq.DEALER, hwm=self.config.hwm)
        if self._curve is not None:
            apply_client(socket, self._curve)
        socket.connect(preferred_endpoint(self.config.endpoint))
        socket.send(self._book.probe(self._connected_at))   # learn which broker run this is
        return socket

    # ------------------------------------------------------------ public API

    @property
    def broker_answered(self) -> bool:
        """Whether a broker has answered anything on this client's connection yet (the
        client sends ``_ping`` as it connects): False means nothing is listening there,
        or it is not a MaDRPC broker's frontend, or its CURVE key does not match."""
        return self._book.last_heard > 0

    def stats(self) -> ClientStats:
        """Calls in flight, retries and reconnections so far, and when the broker last
        answered (:class:`~madrpc.client_stats.ClientStats`)."""
        with self._lock:
            return stats_of(self._book, time.monotonic())

    def call(
        self, method: str, params: Params = None, *, timeout: float | None = None,
        idempotency_key: str | None | Any = AUTO_KEY, cpu_limit_ms: float | None = None,
        max_memory_mb: float | None = None,
    ) -> Any:
        """Call ``method`` and return its result; ``timeout`` (s) bounds retries too.
        ``cpu_limit_ms`` and ``max_memory_mb`` lower the worker's limits for this call."""
        call = self._start(method, check_params(params), timeout, idempotency_key,
                           cpu_limit_ms, max_memory_mb)
        try:
            self._wait(lambda: call.done)
        except BaseException:   # e.g. KeyboardInterrupt: nobody waits for it any more
            self.cancel_call(call)
            raise
        return call.outcome()

    def submit(
        self, method: str, params: Params = None, *, timeout: float | None = None,
        idempotency_key: str | None | Any = AUTO_KEY, cpu_limit_ms: float | None = None,
        max_memory_mb: float | None = None,
    ) -> CallFuture:
        """Start a call and return a :class:`concurrent.futures.Future` of its result; a
        thread of the client's settles it. ``future.cancel()`` cancels the call on the grid;
        ``madrpc.as_completed(futures)`` yields them as they finish."""
        call = self._start(method, check_params(params), timeout, idempotency_key,
                           cpu_limit_ms, max_memory_mb)
        future = CallFuture(call, self.cancel_call)
        with self._lock:
            self._pending_futures += 1
            call.callbacks.append(self._future_settled)
            if self._pumper is None:
                self._pumper = threading.Thread(target=self._pump_futures, daemon=True,
                                                name="madrpc-client-futures")
                self._pumper.start()
        if call.done:   # it failed before the callbacks were in place
            future.settle(call)
        return future

    def _future_settled(self, call: PendingCall) -> None:
        self._pending_futures -= 1   # (the lock is held: calls complete while pumping)

    def _pump_futures(self) -> None:
        """Read replies while submitted calls wait; stop when none do."""
        while True:
            with self._lock:
                if self._closed or self._pending_futures <= 0:
                    self._pumper = None
                    return
                self._pump(FUTURES_POLL_SLICE_S)
            time.sleep(0)   # let a thread waiting for the lock take it

    def stream(
        self, method: str, params: Params = None, *, window: int | None = None,
        timeout: float | None = None, cpu_limit_ms: float | None = None,
        max_memory_mb: float | None = None,
    ) -> Generator[Any, None, None]:
        """Call generator ``method`` and yield its items as they arrive.

        The call starts when the first item is asked for. ``window`` (default 64) is how
        many items the grid may send ahead of those taken; ``timeout`` (s) covers the
        whole stream. A failed stream raises its error after the items that came before
        it. Leaving the loop early (``break``, an exception, ``close()``, Ctrl-C) cancels
        the call on the grid. No item arrives twice: a stream is sent again (or run again
        on another worker) only while it has sent no item; once it has, losing its
        worker or the broker ends it with an error."""
        call_options(self.config.timeout_s, timeout, cpu_limit_ms, max_memory_mb)
        return self._stream(method, check_params(params), check_window(window), timeout,
                            cpu_limit_ms, max_memory_mb)

    def _stream(
        self, method: str, params: Any, window: int, timeout: float | None,
        cpu_limit_ms: float | None, max_memory_mb: float | None,
    ) -> Generator[Any, None, None]:
        call = self._start(method, params, timeout, AUTO_KEY, cpu_limit_ms, max_memory_mb,
                           window)
        stream = call.stream
        assert stream is not None
        try:
            while True:
                self._wait(lambda: call.done or bool(stream.items))
                with self._lock:
                    if not stream.items:
                        break   # ended, and every item taken
                    item, more = self._book.take_item(call)
                    if more is not None:
                        self._send(more)
                yield item
            call.outcome()   # raises the stream's error, if it failed
        finally:
            self.cancel_call(call)   # (nothing to do if it ended)

    def cancel_all(self) -> int:
        """Cancel every call in flight, here and on the grid; returns how many."""
        calls = list(self._book.calls.values())
        for call in calls:
            self.cancel_call(call)
        return len(calls)

    def cancel_call(self, call: PendingCall) -> None:
        """Cancel one of this client's calls, here and on the grid (if it has not ended)."""
        with self._lock:
            frame = self._book.cancel(call)
            if frame is None or self._closed:
                return
            self._linger_ms = CANCEL_LINGER_MS   # let the cancellation leave on close
            with contextlib.suppress(TransportError):
                self._send(frame)

    def notify(self, method: str, params: Params = None) -> None:
        """Send a notification: the function runs, no reply comes back."""
        frame = self._book.check_size(encode_request(method, check_params(params), None))
        with self._lock:
            self._send(frame)

    def map(
        self, method: str, params: Iterable[Params], *, timeout: float | None = None,
        return_exceptions: bool = False, max_in_flight: int | None = None,
        progress: Callable[[int], None] | None = None, cpu_limit_ms: float | None = None,
        max_memory_mb: float | None = None, batch_size: int | None = None,
    ) -> list[Any]:
        """Call ``method`` once per item of ``params``, many in flight; results in order.

        ``timeout`` applies to each call. The first error is raised unless
        ``return_exceptions`` is true (then errors take their call's place in the list).
        ``progress``, if given, is called with the number of calls just completed each
        time some complete (e.g. to advance a progress bar). Calls go out in JSON-RPC
        batches of ``batch_size`` (default ``map_batch_size``, 32; 1 sends each alone),
        and each batch is answered once all its calls are done. See :meth:`imap` to
        consume the input and the results lazily.
        """
        return list(self.imap(method, params, timeout=timeout,
                              return_exceptions=return_exceptions, max_in_flight=max_in_flight,
                              progress=progress, cpu_limit_ms=cpu_limit_ms,
                              max_memory_mb=max_memory_mb, batch_size=batch_size))

    def imap(
        self, method: str, params: Iterable[Params], *, ordered: bool = True,
        timeout: float | None = None, return_exceptions: bool = False,
        max_in_flight: int | None = None, progress: Callable[[int], None] | None = None,
        cpu_limit_ms: float | None = None, max_memory_mb: float | None = None,
        batch_size: int | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`map`, lazily: items are taken from ``params`` only as room frees up
        (at most ``max_in_flight`` calls at once), and results are yielded as they come,
        in input order when ``ordered``, else as they finish; memory stays bounded however
        long the input. Leaving the loop early cancels the calls still running.

        Ordered, calls go out in batches as for :meth:`map`; unordered, one by one unless
        ``batch_size`` says otherwise (a batch's results come back together)."""
        window = max_in_flight or self.config.max_in_flight
        batch = batch_size or (self.config.map_batch_size if ordered else 1)
        if batch < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch}")
        source = iter(params)
        pending: deque[PendingCall] = deque()   # in input order
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < window:
                    room = min(batch, window - len(pending))
                    items = [check_params(item) for item in itertools.islice(source, room)]
                    exhausted = len(items) < room
                    if items:
                        pending += self._start_batch(method, items, timeout, cpu_limit_ms,
                                                     max_memory_mb)
                if not pending:
                    return
                ready = self._take_ready(pending, ordered)
                if progress is not None:
                    progress(len(ready))
                for call in ready:
                    if call.error is not None and not return_exceptions:
                        raise call.error
                    yield call.error if call.error is not None else call.result
        finally:
            for call in pending:   # an error, an interrupt or an early exit left these
                self.cancel_call(call)

    def _take_ready(self, pending: deque[PendingCall], ordered: bool) -> list[PendingCall]:
        """Wait until a result can be yielded; take those that can, in the right order."""
        if ordered:
            self._wait(lambda: pending[0].done)
            ready = []
            while pending and pending[0].done:
                ready.append(pending.popleft())
            return ready
        self._wait(lambda: any(call.done for call in pending))
        ready = [call for call in pending if call.done]
        for call in ready:
            pending.remove(call)
        return ready

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                for frame in self._book.close_all(TransportError("client closed")):
                    self._linger_ms = CANCEL_LINGER_MS
                    with contextlib.suppress(TransportError):
                        self._send(frame)
                self._socket.close(linger=self._linger_ms)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _start(
        self, method: str, params: Any, timeout: float | None, key: Any,
        cpu_limit_ms: float | None = None, max_memory_mb: float | None = None,
        stream_window: int | None = None,
    ) -> PendingCall:
        with self._lock:
            if self._closed:
                raise TransportError("client is closed")
            now = time.monotonic()
            call = self._book.new_call(method, params, timeout, now, key, cpu_limit_ms,
                                       max_memory_mb, stream_window)
            try:
                self._send(self._book.encode(call, now))
            except MadrpcError as exc:   # the caller learns of it: nothing is left behind
                self._book.abandon(call, exc)
                raise
            return call

    def _start_batch(
        self, method: str, items: list[Any], timeout: float | None,
        cpu_limit_ms: float | None, max_memory_mb: float | None,
    ) -> list[PendingCall]:
        """Calls of ``method``, one per item, sent as JSON-RPC batches (as many as the
        message limit needs); a failure to send fails them all, and is raised."""
        with self._lock:
            if self._closed:
                raise TransportError("client is closed")
            return send_batch(self._book, self._send, method, items, timeout, time.monotonic(),
                              cpu_limit_ms, max_memory_mb, self.config.max_message_bytes)

    def _send(self, frame: bytes) -> None:
        try:
            self._socket.send(frame, zmq.NOBLOCK, copy=False)
        except zmq.Again as exc:
            raise TransportError(
                f"cannot send to {self.config.endpoint}: send queue full"
            ) from exc
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot send to {self.config.endpoint}: {exc}") from exc

    def _wait(self, finished: Callable[[], bool]) -> None:
        while not finished():
            with self._lock:
                if finished():
                    return
                if self._closed:
                    raise TransportError("client closed while waiting")
                self._pump()

    def _pump(self, slice_s: float = POLL_SLICE_S) -> None:
        """Read replies for up to one poll slice, then resend/expire/reconnect as due."""
        book = self._book
        now = time.monotonic()
        wake = book.next_wakeup(now)
        timeout_s = slice_s if wake is None else min(slice_s, max(0.0, wake - now))
        if self._socket.poll(poll_timeout_ms(timeout_s)):
            now = time.monotonic()
            for frame in drain(self._socket, receive_frame):
                book.on_frame(frame, now)
        self._housekeeping(time.monotonic())

    def _housekeeping(self, now: float) -> None:
        book = self._book
        reconnect, due, _ = book.housekeeping(now, self._connected_at)
        if reconnect:
            self._socket.close(linger=0)
            self._connected_at = now
            self._socket = self._new_socket()
        elif book.wants_probe(now):
            self._send(book.probe(now))
        for call in due:
            try:
                self._send(book.encode(call, now))
            except MadrpcError as exc:
                book.abandon(call, exc)
