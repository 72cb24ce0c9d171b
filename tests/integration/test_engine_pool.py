"""The worker's engine processes and their links, with real engine processes and V8."""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import termios
import time
from collections.abc import Iterator

import orjson
import pytest
from grid_support import scaled, wait_until

from madrpc import engine_protocol as ep
from madrpc.bundle import Bundle
from madrpc.config import WorkerConfig
from madrpc.engine_channel import encode_header
from madrpc.engine_payload import StepEntry, encode_step_payload
from madrpc.engine_pool import EnginePool, EngineProcess

pytestmark = pytest.mark.timeout(60)

SCRIPT = "madrpc.register('noop', (x) => x);"
SYS_PIDFD_GETFD = 438
"""pidfd_getfd(2) on x86-64 and arm64 (Linux 5.6)."""


@pytest.fixture
def pool() -> Iterator[EnginePool]:
    engines = EnginePool(WorkerConfig(script="noop.js", contexts=1), "WARNING")
    try:
        engines.use(Bundle.single("noop.js", SCRIPT))
        yield engines
    finally:
        engines.close()


def ready_engine(pool: EnginePool) -> EngineProcess:
    process = pool.spawn(0)

    def said_ready() -> bool:
        pool.wait(0.1)
        return any(isinstance(ep.decode_engine_message(frames), ep.Ready)
                   for _, frames in pool.receive())

    wait_until(said_ready, scaled(20), message="the engine's READY")
    return process


def step(local: int) -> list[bytes]:
    body = orjson.dumps({"jsonrpc": "2.0", "method": "noop", "params": [local], "id": local})
    payload = encode_step_payload(
        starts=[StepEntry(local, time.time() * 1000 + 60_000, 60_000, 0, body)])
    return ep.step_message(payload, ep.POOLED, 0)


def unread_bytes(process: EngineProcess) -> int:
    assert process.channel is not None
    count = fcntl.ioctl(process.channel.socket, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", count)[0])


def test_messages_a_consumer_did_not_take_are_handed_out_next_time(pool: EnginePool) -> None:
    process = ready_engine(pool)
    outboxes = [b'R 1 "result":1', b'R 2 "result":2']
    replies = [ep.output_message(ep.Mode.STEP, outbox, ep.POOLED) for outbox in outboxes]
    size = sum(len(encode_header(frames)) + sum(map(len, frames)) for frames in replies)
    pool.send(0, step(1))
    pool.send(0, step(2))   # queued behind the first
    wait_until(lambda: unread_bytes(process) >= size, scaled(20),
               message="both replies waiting in the link")

    messages = pool.receive()
    first = next(messages)
    messages.close()   # the consumer stopped early (as when it raises)

    assert pool.pending
    rest = list(pool.receive())
    assert [first, *rest] == [(process, frames) for frames in replies]
    assert not pool.pending


def engine_end_of_link(process: EngineProcess) -> int:
    """A duplicate, in this process, of the engine's own end of its link (pidfd_getfd)."""
    args = list(process.popen.args)  # type: ignore[arg-type]
    target = int(args[args.index("--fd") + 1])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(process.popen.pid)
    try:
        fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
    finally:
        os.close(pidfd)
    if fd < 0:
        pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
    return int(fd)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")
def test_an_engine_that_breaks_the_links_framing_is_killed_and_reported(
    pool: EnginePool,
) -> None:
    process = ready_engine(pool)
    fd = engine_end_of_link(process)
    try:
        os.write(fd, struct.pack("<I", 0) + b"garbage")   # a message of 0 frames
    finally:
        os.close(fd)

    def killed() -> bool:
        pool.wait(0.1)
        list(pool.receive())   # reads the garbage
        return process.popen.poll() is not None

    wait_until(killed, scaled(20), message="the engine killed")
    assert process.channel is None
    assert pool.exited() == [(process, -9)]
