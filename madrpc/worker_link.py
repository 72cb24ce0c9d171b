"""A worker's link to the broker (Paranoid Pirate): one DEALER socket, heartbeat liveness,
and reconnection with capped exponential back-off.

Mechanism only: what the broker's messages mean, and what to do when the link is lost or
registered again, is the worker's business (:mod:`madrpc.worker`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .config import WorkerConfig
from .curve import apply_client, client_curve
from .liveness import Backoff, Heartbeat
from .shortcut import preferred_endpoint
from .sockets import drain, make_socket, receive_frames, send_frames

__all__ = ["CLOSE_LINGER_MS", "BrokerLink"]

log = logging.getLogger(__name__)

CLOSE_LINGER_MS = 200
"""On shutdown, how long the last message to the broker may take to leave."""
_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
"""Handshake outcomes that mean the broker will not take our key."""


class BrokerLink:
    """The worker's DEALER to the broker's backend, and whether the broker is alive."""

    def __init__(self, context: zmq.Context[Any], config: WorkerConfig) -> None:
        self.context = context
        self.config = config
        self.socket: zmq.Socket[Any] | None = None
        """None while waiting to reconnect."""
        self.connected = threading.Event()
        """Set while registered: the broker acknowledged our READY."""
        self.instance: str | None = None
        """The run of the broker we last registered with (tells a restart from a blip)."""
        self.curve = client_curve(config.curve_secret, config.server_key)
        """Our key pair and the broker's key when the broker has CURVE."""
        self._heartbeat = Heartbeat(config.heartbeat_interval_s, config.heartbeat_liveness, 0.0)
        self._backoff = Backoff(config.reconnect_initial_s, config.reconnect_max_s)
        self.reconnects = 0
        """Reconnections since we were last registered."""
        self._reconnect_at: float | None = None
        self._monitor: zmq.Socket[Any] | None = None
        """Handshake events of the socket, with CURVE (a refused key is said once)."""
        self._refusal_said = False

    def connect(self, now: float) -> None:
        """A new socket (the old one, if any, is dropped with what it had queued)."""
        config = self.config
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = make_socket(
            self.context, zmq.DEALER, hwm=config.hwm, max_message_bytes=config.max_message_bytes
        )
        if self.curve is not None:
            apply_client(self.socket, self.curve)
            self._close_monitor()
            self._monitor = self.socket.get_monitor_socket(
                _REFUSED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.socket.connect(preferred_endpoint(config.broker))
        self._heartbeat = Heartbeat(config.heartbeat_interval_s, config.heartbeat_liveness, now)
        self._reconnect_at = None

    def send(self, frames: list[bytes]) -> None:
        """Send now or drop (a full queue or a closed link: the broker will notice)."""
        if self.socket is None:
            return
        try:
            send_frames(self.socket, frames)
        except zmq.ZMQError as exc:
            log.debug("send to broker failed: %s", exc)

    def receive(self) -> Iterator[list[bytes]]:
        """The messages waiting on the socket (for a loop whose poll found one); none after
        one whose handling closed the socket (the broker asked us to reconnect)."""
        socket = self.socket
        if socket is None:
            return
        for frames in drain(socket, receive_frames):
            yield frames
            if self.socket is not socket:
                return

    def heard(self, now: float) -> None:
        self._heartbeat.heard(now)

    def check_handshakes(self) -> None:
        """Say (once, until a handshake succeeds) that the broker refused our CURVE key:
        otherwise a refused worker only sees silence."""
        monitor = self._monitor
        while monitor is not None and monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event & _REFUSED and not self._refusal_said:
                self._refusal_said = True
                log.error("the broker at %s refused our CURVE key: is our public key in its "
                          "--worker-keys directory, and --server-key its public key?",
                          self.config.broker)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._refusal_said = False

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    def registered(self, instance: str | None) -> bool:
        """The broker run ``instance`` acknowledged us; True if we had reconnected."""
        self.instance = instance
        self.connected.set()
        reconnected = self.reconnects > 0
        self.reconnects = 0
        return reconnected

    def lost(self, now: float, reason: str, at_once: bool = False) -> None:
        """Close the socket and reconnect after a back-off; at once when a live broker
        asked us to (the first time only)."""
        delay = 0.0 if at_once and self.reconnects == 0 else self._backoff.delay(self.reconnects)
        self.reconnects += 1
        log.warning("broker %s: %s; reconnecting in %.2f s", self.config.broker, reason, delay)
        self.connected.clear()
        self._close_monitor()
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        self._reconnect_at = now + delay

    def reconnect_due(self, now: float) -> bool:
        return self.socket is None and self._reconnect_at is not None and now >= self._reconnect_at

    def silent(self, now: float) -> bool:
        """Connected, and nothing heard from the broker for the liveness window."""
        return self.socket is not None and self._heartbeat.expired(now)

    def heartbeat_due(self, now: float) -> bool:
        """Connected, and a heartbeat should go out now (the next one is then scheduled)."""
        return self.socket is not None and self._heartbeat.due(now)

    def close(self, goodbye: list[bytes]) -> None:
        """Send ``goodbye`` (it gets a moment to leave) and close."""
        self._close_monitor()
        if self.socket is not None:
            self.send(goodbye)
            self.socket.close(linger=CLOSE_LINGER_MS)
            self.socket = None
