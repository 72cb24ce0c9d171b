"""Client.map sends its calls as JSON-RPC batches: seen from a real ZeroMQ ROUTER that
answers like a broker's frontend (the wire, not a grid, is what these tests are about),
and checked end to end on a real grid."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
from grid_support import SIMPLE_JS, Grid

from madrpc import AsyncClient, Client
from madrpc.config import ClientConfig
from madrpc.errors import JSError

pytestmark = pytest.mark.timeout(60)


class Frontend:
    """A ROUTER that doubles each call's first param, and records how many calls came in
    each frame (``_ping`` probes apart)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.frames: list[int] = []
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.linger = 0
        self._socket.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(50):
                continue
            route, frame = self._socket.recv_multipart()
            document = orjson.loads(frame)
            if isinstance(document, dict) and document.get("method") == "_ping":
                answer: Any = {"jsonrpc": "2.0", "id": document["id"],
                               "result": {"broker": "stub", "grace_s": 0}}
            elif isinstance(document, list):
                self.frames.append(len(document))
                answer = [self._answer(request) for request in document]
            else:
                self.frames.append(1)
                answer = self._answer(document)
            self._socket.send_multipart([route, orjson.dumps(answer)])

    @staticmethod
    def _answer(request: dict[str, Any]) -> dict[str, Any]:
        value = request["params"][0]
        if value < 0:
            return {"jsonrpc": "2.0", "id": request["id"],
                    "error": {"code": -32000, "message": "Error: negative"}}
        return {"jsonrpc": "2.0", "id": request["id"], "result": 2 * value}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()
        self._context.term()


@pytest.fixture
def frontend(tmp_path: Path) -> Iterator[Frontend]:
    stub = Frontend(f"ipc://{tmp_path}/frontend")
    try:
        yield stub
    finally:
        stub.close()


def client_of(frontend: Frontend, **settings: Any) -> Client:
    return Client(config=ClientConfig(endpoint=frontend.endpoint, timeout_s=20, **settings))


def test_map_sends_its_calls_in_batches_of_map_batch_size(frontend: Frontend) -> None:
    with client_of(frontend, map_batch_size=8, max_in_flight=100) as client:
        results = client.map("double", [[i] for i in range(50)])

    assert results == [2 * i for i in range(50)]
    assert sum(frontend.frames) == 50
    assert max(frontend.frames) == 8
    assert len(frontend.frames) <= 50 // 8 + 2


def test_batch_size_one_sends_each_call_alone(frontend: Frontend) -> None:
    with client_of(frontend) as client:
        assert client.map("double", [[i] for i in range(10)], batch_size=1) == [
            2 * i for i in range(10)]

    assert frontend.frames == [1] * 10


def test_a_batch_never_outgrows_the_window(frontend: Frontend) -> None:
    with client_of(frontend) as client:
        client.map("double", [[i] for i in range(40)], batch_size=32, max_in_flight=5)

    assert max(frontend.frames) <= 5


def test_unordered_imap_sends_calls_one_by_one_unless_told(frontend: Frontend) -> None:
    with client_of(frontend) as client:
        assert sorted(client.imap("double", [[i] for i in range(10)], ordered=False)) == [
            2 * i for i in range(10)]
        assert frontend.frames == [1] * 10
        frontend.frames.clear()
        assert sorted(client.imap("double", [[i] for i in range(10)], ordered=False,
                                  batch_size=5)) == [2 * i for i in range(10)]

    assert frontend.frames == [5, 5]


def test_a_failing_member_fails_alone(frontend: Frontend) -> None:
    with client_of(frontend) as client:
        results = client.map("double", [[1], [-1], [3]], return_exceptions=True)
        with pytest.raises(JSError, match="negative"):
            client.map("double", [[1], [-1], [3]])

    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], JSError)


def test_batches_split_to_stay_under_the_message_limit(frontend: Frontend) -> None:
    padding = "x" * 3000
    with client_of(frontend, max_message_bytes=10_000) as client:
        results = client.map("double", [[i, padding] for i in range(12)], batch_size=12)

    assert results == [2 * i for i in range(12)]
    assert max(frontend.frames) == 3   # three ~3 KB requests fit in 10 KB, four do not
    assert sum(frontend.frames) == 12


def test_async_map_sends_its_calls_in_batches_too(frontend: Frontend) -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        config = ClientConfig(endpoint=frontend.endpoint, timeout_s=20, map_batch_size=8)
        async with AsyncClient(config=config) as client:
            results = await client.map("double", [[i] for i in range(50)], max_in_flight=20)
            mixed = await client.map("double", [[1], [-1], [3]], return_exceptions=True)
            with pytest.raises(JSError, match="negative"):
                await client.map("double", [[1], [-1], [3]])
            return results, mixed

    results, mixed = asyncio.run(main())

    assert results == [2 * i for i in range(50)]
    assert max(frontend.frames) == 8 and sum(frontend.frames) == 50 + 3 + 3
    assert mixed[0] == 2 and mixed[2] == 6 and isinstance(mixed[1], JSError)


def test_map_in_batches_on_a_real_grid(pooled_grid: Callable[..., Grid]) -> None:
    grid = pooled_grid(SIMPLE_JS, contexts=2)
    with grid.client(timeout=30) as client:
        assert client.map("add", [[i, i] for i in range(500)], batch_size=32) == [
            2 * i for i in range(500)]
        errors = client.map("add", [[1, 2], ["x"], [3, 4]], return_exceptions=True)

    assert errors[0] == 3 and errors[2] == 7
    assert isinstance(errors[1], Exception)
