"""An engine's loop in this process, over a real socket pair with real V8: who answers a
step (the isolate's own thread when the step ended normally, the loop otherwise)."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator

import pytest

from madrpc import engine_protocol as ep
from madrpc.bundle import Bundle
from madrpc.engine import serve_link
from madrpc.engine_channel import Channel, socketpair
from madrpc.engine_core import Engine
from madrpc.engine_payload import StepEntry, encode_step_payload

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
madrpc.register('echo', (x) => x);
madrpc.register('later', async (x) => { await null; return x; });
madrpc.register('spin', () => { for (;;) {} });
madrpc.register('busy', (ms) => {
    const end = Date.now() + ms; while (Date.now() < end) {} return ms;
});
"""
READ_TIMEOUT_S = 10.0


class WorkerEnd:
    """The worker's end of the link, read with a timeout."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._messages: list[list[bytes]] = []

    def next(self) -> ep.EngineMessage:
        while not self._messages:
            if not select.select([self.channel.socket], [], [], READ_TIMEOUT_S)[0]:
                raise AssertionError("the engine said nothing")
            self._messages += self.channel.receive()
        return ep.decode_engine_message(self._messages.pop(0))

    def step(self, local: int, method: str, params: str, cpu_limit_ms: int = 10_000) -> None:
        body = b'{"jsonrpc":"2.0","id":%d,"method":"%s","params":%s}' % (
            local, method.encode(), params.encode())
        entry = StepEntry(local, 4e12, cpu_limit_ms, 0, body)
        self.channel.send_blocking(ep.step_message(encode_step_payload(starts=[entry]),
                                                   ep.POOLED))


@pytest.fixture
def engine() -> Iterator[tuple[Engine, WorkerEnd]]:
    ours, theirs = socketpair()
    link = Channel(theirs)
    engine = Engine(link.send_blocking, Bundle.single("loop.js", SCRIPT), max_memory_mb=64)
    loop = threading.Thread(target=serve_link, args=(engine, link), daemon=True)
    loop.start()
    worker = WorkerEnd(Channel(ours))
    try:
        assert isinstance(worker.next(), ep.Ready)
        yield engine, worker
    finally:
        worker.channel.send_blocking([ep.STOP])
        loop.join(READ_TIMEOUT_S)
        engine.close()
        link.close()
        worker.channel.close()
        assert not loop.is_alive()


def test_a_pooled_step_that_ends_normally_is_answered_by_the_isolates_own_thread(
    engine: tuple[Engine, WorkerEnd],
) -> None:
    core, worker = engine
    for local in range(1, 21):
        worker.step(local, "echo" if local % 2 else "later", f"[{local}]")
        output = worker.next()
        assert isinstance(output, ep.Output) and output.step_done
        assert output.outbox == b'R %d "result":%d' % (local, local)

    assert core.handed_over == 0   # the loop was never woken to answer


def test_a_step_held_while_another_runs_is_started_by_the_isolates_thread(
    engine: tuple[Engine, WorkerEnd],
) -> None:
    core, worker = engine
    for round_ in range(5):
        worker.step(2 * round_ + 1, "busy", "[20]")
        worker.step(2 * round_ + 2, "echo", "[7]")   # held until the busy step ends
        first, second = worker.next(), worker.next()
        assert isinstance(first, ep.Output) and first.outbox.endswith(b'"result":20')
        assert isinstance(second, ep.Output) and second.outbox.endswith(b'"result":7')

    assert core.handed_over == 0


def test_a_step_stopped_by_its_cpu_limit_is_reported_by_the_loop(
    engine: tuple[Engine, WorkerEnd],
) -> None:
    core, worker = engine
    worker.step(1, "spin", "[]", cpu_limit_ms=50)
    reset = worker.next()

    assert isinstance(reset, ep.Reset) and reset.reason is ep.ResetReason.CPU_LIMIT
    assert reset.culprit == 1
    assert core.handed_over >= 1
    worker.step(2, "echo", "[2]")   # the context was rebuilt and serves again
    output = worker.next()
    assert isinstance(output, ep.Output) and output.outbox == b'R 2 "result":2'
