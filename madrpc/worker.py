"""The worker process: a DEALER to the broker, a pool of engine processes, one loop.

JavaScript never runs here (it runs in the engine processes), so this loop always
answers heartbeats, however busy the contexts are. The decisions live in
:class:`~madrpc.worker_state.WorkerState`; this module polls, spawns and sends.
"""

from __future__ import annotations

import logging
import os
import socket as socketlib
import threading
import time
from typing import Any

import psutil
import zmq

from . import engine_protocol as ep
from . import protocol as p
from .__about__ import __version__
from .affinity import pin_to_cpu
from .bundle import Bundle
from .config import WorkerConfig
from .engine_pool import EnginePool, EngineProcess
from .errors import ProtocolError, WorkerStartError
from .sockets import poll_timeout_ms
from .worker_fleet import EngineFleet
from .worker_link import BrokerLink
from .worker_script import WATCH_INTERVAL_S, WorkerScript
from .worker_state import WorkerState

__all__ = ["Worker"]

log = logging.getLogger(__name__)
js_log = logging.getLogger("madrpc.js")

TICK_S = 0.05
"""How often heartbeats, broker liveness and engine processes are checked."""
_JS_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR}


class Worker:
    """A running worker. ``run()`` blocks and returns an exit status."""

    def __init__(
        self, config: WorkerConfig, context: zmq.Context[Any] | None = None,
        *, engine_log_level: str = "WARNING",
    ) -> None:
        self.config = config
        engine_cpus = None if config.cpu is None else pin_to_cpu(config.cpu)   # no threads yet
        self.code = WorkerScript(config.script, config.watch)
        self.script = self.code.name
        self.script_version = ""
        """The version of the script the newest engines run."""
        self.engine_log_level = engine_log_level
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.state = WorkerState(config)
        self.worker_id = f"{socketlib.gethostname()}:{os.getpid()}"
        self.pool = EnginePool(config, engine_log_level, engine_cpus)
        self.methods: list[str] = []
        self.v8 = ""
        self.link = BrokerLink(self.context, config)
        self._resend_calls_at: float | None = None
        self._stop_requested = threading.Event()
        self.fleet = EngineFleet(self.pool, self.state, config.contexts, self._stop_requested,
                                 self._drain_engines)
        self._drain = True
        self._drain_until: float | None = None
        self._process = psutil.Process(os.getpid())
        self._said_registered = False
        self._said_wrong_port = False
        self.connected = self.link.connected
        """Set while the worker is registered with a broker (for tests and embedding)."""

    # ================================================================ lifecycle

    def stop(self, drain: bool = True) -> None:
        """Finish: with ``drain``, complete held requests first (up to the drain timeout)."""
        self._drain = drain
        self._stop_requested.set()

    def run(self) -> int:
        """Start engines, register, serve until stopped. 0 on a clean stop, 1 on failure.
        Without a script of its own, the worker asks the grid for its script and starts
        engines when one comes."""
        try:
            if not self.code.deployed:
                self._start_engines(self.code.load_local())
        except WorkerStartError as exc:
            log.error("%s", exc)
            self._shutdown()
            return 1
        try:
            self._connect(time.monotonic())
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _start_engines(self, bundle: Bundle) -> None:
        self.fleet.start(bundle, self.script)
        if not self.methods:
            raise WorkerStartError(
                f"{self.script} registers no functions: call madrpc.register(name, fn)")

    def _shutdown(self) -> None:
        self.pool.close()
        self.link.close(p.message(p.DISCONNECT, b"worker stopping"))
        if self._own_context:
            self.context.term()
        log.info("worker %s stopped", self.worker_id)

    # ================================================================ broker link

    def _connect(self, now: float) -> None:
        self.link.connect(now)
        if self.methods:
            self._send_ready()
        else:
            self._fetch()

    def _fetch(self) -> None:
        """Ask for the grid's script (we have none that loaded yet)."""
        self.link.send(p.message(p.FETCH, self.code.latest.encode()))

    def _send_ready(self, update: bool = False) -> None:
        info = {
            "id": self.worker_id,
            "host": socketlib.gethostname(),
            "pid": os.getpid(),
            "contexts": self.config.contexts,
            "credit": self.state.free_credit,
            "methods": self.methods,
            "version": __version__,
            "v8": self.v8,
            "script": self.script,
            "script_version": self.script_version,
            "deployed": self.code.deployed,
            "update": update,
        }
        self.link.send(p.json_message(p.READY, info))

    def _broker_lost(self, now: float, reason: str, at_once: bool = False) -> None:
        self.link.lost(now, reason, at_once)
        self.state.on_broker_lost()

    def _on_broker(self, frames: list[bytes], now: float) -> None:
        try:
            message = p.decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a message from the broker: %s", exc)
            return
        self.link.heard(now)
        command = message.command
        if not self.connected.is_set() and command == p.HEARTBEAT:
            instance, grace_s = p.broker_run(message)
            self._registered(instance, grace_s, now)
        if command == p.REQUEST:
            self.state.on_requests(message.frames, now, time.time() * 1000)
        elif command == p.RESULT:
            self.state.on_results(message.pairs())
        elif command == p.PARTIAL:
            self.state.on_partials(message.pairs())
        elif command == p.MORE:
            self.state.on_grants(message.pairs())
        elif command == p.CANCEL:
            self.state.on_cancels(message.frames)
        elif command == p.SCRIPT and self.code.deployed:
            self._on_script(message.frames)
        elif command == p.DISCONNECT:
            reason = p.disconnect_reason(message)
            if reason.startswith(p.WRONG_PORT):
                if not self._said_wrong_port:
                    self._said_wrong_port = True
                    log.error("%s: %s", self.config.broker, reason.removeprefix(p.WRONG_PORT))
                self._broker_lost(now, "wrong port")
                return
            self._broker_lost(now, f"asked us to disconnect ({reason})", at_once=True)

    def _registered(self, instance: str | None, grace_s: float, now: float) -> None:
        """The broker acknowledged our READY. After a reconnection: if it is the broker
        we knew, it declared us dead and re-dispatched our requests, so drop them; if it
        is a new broker, hand over what we hold at once, and send our pending nested calls
        again once the other workers have had the broker's grace to hand over theirs."""
        state = self.state
        if state.requests or state.handover:
            if instance is not None and instance == self.link.instance:
                log.warning("the broker re-dispatched our %d requests; dropping them",
                            len(state.requests))
                for slot in state.abandon_all():
                    self.pool.send(slot, [ep.ABORT])
            else:
                adopt = state.adoption_frames(time.time() * 1000, now)
                if adopt:
                    self.link.send([p.TAG, p.ADOPT, *adopt])
                self._resend_calls_at = now + grace_s
                log.info("handed %d requests and %d results to the new broker",
                         len(state.requests), len(state.handover.recent))
        if self.link.registered(instance):
            log.info("registered with broker %s again", self.config.broker)
        elif not self._said_registered:
            self._said_registered = True
            log.info("registered with broker %s: %d contexts, %d functions (%s)",
                     self.config.broker, self.config.contexts, len(self.methods),
                     ", ".join(sorted(self.methods)[:8])
                     + (", ..." if len(self.methods) > 8 else ""))

    # ================================================================ the loop

    def _loop(self) -> None:
        poller = zmq.Poller()
        engines = self.pool.fileno()
        poller.register(engines, zmq.POLLIN)
        registered: zmq.Socket[Any] | None = None
        next_tick = 0.0
        next_watch = 0.0
        while True:
            broker = self.link.socket
            if broker is not registered:
                if registered is not None:
                    poller.unregister(registered)
                if broker is not None:
                    poller.register(broker, zmq.POLLIN)
                registered = broker
            now = time.monotonic()
            if self._stop_requested.is_set() and self._finished_stopping(now):
                return
            wait_ms = 0 if self.pool.pending else poll_timeout_ms(next_tick - now)
            events = dict(poller.poll(wait_ms))
            now = time.monotonic()
            try:
                if broker is not None and broker in events:
                    for frames in self.link.receive():
                        self._on_broker(frames, now)
                if engines in events or self.pool.pending:
                    self._drain_engines(now)
            except WorkerStartError:
                raise
            except Exception:  # noqa: BLE001 - a bug must cost one message, not the worker
                log.exception("internal error handling a message; message dropped")
            if now >= next_tick:
                self._tick(now)
                next_tick = now + TICK_S
            if self.config.watch and now >= next_watch:
                self._check_script(now)
                next_watch = now + WATCH_INTERVAL_S
            self.state.schedule(now, time.time() * 1000)
            self._flush()

    def _finished_stopping(self, now: float) -> bool:
        state = self.state
        if self._drain_until is None:
            if not self._drain:
                return True
            self._drain_until = now + self.config.drain_timeout_s
            state.draining = True
            self.link.send(p.message(p.DRAIN))
            log.info("worker draining: %d requests held, up to %.1f s",
                     len(state.requests), self.config.drain_timeout_s)
        return not state.requests or now >= self._drain_until or self.link.socket is None

    def _drain_engines(self, now: float, starting: bool = False) -> None:
        for process, frames in self.pool.receive():
            self._on_engine(process, frames, now, starting)

    def _on_engine(
        self, proc: EngineProcess, frames: list[bytes], now: float, starting: bool
    ) -> None:
        """What an engine said (see madrpc.engine_protocol for the messages)."""
        try:
            message = ep.decode_engine_message(frames)
        except ProtocolError as exc:
            log.warning("engine %d: %s", proc.slot, exc)
            return
        index = proc.slot
        if isinstance(message, ep.Output):
            self.state.on_engine_output(index, message.step_done, message.outbox, now,
                                        message.slot)
        elif isinstance(message, ep.Reset):
            self.state.on_engine_reset(index, message.reason, message.culprit, message.outbox,
                                       message.detail, now, message.slot, message.step_done)
        elif isinstance(message, ep.Ready):
            self._on_engine_ready(proc, message.info, now)
        else:
            if starting:
                raise WorkerStartError(f"script failed to load: {message.message}")
            if proc.replaces is not None:
                log.error("the changed script failed to load; keeping the old one: %s",
                          message.message)
                self.code.failed(message.message)
                self.pool.release(proc.slot)
                self.state.remove_engine(proc.slot, now)
            else:
                log.error("engine could not load the script: %s", message.message)

    def _on_engine_ready(self, proc: EngineProcess, info: dict[str, Any], now: float) -> None:
        methods = [str(m) for m in info.get("methods", [])]
        self.v8 = str(info.get("v8", ""))
        self.state.on_engine_ready(proc.slot, proc.identity)
        if proc.replaces is not None and proc.replaces in self.state.engines:
            self.state.retire_engine(proc.replaces)
            proc.replaces = None
        first = not self.methods
        # The version changes once every context runs it: then no old engine takes work.
        new_version = proc.version != self.script_version and not self.pool.rolling()
        if methods != self.methods or new_version:
            self.methods = methods
            if new_version:
                self.script_version = proc.version
            if not first:
                log.info("script version %s loaded: %d functions", proc.version, len(methods))
                self._send_ready(update=True)

    def _tick(self, now: float) -> None:
        self.fleet.check(now)
        self.link.check_handshakes()
        if self._resend_calls_at is not None and now >= self._resend_calls_at:
            self._resend_calls_at = None
            if self.connected.is_set():
                self.state.resend_calls()
        if self.link.reconnect_due(now):
            self._connect(now)
        elif self.link.silent(now):
            self._broker_lost(now, "silent for too long")
        elif self.link.heartbeat_due(now):
            if self.methods:
                self.link.send(p.json_message(p.HEARTBEAT, self._snapshot(now)))
            else:   # still waiting for the grid's script: ask again (the answer is heard)
                self._fetch()

    def _snapshot(self, now: float) -> dict[str, Any]:
        """Heartbeat body: the state's figures plus CPU and memory of us and our engines."""
        snapshot = self.state.snapshot(now)
        if self.code.error is not None:
            snapshot["script_error"] = self.code.error[:1000]
        try:
            processes = [self._process, *self.pool.psutil_processes()]
            snapshot["cpu_percent"] = round(sum(pr.cpu_percent() for pr in processes), 1)
            snapshot["rss_bytes"] = sum(pr.memory_info().rss for pr in processes)
        except psutil.Error:
            pass
        return snapshot

    # ================================================================ new code

    def _check_script(self, now: float) -> None:
        """--watch: a file of the script changed."""
        bundle = self.code.changed_on_disk()
        if bundle is not None:
            log.info("%s changed: starting engines with the new script", self.script)
            self.fleet.roll_to(bundle)

    def _on_script(self, frames: list[bytes]) -> None:
        """The grid's script (SCRIPT): the first one starts the engines and registers us;
        a later one rolls the engines over to it."""
        bundle = self.code.from_grid(frames, self.config.broker)
        if bundle is None:
            return
        if self.methods:
            self.fleet.roll_to(bundle)
            return
        try:
            self._start_engines(bundle)
        except WorkerStartError as exc:
            log.error("script version %s failed to load; waiting for another: %s",
                      bundle.version, exc)
            self.code.failed(str(exc))
            self.fleet.stop_all(time.monotonic())
            return
        self._send_ready()

    # ================================================================ output

    def _flush(self) -> None:
        state = self.state
        for level, method, request_id, text in state.logs:   # logged before it is answered
            js_log.log(_JS_LEVELS.get(level, logging.INFO), "[%s id=%s] %s",
                       method or "-", request_id, text)
        state.logs.clear()
        for slot, frames in state.take_engine_messages():
            self.pool.send(slot, frames)
        if self.connected.is_set():   # else replies wait for the broker to acknowledge us
            for frames in state.take_broker_messages():
                self.link.send(frames)

