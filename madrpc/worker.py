"""The worker process: a DEALER to the broker, a pool of engine processes, one loop.

JavaScript never runs here (it runs in the engine processes), so this loop always
answers heartbeats, however busy the contexts are. The decisions live in
:class:`~madrpc.worker_state.WorkerState`; this module polls, spawns and sends.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
import psutil
import zmq

from . import protocol as p
from .__about__ import __version__
from .config import WorkerConfig
from .errors import ProtocolError
from .liveness import Backoff, Heartbeat
from .sockets import make_socket, send_frames
from .worker_state import WorkerState

__all__ = ["Worker", "WorkerStartError"]

log = logging.getLogger(__name__)
js_log = logging.getLogger("madrpc.js")

TICK_S = 0.05
"""How often heartbeats, broker liveness and engine processes are checked."""
ENGINE_START_TIMEOUT_S = 60.0
"""How long engines may take to build their context and load the script."""
ENGINE_STOP_TIMEOUT_S = 2.0
"""How long engines get to exit after STOP before they are killed."""
LOADERR_GRACE_MS = 1000
"""After an engine exits at start-up, how long its load error report may take to arrive."""
WATCH_INTERVAL_S = 0.5
"""How often --watch looks at the script's modification time."""
CLOSE_LINGER_MS = 200
"""On shutdown, how long the DISCONNECT to the broker may take to leave."""
_JS_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR}
_OOM_SIGNALS = {-signal.SIGTRAP, -signal.SIGABRT, -signal.SIGKILL, -signal.SIGSEGV}


class WorkerStartError(Exception):
    """The worker could not start: the script failed to load or registers nothing."""


@dataclass
class _Process:
    slot: int
    identity: bytes
    popen: subprocess.Popen[bytes]
    replaces: int | None = None
    """For a script reload: the slot this engine takes over once it is ready."""
    stopping: bool = False


class Worker:
    """A running worker. ``run()`` blocks and returns an exit status."""

    def __init__(
        self, config: WorkerConfig, context: zmq.Context[Any] | None = None,
        *, engine_log_level: str = "WARNING",
    ) -> None:
        self.config = config
        self.script = os.path.abspath(config.script)
        self.engine_log_level = engine_log_level
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.state = WorkerState(config)
        self.worker_id = f"{socketlib.gethostname()}:{os.getpid()}"
        self._tmpdir = tempfile.mkdtemp(prefix="madrpc-w-")
        self.engine_endpoint = f"ipc://{self._tmpdir}/engines"
        self.engines = make_socket(
            self.context, zmq.ROUTER, hwm=config.hwm, router_mandatory=True
        )
        self.engines.bind(self.engine_endpoint)
        self.processes: dict[bytes, _Process] = {}
        self._slot_process: dict[int, bytes] = {}
        self._spawned = 0
        self.methods: list[str] = []
        self.v8 = ""
        self.broker: zmq.Socket[Any] | None = None
        self._broker_heartbeat = Heartbeat(1, 1, 0)
        self.broker_instance: str | None = None
        """The run of the broker we last registered with (tells a restart from a blip)."""
        self._resend_calls_at: float | None = None
        self._reconnects = 0
        self._reconnect_at: float | None = None
        self._stop_requested = threading.Event()
        self._drain = True
        self._drain_until: float | None = None
        self._script_mtime = self._mtime()
        self._process = psutil.Process(os.getpid())
        self.connected = threading.Event()
        """Set once the worker has registered with a broker (for tests and embedding)."""

    # ================================================================ lifecycle

    def stop(self, drain: bool = True) -> None:
        """Finish: with ``drain``, complete held requests first (up to the drain timeout)."""
        self._drain = drain
        self._stop_requested.set()

    def run(self) -> int:
        """Start engines, register, serve until stopped. 0 on a clean stop, 1 on failure."""
        try:
            self._start_engines()
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

    def _start_engines(self) -> None:
        for _ in range(self.config.contexts):
            self._spawn(self.state.add_engine())
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        while not any(e.ready for e in self.state.engines.values()):
            if self._stop_requested.is_set():
                raise WorkerStartError("stopped while starting")
            if time.monotonic() > deadline:
                raise WorkerStartError(
                    f"engines did not start within {ENGINE_START_TIMEOUT_S:.0f} s"
                )
            if self.engines.poll(100):
                self._drain_engines(time.monotonic(), starting=True)
            for proc in list(self.processes.values()):
                if proc.popen.poll() is not None:
                    # Its LOADERR may still be on the way: read it before giving up.
                    if self.engines.poll(LOADERR_GRACE_MS):
                        self._drain_engines(time.monotonic(), starting=True)
                    raise WorkerStartError(
                        f"engine process exited with status {proc.popen.returncode} while "
                        f"loading {self.script}"
                    )
        if not self.methods:
            raise WorkerStartError(
                f"{self.script} registers no functions: call madrpc.register(name, fn)"
            )

    def _spawn(self, slot: int, replaces: int | None = None) -> None:
        self._spawned += 1
        identity = b"e%d.%d" % (slot, self._spawned)
        command = [
            sys.executable, "-m", "madrpc.engine",
            "--endpoint", self.engine_endpoint,
            "--identity", identity.decode(),
            "--script", self.script,
            "--max-memory-mb", str(self.config.max_memory_mb),
            "--log-level", self.engine_log_level,
            *[f"--v8-flag={flag}" for flag in self.config.v8_flags],
            *(["--fresh-context"] if self.config.fresh_context else []),
        ]
        popen = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self.processes[identity] = _Process(slot, identity, popen, replaces)
        self._slot_process[slot] = identity

    def _shutdown(self) -> None:
        for proc in list(self.processes.values()):
            self._stop_process(proc)
        deadline = time.monotonic() + ENGINE_STOP_TIMEOUT_S
        for proc in self.processes.values():
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.processes.clear()
        if self.broker is not None:
            self._send_broker(p.message(p.DISCONNECT, b"worker stopping"))
            self.broker.close(linger=CLOSE_LINGER_MS)
            self.broker = None
        self.engines.close(linger=0)
        if self._own_context:
            self.context.term()
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        log.info("worker %s stopped", self.worker_id)

    # ================================================================ broker link

    def _connect(self, now: float) -> None:
        config = self.config
        if self.broker is not None:
            self.broker.close(linger=0)
        broker = make_socket(
            self.context, zmq.DEALER, hwm=config.hwm, max_message_bytes=config.max_message_bytes
        )
        broker.connect(config.broker)
        self.broker = broker
        self._broker_heartbeat = Heartbeat(
            config.heartbeat_interval_s, config.heartbeat_liveness, now
        )
        self._reconnect_at = None
        self._send_ready()

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
            "update": update,
        }
        self._send_broker(p.json_message(p.READY, info))

    def _send_broker(self, frames: list[bytes]) -> None:
        if self.broker is None:
            return
        try:
            send_frames(self.broker, frames)
        except zmq.ZMQError as exc:
            log.debug("send to broker failed: %s", exc)

    def _broker_lost(self, now: float, reason: str, at_once: bool = False) -> None:
        """Reconnect after a back-off; at once when a live broker asked us to (once)."""
        delay = Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s).delay(
            self._reconnects
        )
        if at_once and self._reconnects == 0:
            delay = 0.0
        self._reconnects += 1
        log.warning("broker %s: %s; reconnecting in %.2f s", self.config.broker, reason, delay)
        self.connected.clear()
        self.state.on_broker_lost()
        if self.broker is not None:
            self.broker.close(linger=0)
            self.broker = None
        self._reconnect_at = now + delay

    def _on_broker(self, frames: list[bytes], now: float) -> None:
        try:
            message = p.decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a message from the broker: %s", exc)
            return
        self._broker_heartbeat.heard(now)
        command = message.command
        if not self.connected.is_set() and command == p.HEARTBEAT:
            instance, grace_s = _broker_run(message)
            self._registered(instance, grace_s, now)
        if command == p.REQUEST:
            self.state.on_requests(message.frames, now, time.time() * 1000)
        elif command == p.RESULT:
            self.state.on_results(message.pairs())
        elif command == p.CANCEL:
            self.state.on_cancels(message.frames)
        elif command == p.DISCONNECT:
            self._broker_lost(now, f"asked us to disconnect ({_reason(message)})", at_once=True)

    def _registered(self, instance: str | None, grace_s: float, now: float) -> None:
        """The broker acknowledged our READY. After a reconnection: if it is the broker
        we knew, it declared us dead and re-dispatched our requests, so drop them; if it
        is a new broker, hand over what we hold at once, and send our pending nested calls
        again once the other workers have had the broker's grace to hand over theirs."""
        state = self.state
        if state.requests or state.recent or state.call_bodies:
            if instance is not None and instance == self.broker_instance:
                log.warning("the broker re-dispatched our %d requests; dropping them",
                            len(state.requests))
                for index in state.abandon_all():
                    identity = self._slot_process.get(index)
                    if identity is not None:
                        self._send_engine(identity, [b"ABORT"])
            else:
                adopt = state.adoption_frames(time.time() * 1000, now)
                if adopt:
                    self._send_broker([p.TAG, p.ADOPT, *adopt])
                self._resend_calls_at = now + grace_s
                log.info("handed %d requests and %d results to the new broker",
                         len(state.requests), len(state.recent))
        self.broker_instance = instance
        self.connected.set()
        if self._reconnects:
            log.info("registered with broker %s again", self.config.broker)
        self._reconnects = 0

    # ================================================================ the loop

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.engines, zmq.POLLIN)
        registered: zmq.Socket[Any] | None = None
        next_tick = 0.0
        next_watch = 0.0
        while True:
            if self.broker is not registered:
                if registered is not None:
                    poller.unregister(registered)
                if self.broker is not None:
                    poller.register(self.broker, zmq.POLLIN)
                registered = self.broker
            now = time.monotonic()
            if self._stop_requested.is_set() and self._finished_stopping(now):
                return
            events = dict(poller.poll(max(0, int((next_tick - now) * 1000))))
            now = time.monotonic()
            try:
                if self.broker is not None and self.broker in events:
                    self._drain_broker(now)
                if self.engines in events:
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
            self._send_broker(p.message(p.DRAIN))
            log.info("worker draining: %d requests held, up to %.1f s",
                     len(state.requests), self.config.drain_timeout_s)
        return not state.requests or now >= self._drain_until or self.broker is None

    def _drain_broker(self, now: float) -> None:
        while self.broker is not None:
            try:
                frames = self.broker.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_broker(frames, now)

    def _drain_engines(self, now: float, starting: bool = False) -> None:
        while True:
            try:
                frames = self.engines.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_engine(frames, now, starting)

    def _on_engine(self, frames: list[bytes], now: float, starting: bool) -> None:
        identity, command = frames[0], frames[1] if len(frames) > 1 else b""
        proc = self.processes.get(identity)
        if proc is None or self._slot_process.get(proc.slot) != identity:
            return
        index = proc.slot
        if command == b"OUT" and len(frames) == 5:
            self.state.on_engine_output(index, frames[2] == b"S", frames[3], now, frames[4])
        elif command == b"RESET" and len(frames) == 7:
            self.state.on_engine_reset(
                index, frames[2].decode(), int(frames[3]), frames[4],
                frames[5].decode(errors="replace"), now, frames[6],
            )
        elif command == b"READY":
            self._on_engine_ready(proc, orjson.loads(frames[2]), now)
        elif command == b"LOADERR":
            message = frames[2].decode(errors="replace") if len(frames) > 2 else "?"
            if starting:
                raise WorkerStartError(f"script failed to load: {message}")
            if proc.replaces is not None:
                log.error("the changed script failed to load; keeping the old one: %s", message)
                self._stop_process(proc)
                self.state.remove_engine(proc.slot, now)
            else:
                log.error("engine could not load the script: %s", message)

    def _on_engine_ready(self, proc: _Process, info: dict[str, Any], now: float) -> None:
        methods = [str(m) for m in info.get("methods", [])]
        self.v8 = str(info.get("v8", ""))
        self.state.on_engine_ready(proc.slot, proc.identity)
        if proc.replaces is not None and proc.replaces in self.state.engines:
            self.state.retire_engine(proc.replaces)
            proc.replaces = None
        if methods != self.methods:
            changed = bool(self.methods)
            self.methods = methods
            if changed:
                log.info("script reloaded: %d functions", len(methods))
                self._send_ready(update=True)

    def _tick(self, now: float) -> None:
        self._check_engines(now)
        if self._resend_calls_at is not None and now >= self._resend_calls_at:
            self._resend_calls_at = None
            if self.connected.is_set():
                self.state.resend_calls()
        if self.broker is None:
            if self._reconnect_at is not None and now >= self._reconnect_at:
                self._connect(now)
            return
        heartbeat = self._broker_heartbeat
        if heartbeat.expired(now):
            self._broker_lost(now, "silent for too long")
        elif heartbeat.due(now):
            self._send_broker(p.json_message(p.HEARTBEAT, self._snapshot(now)))

    def _snapshot(self, now: float) -> dict[str, Any]:
        snapshot = self.state.snapshot(now)
        try:
            processes = [self._process, *(psutil.Process(proc.popen.pid)
                                          for proc in self.processes.values())]
            snapshot["cpu_percent"] = round(sum(_cpu(pr) for pr in processes), 1)
            snapshot["rss_bytes"] = sum(pr.memory_info().rss for pr in processes)
        except psutil.Error:
            pass
        return snapshot

    def _check_engines(self, now: float) -> None:
        for slot in self.state.idle_retired():
            identity = self._slot_process.pop(slot, None)
            if identity is not None and identity in self.processes:
                self._stop_process(self.processes[identity])
            self.state.remove_engine(slot, now)
        for identity, proc in list(self.processes.items()):
            code = proc.popen.poll()
            if code is None:
                continue
            del self.processes[identity]
            if proc.stopping or self._slot_process.get(proc.slot) != identity:
                continue
            detail = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
            engine = self.state.engines.get(proc.slot)
            if engine is None or engine.retiring or proc.replaces is not None:
                del self._slot_process[proc.slot]
                self.state.remove_engine(proc.slot, now)
                continue
            log.warning("engine %d (pid %d) died: %s; starting a new one",
                        proc.slot, proc.popen.pid, detail)
            self.state.on_engine_died(proc.slot, detail, code in _OOM_SIGNALS, now)
            self._spawn(proc.slot)

    # ================================================================ --watch

    def _mtime(self) -> float:
        try:
            return os.stat(self.script).st_mtime
        except OSError:
            return 0.0

    def _check_script(self, now: float) -> None:
        """On a change, start one engine per context with the new script; each old engine
        retires (finishing what it holds) when a new one is ready."""
        mtime = self._mtime()
        if mtime == self._script_mtime or mtime == 0.0:
            return
        self._script_mtime = mtime
        log.info("%s changed: starting engines with the new script", self.script)
        for engine in list(self.state.engines.values()):
            if not engine.retiring:
                self._spawn(self.state.add_engine(), replaces=engine.index)

    def _stop_process(self, proc: _Process) -> None:
        proc.stopping = True
        self._send_engine(proc.identity, [b"STOP"])

    def _send_engine(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            send_frames(self.engines, [identity, *frames])
        except zmq.ZMQError as exc:
            log.warning("engine %s unreachable: %s", identity.decode(errors="replace"), exc)

    # ================================================================ output

    def _flush(self) -> None:
        state = self.state
        for index, frames in state.take_engine_messages():
            identity = self._slot_process.get(index)
            if identity is not None:
                self._send_engine(identity, frames)
        if self.connected.is_set():   # else replies wait for the broker to acknowledge us
            for frames in state.take_broker_messages():
                self._send_broker(frames)
        for level, method, request_id, text in state.logs:
            js_log.log(_JS_LEVELS.get(level, logging.INFO), "[%s id=%s] %s",
                       method or "-", request_id, text)
        state.logs.clear()


def _cpu(process: psutil.Process) -> float:
    return float(process.cpu_percent())


def _broker_run(message: p.Message) -> tuple[str | None, float]:
    """(run id, adoption grace left in s) from a broker's HEARTBEAT body."""
    try:
        body = message.json()
    except ProtocolError:
        return None, 0.0
    if not isinstance(body, dict):
        return None, 0.0
    instance, grace = body.get("broker"), body.get("grace_s")
    return (instance if isinstance(instance, str) else None,
            float(grace) if isinstance(grace, (int, float)) else 0.0)


def _reason(message: p.Message) -> str:
    """The reason in a DISCONNECT body (JSON from MaDRPC brokers, plain text from others)."""
    try:
        body = message.json()
    except ProtocolError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("reason"), str):
        return str(body["reason"])
    return message.frames[0].decode(errors="replace") if message.frames else ""
