"""The asyncio Python client, :class:`AsyncClient`; see :mod:`madrpc.client` for the
blocking one. Both share the call book and retry policy of :mod:`madrpc.client_core`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import zmq
import zmq.asyncio

from .client_args import AUTO_KEY, Params, call_options, check_params, client_config
from .client_batches import send_batch
from .client_core import CANCEL_LINGER_MS, CallBook, PendingCall
from .client_stats import ClientStats, stats_of
from .client_stream import check_window
from .config import DEFAULT_FRONTEND, ClientConfig
from .curve import apply_client, client_curve
from .errors import MadrpcError, TransportError
from .jsonrpc import encode_request
from .shortcut import preferred_endpoint
from .sockets import drain, make_socket, poll_timeout_ms, receive_frame

__all__ = ["AsyncClient"]


class AsyncClient:
    """asyncio client: ``await client.call("add", [1, 2])``; use ``async with``.

    Replies are read by one background task; sends and reads are non-blocking calls on a
    synchronous shadow of the socket, and only ``poll`` is awaited.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_FRONTEND,
        *,
        timeout: float | None = None,
        config: ClientConfig | None = None,
        context: zmq.asyncio.Context | None = None,
        curve_secret: Any = None,
        server_key: Any = None,
    ) -> None:
        """``curve_secret`` and ``server_key`` turn CURVE on (see :class:`Client`)."""
        self.config = client_config(endpoint, timeout, config, curve_secret, server_key)
        self._curve = client_curve(self.config.curve_secret, self.config.server_key)
        self._context = context or zmq.asyncio.Context.instance()
        self._book = CallBook(self.config)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Event] = {}
        """Per stream call: set when items arrive or the stream ends."""
        self._socket: Any = None
        self._io: zmq.Socket[Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._connected_at = 0.0
        self._closed = False

    def _ensure_started(self) -> zmq.Socket[Any]:
        if self._closed:
            raise TransportError("client is closed")
        if self._io is None:
            self._connect()
            self._wakeup = asyncio.Event()
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        assert self._io is not None
        return self._io

    def _connect(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        socket: Any = make_socket(self._context, zmq.DEALER, hwm=self.config.hwm)
        if self._curve is not None:
            apply_client(socket, self._curve)
        socket.connect(preferred_endpoint(self.config.endpoint))
        self._socket = socket
        self._io = zmq.Socket.shadow(socket.underlying)
        self._connected_at = time.monotonic()
        self._io.send(self._book.probe(self._connected_at))   # learn which broker run this is

    def _send(self, frame: bytes) -> None:
        assert self._io is not None
        try:
            self._io.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot send to {self.config.endpoint}: {exc}") from exc

    def stats(self) -> ClientStats:
        """Calls in flight, retries and reconnections so far, and when the broker last
        answered (:class:`~madrpc.client_stats.ClientStats`)."""
        return stats_of(self._book, time.monotonic())

    async def call(
        self, method: str, params: Params = None, *, timeout: float | None = None,
        idempotency_key: str | None | Any = AUTO_KEY, cpu_limit_ms: float | None = None,
        max_memory_mb: float | None = None,
    ) -> Any:
        """Call ``method`` and return its result (see :meth:`Client.call`)."""
        self._ensure_started()
        now = time.monotonic()
        call = self._book.new_call(method, check_params(params), timeout, now, idempotency_key,
                                   cpu_limit_ms, max_memory_mb)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[call.id] = future
        try:
            self._send(self._book.encode(call, now))
        except MadrpcError as exc:
            self._futures.pop(call.id, None)
            self._book.abandon(call, exc)
            raise
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:   # the awaiting task was cancelled: so is the call
            self._cancel_on_grid(call)
            raise
        finally:
            self._futures.pop(call.id, None)

    def stream(
        self, method: str, params: Params = None, *, window: int | None = None,
        timeout: float | None = None, cpu_limit_ms: float | None = None,
        max_memory_mb: float | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Call generator ``method``; ``async for`` its items as they arrive (see
        :meth:`Client.stream`). Leaving the loop early, ``aclose()`` or cancelling the
        task cancels the call on the grid."""
        call_options(self.config.timeout_s, timeout, cpu_limit_ms, max_memory_mb)
        return self._stream(method, check_params(params), check_window(window), timeout,
                            cpu_limit_ms, max_memory_mb)

    async def _stream(
        self, method: str, params: Any, window: int, timeout: float | None,
        cpu_limit_ms: float | None, max_memory_mb: float | None,
    ) -> AsyncGenerator[Any, None]:
        self._ensure_started()
        now = time.monotonic()
        call = self._book.new_call(method, params, timeout, now, AUTO_KEY, cpu_limit_ms,
                                   max_memory_mb, window)
        stream = call.stream
        assert stream is not None and self._wakeup is not None
        try:
            self._send(self._book.encode(call, now))
        except MadrpcError as exc:
            self._book.abandon(call, exc)
            raise
        changed = self._streams[call.id] = asyncio.Event()
        self._wakeup.set()
        try:
            while True:
                while not (stream.items or call.done):
                    changed.clear()
                    await changed.wait()
                if not stream.items:
                    break   # ended, and every item taken
                item, more = self._book.take_item(call)
                if more is not None:
                    self._send(more)
                yield item
            call.outcome()   # raises the stream's error, if it failed
        finally:
            self._streams.pop(call.id, None)
            self._cancel_on_grid(call)   # (nothing to do if it ended)

    def _cancel_on_grid(self, call: PendingCall) -> None:
        frame = self._book.cancel(call)
        if frame is not None and not self._closed:
            with contextlib.suppress(MadrpcError):
                self._send(frame)

    async def notify(self, method: str, params: Params = None) -> None:
        """Send a notification: the function runs, no reply comes back."""
        self._ensure_started()
        self._send(self._book.check_size(encode_request(method, check_params(params), None)))

    async def map(
        self, method: str, params: Iterable[Params], *, timeout: float | None = None,
        return_exceptions: bool = False, max_in_flight: int | None = None,
        cpu_limit_ms: float | None = None, max_memory_mb: float | None = None,
        batch_size: int | None = None,
    ) -> list[Any]:
        """Call ``method`` once per item, up to ``max_in_flight`` at once; results in order.
        ``timeout``, ``cpu_limit_ms`` and ``max_memory_mb`` apply to each call. Calls go out
        in JSON-RPC batches of ``batch_size`` (see :meth:`Client.map`). Cancelling the
        awaiting task, or an error raised here, cancels the calls still running."""
        call_options(self.config.timeout_s, timeout, cpu_limit_ms, max_memory_mb)
        items = [check_params(item) for item in params]
        window = max_in_flight or self.config.max_in_flight
        batch = min(batch_size or self.config.map_batch_size, window)
        if batch < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch}")
        self._ensure_started()
        limit = asyncio.Semaphore(window)
        started: list[tuple[PendingCall, asyncio.Future[Any]]] = []
        try:
            for first in range(0, len(items), batch):
                chunk = items[first:first + batch]
                for _ in chunk:
                    await limit.acquire()
                for call, future in self._start_batch(method, chunk, timeout, cpu_limit_ms,
                                                      max_memory_mb):
                    future.add_done_callback(lambda _: limit.release())
                    started.append((call, future))
            return list(await asyncio.gather(*(future for _, future in started),
                                             return_exceptions=return_exceptions))
        finally:
            for call, future in started:
                self._futures.pop(call.id, None)
                if not future.done():
                    future.cancel()
                    self._cancel_on_grid(call)

    def _start_batch(
        self, method: str, items: list[Any], timeout: float | None,
        cpu_limit_ms: float | None, max_memory_mb: float | None,
    ) -> list[tuple[PendingCall, asyncio.Future[Any]]]:
        """Calls of ``method``, one per item, sent as JSON-RPC batches; a failure to send
        fails them all, and is raised."""
        calls = send_batch(self._book, self._send, method, items, timeout, time.monotonic(),
                           cpu_limit_ms, max_memory_mb, self.config.max_message_bytes)
        loop = asyncio.get_running_loop()   # replies are read only once this task yields
        started = [(call, loop.create_future()) for call in calls]
        self._futures.update((call.id, future) for call, future in started)
        assert self._wakeup is not None
        self._wakeup.set()
        return started

    async def _read_loop(self) -> None:
        try:
            while not self._closed:
                await self._read_once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every waiting call must learn of it
            error = TransportError(f"client reader failed: {exc!r}")
            self._fail_all(error)
            raise

    async def _read_once(self) -> None:
        book = self._book
        assert self._wakeup is not None
        now = time.monotonic()
        wake = book.next_wakeup(now)
        timeout_s = 1.0 if wake is None else min(1.0, max(0.0, wake - now))
        self._wakeup.clear()
        poll = asyncio.ensure_future(self._socket.poll(poll_timeout_ms(timeout_s)))
        woken = asyncio.ensure_future(self._wakeup.wait())
        done, _ = await asyncio.wait({poll, woken}, return_when=asyncio.FIRST_COMPLETED)
        for task in (poll, woken):
            if task not in done:
                task.cancel()
        now = time.monotonic()
        assert self._io is not None
        for frame in drain(self._io, receive_frame):
            for call in book.on_frame(frame, now):
                self._settle(call)
        self._housekeeping(time.monotonic())

    def _housekeeping(self, now: float) -> None:
        book = self._book
        reconnect, due, expired = book.housekeeping(now, self._connected_at)
        for call in expired:
            self._settle(call)
        if reconnect:
            self._connect()
        elif book.wants_probe(now):
            self._send(book.probe(now))
        for call in due:
            try:
                self._send(book.encode(call, now))
            except MadrpcError as exc:
                book.abandon(call, exc)
                self._settle(call)

    def _settle(self, call: PendingCall) -> None:
        """Tell whoever waits for ``call`` that it changed (ended, or a stream got items)."""
        changed = self._streams.get(call.id)
        if changed is not None:
            changed.set()
            return
        future = self._futures.get(call.id)
        if future is None or future.done():
            return
        if call.error is not None:
            future.set_exception(call.error)
        else:
            future.set_result(call.result)

    def _fail_all(self, error: MadrpcError) -> None:
        """End every waiting call with ``error`` and wake whoever waits for one."""
        self._book.fail_all(error)
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        for changed in self._streams.values():
            changed.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        cancels = self._book.close_all(TransportError("client closed"))
        self._fail_all(TransportError("client closed"))
        if self._socket is not None:
            for frame in cancels:   # stop on the grid what nobody will read any more
                with contextlib.suppress(MadrpcError):
                    self._send(frame)
            self._socket.close(linger=CANCEL_LINGER_MS if cancels else 0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
