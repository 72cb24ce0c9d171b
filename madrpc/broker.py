"""The broker process: two ROUTER sockets around :class:`~madrpc.broker_state.BrokerState`.

One poller loop: read everything waiting on each socket, let the state decide, send what
it collected. No JavaScript and no payload decoding happen here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import psutil
import zmq

from .broker_outbox import BACKEND, FRONTEND
from .broker_state import BrokerState
from .config import BrokerConfig
from .prometheus import MetricsServer, exposition
from .sockets import make_socket, send_frames

__all__ = ["Broker"]

log = logging.getLogger(__name__)

TICK_S = 0.02
"""How often deadlines, heartbeats and liveness are checked."""
MAX_DRAIN = 2000
"""Messages read from one socket before the loop looks at the other one."""
PROCESS_STATS_INTERVAL_S = 1.0
CLOSE_LINGER_MS = 200
"""On shutdown, how long DISCONNECT messages to workers may take to leave."""


class Broker:
    """A running broker. ``run()`` blocks; ``stop()`` may be called from any thread."""

    def __init__(self, config: BrokerConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._stop_requested = threading.Event()
        self._drain = True
        self.ready = threading.Event()
        """Set once both sockets are bound."""
        self.state = BrokerState(config, time.monotonic())
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent()
        self.frontend = self._router(config.frontend)
        self.backend = self._router(config.backend)
        self.metrics_server: MetricsServer | None = None
        if config.metrics_http:
            host, _, port = config.metrics_http.rpartition(":")
            self.metrics_server = MetricsServer(host or "127.0.0.1", int(port))
            self.metrics_server.start()
        self.ready.set()

    def _router(self, endpoint: str) -> zmq.Socket[Any]:
        socket = make_socket(
            self.context, zmq.ROUTER, hwm=self.config.hwm,
            max_message_bytes=self.config.max_message_bytes, router_mandatory=True,
        )
        socket.bind(endpoint)
        return socket

    def stop(self, drain: bool = True) -> None:
        """Ask the loop to finish: with ``drain``, answer in-flight requests first."""
        self._drain = drain
        self._stop_requested.set()

    def run(self) -> None:
        """Serve until :meth:`stop`; then drain, tell the workers, and close."""
        state = self.state
        config = self.config
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        log.info("broker serving clients on %s, workers on %s", config.frontend, config.backend)
        next_tick = 0.0
        next_stats = 0.0
        drain_until: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self._stop_requested.is_set() and drain_until is None:
                    drain_until = self._begin_shutdown(now)
                if drain_until is not None and (
                    now >= drain_until or len(state.requests) == 0
                ):
                    break
                timeout_ms = max(0, int((next_tick - now) * 1000))
                events = dict(poller.poll(timeout_ms))
                now = time.monotonic()
                if self.backend in events:
                    self._drain_socket(self.backend, BACKEND, now)
                if self.frontend in events:
                    self._drain_socket(self.frontend, FRONTEND, now)
                if now >= next_tick:
                    state.on_tick(now)
                    next_tick = now + TICK_S
                    if now >= next_stats:
                        self._refresh_process_stats()
                        if self.metrics_server is not None:
                            self.metrics_server.text = exposition(
                                state.report.metrics(now), state.figures.methods
                            )
                        next_stats = now + PROCESS_STATS_INTERVAL_S
                self._flush(now)
        finally:
            self._close()

    def _begin_shutdown(self, now: float) -> float:
        self.state.run.draining = True
        if not self._drain:
            return now
        log.info(
            "broker draining: %d requests in flight, up to %.1f s",
            len(self.state.requests), self.config.drain_timeout_s,
        )
        return now + self.config.drain_timeout_s

    def _drain_socket(self, socket: zmq.Socket[Any], side: int, now: float) -> None:
        state = self.state
        handle = state.on_worker_message if side == BACKEND else None
        for _ in range(MAX_DRAIN):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if handle is not None:
                    handle(frames[0], frames[1:], now)
                else:
                    state.on_client_frame(frames, now)
            except Exception:  # noqa: BLE001 - a bug must cost one message, not the broker
                state.figures.dropped["internal error"] += 1
                log.exception("internal error handling a message; message dropped")

    def _flush(self, now: float) -> None:
        for side, frames in self.state.take_sends():
            socket = self.frontend if side == FRONTEND else self.backend
            try:
                send_frames(socket, frames)
            except zmq.ZMQError as exc:
                if side == BACKEND:
                    self.state.on_unreachable(frames[0], now)
                else:
                    self.state.figures.dropped["reply to vanished client"] += 1
                    log.debug("reply to client %s lost: %s", frames[0].hex(), exc)

    def _refresh_process_stats(self) -> None:
        try:
            with self._process.oneshot():
                self.state.figures.process_stats = {
                    "pid": self._process.pid,
                    "cpu_percent": self._process.cpu_percent(),
                    "rss_bytes": self._process.memory_info().rss,
                }
        except psutil.Error:
            pass

    def _close(self) -> None:
        for goodbye in self.state.goodbye_messages():
            with contextlib.suppress(zmq.ZMQError):
                send_frames(self.backend, goodbye)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.frontend.close(linger=0)
        self.backend.close(linger=CLOSE_LINGER_MS)
        if self._own_context:
            self.context.term()
        log.info("broker stopped")
