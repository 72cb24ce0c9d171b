"""A worker's engine processes: starting, messaging, noticing their exit, stopping them.

Mechanism only: the worker decides what to start and what an engine's message means.
Each process runs ``python -m madrpc.engine`` (one V8 context, see :mod:`madrpc.engine`)
and talks to the worker over its own end of a Unix socket pair
(:mod:`madrpc.engine_channel`), inherited as a file descriptor. The pool watches every
link with one ``epoll`` descriptor, which the worker's loop polls (:meth:`EnginePool.fileno`).
Script bundles go to files in a directory only this user can enter (see
:func:`madrpc.sockets.private_directory`), removed again by :meth:`EnginePool.close`.
A context *slot* is the worker's name for a context; the process serving a slot changes
when an engine dies or the script is reloaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import psutil

from . import engine_protocol as ep
from .affinity import cpu_list
from .bundle import Bundle
from .config import WorkerConfig
from .engine_channel import Channel, ChannelClosed, socketpair
from .errors import ProtocolError
from .sockets import private_directory, remove_private_directory

__all__ = ["EnginePool", "EngineProcess"]

log = logging.getLogger(__name__)

ENGINE_STOP_TIMEOUT_S = 2.0
"""How long engines get to exit after STOP before they are killed."""
BUNDLES_KEPT = 2
"""Script bundle files kept beside the socket (the one engines start with now, and the
one before it, which an engine started just before a reload may still be reading)."""
_READ = select.EPOLLIN
_READ_WRITE = select.EPOLLIN | select.EPOLLOUT


@dataclass
class EngineProcess:
    slot: int
    identity: bytes
    popen: subprocess.Popen[bytes]
    channel: Channel | None
    """Its link; None once the process closed its end."""
    replaces: int | None = None
    """For a script reload: the slot this engine takes over once it is ready."""
    version: str = ""
    """The script version it loads."""
    stopping: bool = False


class EnginePool:
    """The engine processes of one worker and their links."""

    def __init__(self, config: WorkerConfig, log_level: str,
                 engine_cpus: frozenset[int] | None = None) -> None:
        self.config = config
        self.engine_cpus = engine_cpus
        """The CPUs engines run on when the worker keeps its own threads on one
        (``--cpu``); None: the worker's own."""
        self.bundle: Bundle | None = None
        """The script engines started from now on load (see :meth:`use`)."""
        self._bundle_files: list[str] = []
        self.log_level = log_level
        self.directory = private_directory()
        """Where the bundle files go (mode 0700; removed by :meth:`close`)."""
        self._epoll = select.epoll()
        self._by_fd: dict[int, EngineProcess] = {}
        self._inbox: deque[tuple[EngineProcess, list[bytes]]] = deque()
        """Messages read from the links and not yet handed out (see :meth:`receive`)."""
        self.processes: dict[bytes, EngineProcess] = {}
        self.current: dict[int, bytes] = {}
        """Slot -> identity of the process serving it now."""
        self._spawned = 0

    def use(self, bundle: Bundle) -> None:
        """Engines started from now on load ``bundle`` (written to a file only this user
        can read, beside the engines' socket)."""
        path = os.path.join(self.directory, f"script-{bundle.version}.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(bundle.encode())
        self.bundle = bundle
        if path in self._bundle_files:
            self._bundle_files.remove(path)
        self._bundle_files.append(path)
        while len(self._bundle_files) > BUNDLES_KEPT:
            old = self._bundle_files.pop(0)
            with contextlib.suppress(OSError):
                os.remove(old)

    def spawn(self, slot: int, replaces: int | None = None) -> EngineProcess:
        """Start a process for ``slot`` with the bundle in :meth:`use`; it reports READY
        (or LOADERR) when loaded."""
        bundle = self.bundle
        if bundle is None:
            raise RuntimeError("EnginePool.spawn before use(bundle)")
        self._spawned += 1
        identity = b"e%d.%d" % (slot, self._spawned)
        ours, theirs = socketpair()
        command = [
            sys.executable, "-m", "madrpc.engine",
            "--fd", str(theirs.fileno()),
            "--bundle", self._bundle_files[-1],
            "--origin", bundle.origin,
            "--max-memory-mb", str(self.config.max_memory_mb),
            "--log-level", self.log_level,
            *[f"--v8-flag={flag}" for flag in self.config.v8_flags],
            *(["--fresh-context"] if self.config.fresh_context else []),
            *(["--cpus", cpu_list(self.engine_cpus)] if self.engine_cpus else []),
        ]
        try:
            popen = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                     pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        channel = Channel(ours)
        process = EngineProcess(slot, identity, popen, channel, replaces, bundle.version)
        self._by_fd[channel.fileno()] = process
        self._epoll.register(channel.fileno(), _READ)
        self.processes[identity] = process
        self.current[slot] = identity
        return process

    def rolling(self) -> bool:
        """Whether engines started to replace others (a reload) are still loading."""
        return any(p.replaces is not None and not p.stopping for p in self.processes.values())

    def fileno(self) -> int:
        """A descriptor that is readable when an engine's link wants attention (a message
        came, or a queued write can go on): then call :meth:`receive`."""
        return self._epoll.fileno()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a link to want attention."""
        return bool(self._inbox) or bool(self._epoll.poll(timeout_s))

    @property
    def pending(self) -> bool:
        """Messages were read and not handed out yet (a consumer stopped early): call
        :meth:`receive` again even if :meth:`fileno` is not readable."""
        return bool(self._inbox)

    def send(self, slot: int, frames: list[bytes]) -> None:
        """To the process serving ``slot`` (nothing if none does)."""
        identity = self.current.get(slot)
        if identity is not None and identity in self.processes:
            self.send_to(self.processes[identity], frames)

    def send_to(self, process: EngineProcess, frames: list[bytes], quiet: bool = False) -> None:
        """Send (what the link cannot take now goes out from :meth:`receive`), or say that
        the engine is unreachable (at debug level when ``quiet``)."""
        channel = process.channel
        if channel is None:
            log.log(logging.DEBUG if quiet else logging.WARNING, "engine %s unreachable",
                    process.identity.decode(errors="replace"))
            return
        try:
            channel.send(frames)
        except ChannelClosed as exc:
            log.log(logging.DEBUG if quiet else logging.WARNING, "engine %s unreachable: %s",
                    process.identity.decode(errors="replace"), exc)
            self._close_channel(process)
            return
        if channel.wants_write:
            self._epoll.modify(channel.fileno(), _READ_WRITE)

    def stop(self, process: EngineProcess) -> None:
        """Ask a process to exit; its exit is then expected, not a crash."""
        process.stopping = True
        if process.popen.poll() is None:   # one that is stopping already may be gone
            self.send_to(process, [ep.STOP], quiet=True)

    def release(self, slot: int) -> None:
        """Stop the process serving ``slot`` and forget the slot."""
        identity = self.current.pop(slot, None)
        if identity is not None and identity in self.processes:
            self.stop(self.processes[identity])

    def receive(self) -> Iterator[tuple[EngineProcess, list[bytes]]]:
        """Messages waiting on the links of processes that still serve their slot; queued
        writes go on as the links take them. A message is handed out once: those a consumer
        did not take (it raised, or stopped early) come first next time."""
        self._read_links()
        inbox = self._inbox
        while inbox:
            process, frames = inbox.popleft()
            if self.current.get(process.slot) == process.identity:
                yield process, frames

    def _read_links(self) -> None:
        for fd, events in self._epoll.poll(0):
            process = self._by_fd.get(fd)
            if process is None or process.channel is None:
                continue
            channel = process.channel
            try:
                if events & select.EPOLLOUT and channel.flush():
                    self._epoll.modify(fd, _READ)
                messages = channel.receive() if events & ~select.EPOLLOUT else []
            except ChannelClosed:
                self._close_channel(process)
                continue
            except ProtocolError as exc:   # not our engine's framing: it cannot go on
                log.error("engine %s broke the link's framing (%s); killing it",
                          process.identity.decode(errors="replace"), exc)
                self._close_channel(process)
                process.popen.kill()
                continue
            self._inbox.extend((process, frames) for frames in messages)

    def _close_channel(self, process: EngineProcess) -> None:
        """The process closed its end (it exits; :meth:`exited` reports it)."""
        channel, process.channel = process.channel, None
        if channel is not None:
            self._by_fd.pop(channel.fileno(), None)
            with contextlib.suppress(OSError):
                self._epoll.unregister(channel.fileno())
            channel.close()

    def exited(self) -> list[tuple[EngineProcess, int]]:
        """Processes that ended unasked since the last call, with their exit codes."""
        ended = []
        for identity, process in list(self.processes.items()):
            code = process.popen.poll()
            if code is None:
                continue
            if process.channel is not None and process.channel.readable():
                continue   # what it said before it exited is read first (receive)
            del self.processes[identity]
            self._close_channel(process)
            if not process.stopping and self.current.get(process.slot) == identity:
                ended.append((process, code))
        return ended

    def first_exit(self) -> EngineProcess | None:
        """Any process that has exited (used while the engines start)."""
        return next((p for p in self.processes.values() if p.popen.poll() is not None), None)

    def psutil_processes(self) -> list[psutil.Process]:
        out = []
        for process in self.processes.values():
            try:
                out.append(psutil.Process(process.popen.pid))
            except psutil.Error:
                continue
        return out

    def close(self) -> None:
        """Stop every process (killing those that do not exit in time), close the socket and
        remove its directory (whatever happens on the way; closing twice is harmless)."""
        try:
            for process in list(self.processes.values()):
                self.stop(process)
            deadline = time.monotonic() + ENGINE_STOP_TIMEOUT_S
            for process in self.processes.values():
                try:
                    process.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.popen.kill()
                    process.popen.wait()
            for process in self.processes.values():
                self._close_channel(process)
            self.processes.clear()
        finally:
            self._epoll.close()
            remove_private_directory(self.directory)
