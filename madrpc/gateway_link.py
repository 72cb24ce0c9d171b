"""The gateway's one connection to the broker: a DEALER on the broker's frontend, shared
by every HTTP caller.

Each exchange (one HTTP body's requests, or a stream) is sent behind a tag frame of its
own, which the broker sends back unchanged in front of every reply (docs/protocol.md
§1), so replies find their exchange without being parsed. A ``_ping`` every
:data:`PROBE_INTERVAL_S` tells whether the broker is there and which run it is: when
nothing has been heard for :data:`UNREACHABLE_AFTER_S`, or the broker restarted, the
exchanges waiting are failed with :class:`LinkLost` (their replies would never come), and
new ones are refused until the broker answers again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from typing import Any

import orjson
import zmq

from .curve import ClientCurve, apply_client
from .errors import ErrorCode, RpcError, rpc_error_from_object
from .jsonrpc import encode_request
from .shortcut import preferred_endpoint
from .sockets import make_socket, receive_frames

__all__ = ["PROBE_INTERVAL_S", "UNREACHABLE_AFTER_S", "BrokerLink", "Exchange", "LinkLost"]

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
"""How often the gateway pings the broker."""
UNREACHABLE_AFTER_S = 3.0
"""Silence after which the broker counts as unreachable."""
LINK_HWM = 100_000
"""Messages the link's socket queues each way (as the broker's own --hwm)."""
READER_CHECK_S = 0.5
"""The reader looks at the socket at least this often, whatever its file descriptor says."""
_NO_REPLY_TAG = b"-"


class LinkLost(Exception):
    """The broker was lost (or restarted) while an exchange waited: no reply will come."""


class Exchange:
    """Requests sent together; their replies arrive in :meth:`next`, in order."""

    __slots__ = ("tag", "sent_at", "_replies", "_waiter", "_link")

    def __init__(self, link: BrokerLink, tag: bytes, sent_at: float) -> None:
        self.tag = tag
        self.sent_at = sent_at
        self._replies: collections.deque[bytes | LinkLost] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._link = link

    async def next(self, timeout_s: float) -> bytes:
        """The next reply; ``TimeoutError`` after ``timeout_s``; :class:`LinkLost`."""
        if not self._replies:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(max(timeout_s, 0.0), _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        reply = self._replies.popleft()
        if isinstance(reply, LinkLost):
            raise reply
        return reply

    def deliver(self, reply: bytes | LinkLost) -> None:
        self._replies.append(reply)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Forget this exchange: later replies for it are dropped."""
        self._link.forget(self)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class BrokerLink:
    """One DEALER to the broker's frontend, with its reader and prober tasks."""

    def __init__(self, endpoint: str, curve: ClientCurve | None = None, *,
                 probe_interval_s: float = PROBE_INTERVAL_S,
                 unreachable_after_s: float = UNREACHABLE_AFTER_S) -> None:
        self.endpoint = endpoint
        self.probe_interval_s = probe_interval_s
        self.unreachable_after_s = unreachable_after_s
        self.run: str | None = None
        """The broker run last heard (its ``_ping`` ``broker``)."""
        self.last_heard = time.monotonic()
        self.lost_reason: str | None = None
        """Why the broker counts as unreachable; None while it answers."""
        self._curve = curve
        self._context: zmq.Context[Any] = zmq.Context()
        self._socket: zmq.Socket[Any] | None = None
        self._readable = asyncio.Event()
        """Set when the socket may have something to read (its fd, or after a send:
        ZeroMQ's fd is edge-triggered, and a send may take the edge a reply brought)."""
        self._exchanges: dict[bytes, Exchange] = {}
        self._tags = itertools.count(1)
        self._ids = itertools.count(1)
        self.connected_to: str | None = None
        """The endpoint the socket is connected to: ``endpoint``, or its local shortcut."""
        self._reader: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None

    @property
    def reachable(self) -> bool:
        return self.lost_reason is None

    def new_id(self) -> int:
        """A request id unique on this connection."""
        return next(self._ids)

    async def start(self) -> None:
        self._connect(preferred_endpoint(self.endpoint))
        self.last_heard = time.monotonic()
        self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def close(self) -> None:
        if self._prober is not None:
            await _stop(self._prober)
        await self._disconnect()
        self._fail(lambda exchange: True, "the gateway is shutting down")
        self._context.term()

    def _connect(self, target: str) -> None:
        socket = make_socket(self._context, zmq.DEALER, hwm=LINK_HWM)
        if self._curve is not None:
            apply_client(socket, self._curve)
        socket.connect(target)
        self._socket, self.connected_to = socket, target
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _disconnect(self) -> None:
        if self._reader is not None:
            await _stop(self._reader)
            self._reader = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def _look_again(self) -> None:
        """While the broker is silent, look for its local shortcut again: a broker that
        came back on the same port may offer one it did not, or no longer offer it."""
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(None, preferred_endpoint, self.endpoint)
        if target == self.connected_to or self.lost_reason is None:
            return
        log.info("broker at %s: connecting over %s (was %s)", self.endpoint, target,
                 self.connected_to)
        await self._disconnect()
        self._connect(target)

    def open(self, frame: bytes) -> Exchange:
        """Send ``frame`` (requests that expect replies) as a new exchange."""
        exchange = Exchange(self, next(self._tags).to_bytes(8, "big"), time.monotonic())
        self._exchanges[exchange.tag] = exchange
        self._send(exchange.tag, frame)
        return exchange

    def notify(self, frame: bytes) -> None:
        """Send ``frame`` (notifications only): nothing comes back."""
        self._send(_NO_REPLY_TAG, frame)

    def forget(self, exchange: Exchange) -> None:
        self._exchanges.pop(exchange.tag, None)

    @property
    def waiting(self) -> int:
        """Exchanges waiting for replies."""
        return len(self._exchanges)

    async def call(self, method: str, params: Any = None, timeout_s: float = 5.0) -> Any:
        """Call a built-in method (``_metrics``, ``_info``, ``_ping``); raises RpcError."""
        exchange = self.open(encode_request(method, params, self.new_id()))
        try:
            reply = orjson.loads(await exchange.next(timeout_s))
        finally:
            exchange.close()
        if "error" in reply:
            raise rpc_error_from_object(reply["error"])
        return reply.get("result")

    def _send(self, tag: bytes, frame: bytes) -> None:
        assert self._socket is not None
        try:
            self._socket.send_multipart([tag, frame], zmq.NOBLOCK, copy=len(frame) < 65536)
        except zmq.ZMQError as exc:
            raise RpcError(ErrorCode.BROKER_UNREACHABLE,
                           f"Broker unreachable: cannot send to {self.endpoint}: {exc}") from exc
        self._readable.set()

    async def _read_loop(self) -> None:
        socket = self._socket
        assert socket is not None
        loop = asyncio.get_running_loop()
        readable = self._readable
        descriptor = int(socket.getsockopt(zmq.FD))
        loop.add_reader(descriptor, readable.set)
        try:
            while True:
                readable.clear()
                self._read_all(socket)
                if int(socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(readable.wait(), READER_CHECK_S)
        finally:
            loop.remove_reader(descriptor)

    def _read_all(self, socket: zmq.Socket[Any]) -> None:
        while True:
            try:
                frames = receive_frames(socket)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            if len(frames) == 2:
                exchange = self._exchanges.get(frames[0])
                if exchange is not None:
                    exchange.deliver(frames[1])

    async def _probe_loop(self) -> None:
        while True:
            started = time.monotonic()
            with contextlib.suppress(TimeoutError, LinkLost, RpcError, ValueError):
                self._heard_run(await self.call("_ping", None, self.probe_interval_s), started)
            self._check_silence(time.monotonic())
            if self.lost_reason is not None:
                await self._look_again()
            await asyncio.sleep(max(0.0, self.probe_interval_s - (time.monotonic() - started)))

    def _heard_run(self, pong: Any, asked_at: float) -> None:
        run = pong.get("broker") if isinstance(pong, dict) else None
        if self.run is not None and run != self.run:
            log.warning("broker at %s restarted (run %s, was %s)", self.endpoint, run, self.run)
            self._fail(lambda exchange: exchange.sent_at < asked_at,
                       "the broker restarted and lost this request; send it again")
        if self.lost_reason is not None:
            log.info("broker at %s answers again", self.endpoint)
        self.run = run
        self.lost_reason = None

    def _check_silence(self, now: float) -> None:
        silent_s = now - self.last_heard
        if silent_s <= self.unreachable_after_s:
            return
        reason = f"no answer from the broker at {self.endpoint} for {silent_s:.1f} s"
        if self.lost_reason is None:
            log.warning("%s", reason)
        self.lost_reason = reason
        self._fail(lambda exchange: True, reason)

    def _fail(self, which: Any, reason: str) -> None:
        for exchange in [e for e in self._exchanges.values() if which(e)]:
            self._exchanges.pop(exchange.tag, None)
            exchange.deliver(LinkLost(reason))
