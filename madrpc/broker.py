"""The broker process: two ROUTER sockets around :class:`~madrpc.broker_state.BrokerState`.

One poller loop: read everything waiting on each socket, let the state decide, send what
it collected. No JavaScript and no payload decoding happen here. With CURVE
(:mod:`madrpc.curve`) both sockets encrypt and authenticate, each message comes with its
sender's key, and ``SIGHUP`` (:meth:`Broker.reload_keys`) re-reads the key directories.
Replies a client connection cannot take now wait in the state's reply backlog.
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

from .affinity import pin_to_cpu
from .broker_outbox import BACKEND, FRONTEND
from .broker_state import BrokerState
from .config import BrokerConfig
from .curve import (
    BACKEND_DOMAIN,
    FRONTEND_DOMAIN,
    Gatekeeper,
    KeyPair,
    KeyRing,
    apply_server,
    load_keypair,
)
from .endpoints import is_private
from .errors import ConfigError
from .prometheus import MetricsServer, exposition
from .shortcut import offer
from .sockets import drain, make_socket, poll_timeout_ms, receive_frames, send_frames

__all__ = ["Broker", "check_binds", "receive_with_key"]

log = logging.getLogger(__name__)

TICK_S = 0.02
"""How often deadlines, heartbeats and liveness are checked."""
MAX_DRAIN = 2000
"""Messages read from one socket before the loop looks at the other one."""
PROCESS_STATS_INTERVAL_S = 1.0
CLOSE_LINGER_MS = 200
"""On shutdown, how long DISCONNECT messages to workers may take to leave."""
BACKLOG_RETRY_S = 0.005
"""While replies wait for a client connection to read, how often sending is tried again."""


class Broker:
    """A running broker. ``run()`` blocks; ``stop()`` may be called from any thread."""

    def __init__(self, config: BrokerConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        if config.cpu is not None:   # before the context's I/O thread exists
            pin_to_cpu(config.cpu)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self._stop_requested = threading.Event()
        self._drain = True
        self.ready = threading.Event()
        """Set once both sockets are bound."""
        self._reload_requested = threading.Event()
        check_binds(config)
        self.keys: KeyRing | None = None
        self._server_keys: KeyPair | None = None
        self.gatekeeper: Gatekeeper | None = None
        if config.curve_secret is not None:
            assert config.worker_keys is not None   # check_binds made sure
            self._server_keys = load_keypair(config.curve_secret)
            self.keys = KeyRing.from_dirs(config.client_keys, config.worker_keys,
                                          config.admin_keys)
            self.gatekeeper = Gatekeeper(self.context, self.keys)
            self.gatekeeper.start()
        self.state = BrokerState(config, time.monotonic(), self.keys)
        self.state.report.curve = self.keys is not None
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent()
        self.frontend = self._router("frontend", config.frontend, FRONTEND_DOMAIN,
                                     config.client_hwm)
        self.backend = self._router("backend", config.backend, BACKEND_DOMAIN, config.hwm)
        self.metrics_server: MetricsServer | None = None
        if config.metrics_http:
            host, _, port = config.metrics_http.rpartition(":")
            self.metrics_server = MetricsServer(host or "127.0.0.1", int(port))
            self.metrics_server.start()
        self.ready.set()

    def _router(self, name: str, endpoint: str, domain: str, send_hwm: int) -> zmq.Socket[Any]:
        socket = make_socket(
            self.context, zmq.ROUTER, hwm=self.config.hwm,
            max_message_bytes=self.config.max_message_bytes, router_mandatory=True,
        )
        socket.setsockopt(zmq.SNDHWM, send_hwm)
        if self._server_keys is not None:
            apply_server(socket, self._server_keys, domain)
        socket.bind(endpoint)
        shortcut = offer(socket) if self.config.local_shortcut else None
        if shortcut is not None:
            self.state.report.shortcuts[name] = shortcut
        return socket

    def bind_in_process(self, name: str) -> tuple[str, str]:
        """Also bind the frontend and the backend to ``inproc://NAME-frontend`` and
        ``inproc://NAME-backend`` (returned in that order), for clients and workers that
        share this broker's ZeroMQ context (:class:`~madrpc.local.LocalGrid`): their
        messages go from thread to thread, without ZeroMQ's I/O threads. Call it before
        :meth:`run`, from the thread that made the broker. Not with CURVE: an ``inproc://``
        peer has no key to check."""
        if self.keys is not None:
            raise ConfigError("in-process endpoints would bypass CURVE; use the ipc:// or "
                              "tcp:// endpoints")
        frontend, backend = f"inproc://{name}-frontend", f"inproc://{name}-backend"
        self.frontend.bind(frontend)
        self.backend.bind(backend)
        return frontend, backend

    def reload_keys(self) -> None:
        """Re-read the key directories (from any thread, e.g. a SIGHUP handler)."""
        self._reload_requested.set()

    def _reload(self, now: float) -> None:
        if self.keys is None:
            log.info("SIGHUP: the broker has no CURVE keys to reload")
            return
        try:
            self.keys.reload()
        except ConfigError as exc:
            log.error("could not reload the CURVE keys, keeping the old ones: %s", exc)
            return
        self.state.on_keys_reloaded(now)

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
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self._reload(now)
                wake = next_tick if not state.backlog else min(next_tick, now + BACKLOG_RETRY_S)
                events = dict(poller.poll(poll_timeout_ms(wake - now)))
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
                if state.backlog:
                    self._send_backlog()
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
        receive = receive_with_key if self.keys is not None else _without_key
        for frames, peer in drain(socket, receive, MAX_DRAIN):
            try:
                if handle is not None:
                    handle(frames[0], frames[1:], now, peer)
                else:
                    state.on_client_frame(frames, now, peer)
            except Exception:  # noqa: BLE001 - a bug must cost one message, not the broker
                state.figures.dropped["internal error"] += 1
                log.exception("internal error handling a message; message dropped")

    def _flush(self, now: float) -> None:
        state = self.state
        for side, frames in state.take_sends():
            if side == FRONTEND:
                self._reply(frames)
                continue
            try:
                send_frames(self.backend, frames)
            except zmq.ZMQError:
                state.on_unreachable(frames[0], now)

    def _reply(self, frames: list[bytes]) -> None:
        """Send a reply now, or keep it (in order) while its connection is not reading."""
        backlog = self.state.backlog
        if backlog.holds(frames[0]):
            backlog.hold(frames)
            return
        try:
            send_frames(self.frontend, frames)
        except zmq.Again:
            backlog.hold(frames)
        except zmq.ZMQError as exc:
            self.state.on_client_gone(frames[0], time.monotonic())
            log.debug("reply to client %s lost: %s", frames[0].hex(), exc)

    def _send_backlog(self) -> None:
        """Send what waits for each connection, oldest first, until its queue is full."""
        backlog = self.state.backlog
        for identity in backlog.identities():
            while (frames := backlog.peek(identity)) is not None:
                try:
                    send_frames(self.frontend, frames)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    self.state.on_client_gone(identity, time.monotonic())
                    break
                backlog.sent(identity)

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
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.frontend.close(linger=0)
        self.backend.close(linger=CLOSE_LINGER_MS)
        if self._own_context:
            self.context.term()
        log.info("broker stopped")


def receive_with_key(socket: zmq.Socket[Any]) -> tuple[list[bytes], str | None]:
    """One message and its sender's CURVE key (the ZAP User-Id, z85)."""
    first = socket.recv(zmq.NOBLOCK, copy=False)
    frames = [first.bytes]
    more = first.more
    while more:
        frames.append(socket.recv())
        more = bool(socket.rcvmore)
    key = first.get("User-Id")
    return frames, key if isinstance(key, str) else None


def _without_key(socket: zmq.Socket[Any]) -> tuple[list[bytes], str | None]:
    return receive_frames(socket), None


def check_binds(config: BrokerConfig) -> None:
    """Refuse settings that would expose the grid: a public bind without CURVE (unless
    ``insecure``), CURVE without worker keys, key directories without CURVE."""
    curve = config.curve_secret is not None
    if curve and config.worker_keys is None:
        raise ConfigError("--curve-secret needs --worker-keys DIR: workers are always "
                          "checked when CURVE is on")
    if not curve and (config.client_keys or config.worker_keys or config.admin_keys):
        raise ConfigError("key directories need --curve-secret FILE (the broker's own key)")
    public = [] if curve else [e for e in (config.frontend, config.backend)
                               if not is_private(e)]
    if public and not config.insecure:
        raise ConfigError(
            f"refusing to expose {', '.join(public)} without CURVE: give --curve-secret "
            "(see docs/security.md), or --insecure to allow it anyway"
        )
    if config.metrics_http and not is_private(config.metrics_http):
        public.append(f"http://{config.metrics_http}")
        if not config.insecure:
            raise ConfigError(
                f"refusing to serve metrics on http://{config.metrics_http}: HTTP has no "
                "CURVE, so anyone who reaches it can read them; give --insecure to allow it, "
                "or serve them on 127.0.0.1 behind your own proxy"
            )
    if public:
        log.warning("--insecure: %s reachable from other machines without authentication",
                    ", ".join(public))
