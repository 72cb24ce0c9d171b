"""``madrpc gateway`` through real HTTP, against a real broker and workers: answers identical
to the ZeroMQ frontend's, notifications, streams, and callers that hang up."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import zmq
from grid_support import (
    SCRIPTS,
    SIMPLE_JS,
    Grid,
    Spawner,
    metrics,
    scaled,
    wait_for_in_flight,
    wait_for_workers,
    wait_until,
)
from http_support import HttpGateway, start_gateway

pytestmark = pytest.mark.timeout(60)
STREAMS_JS = SCRIPTS / "streams.js"


@dataclass
class Setup:
    grid: Grid
    gateway: HttpGateway


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A broker, a worker of simple.js (2 contexts), one of streams.js, and a gateway."""
    spawner = Spawner(tmp_path_factory.mktemp("gateway"))
    try:
        endpoints = spawner.endpoints()
        broker = spawner.broker(endpoints)
        workers = [spawner.worker(endpoints, SIMPLE_JS, 2),
                   spawner.worker(endpoints, STREAMS_JS, 1)]
        wait_for_workers(endpoints.frontend, 2)
        gateway = start_gateway(spawner, endpoints.frontend)
        yield Setup(Grid(endpoints, broker, workers), gateway)
    finally:
        spawner.cleanup()


def zmq_answer(frontend: str, body: bytes) -> bytes:
    """What the broker's frontend answers a DEALER that sends ``body``."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(frontend)
        dealer.send(body)
        assert dealer.poll(int(scaled(10) * 1000)), "no answer from the broker"
        return dealer.recv()
    finally:
        dealer.close()
        context.term()


SAME_AS_ZEROMQ = [
    (b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}', 200),
    (b'{"jsonrpc":"2.0","method":"greet","params":{"name":"Ada"},"id":"a-2"}', 200),
    (b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1.50}', 200),
    (b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":null}', 200),
    (b'{"jsonrpc":"2.0","method":"echo","params":["\\u00fc \xe2\x82\xac"],"id":"\xc3\xbc"}', 200),
    (b'[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1},'
     b'{"jsonrpc":"2.0","method":"echo","params":["hi"]},'
     b'{"jsonrpc":"2.0","method":"nope","id":2},{"foo":1},'
     b'{"jsonrpc":"2.0","method":"add","params":[3,4],"id":1}]', 200),
    (b'{"jsonrpc":"2.0","method":"nope","id":3}', 200),
    (b'{"jsonrpc":"2.0","method":"fail","params":["boom"],"id":4}', 200),
    (b'{"jsonrpc":"2.0","method":"add","params":["a",1],"id":5}', 200),
    (b'{"jsonrpc":"2.0","method":"slow_square","params":[2,3000],"id":6,'
     b'"madrpc":{"timeout_ms":100}}', 200),
    (b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":7,"madrpc":{"timeout_ms":0}}', 400),
    (b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":18446744073709551616}', 400),
    (b'{"jsonrpc":"2.0","method":"add","params":3,"id":8}', 400),
    (b'[]', 400),
    (b'{"jsonrpc":"2.0",', 400),
    (b'"just a string"', 400),
    (b'{"jsonrpc":"2.0","method":"_ping","id":9}', None),   # run ids and times differ
]


@pytest.mark.parametrize(("body", "status"), SAME_AS_ZEROMQ)
def test_the_answer_is_the_one_the_zeromq_frontend_gives(setup: Setup, body: bytes,
                                                         status: int | None) -> None:
    over_http = setup.gateway.post(body)
    over_zeromq = zmq_answer(setup.grid.frontend, body)
    if status is None:
        assert over_http.status == 200
        assert over_http.json().keys() == json.loads(over_zeromq).keys()
        return
    assert over_http.status == status
    assert over_http.headers["content-type"].startswith("application/json")
    assert over_http.body == over_zeromq


def test_the_earlier_designs_curl_example_works(setup: Setup) -> None:
    reply = setup.gateway.post({"jsonrpc": "2.0", "method": "sum_of_squares", "params": [4],
                                "id": 1}, path="/rpc")
    assert reply.status == 200 and reply.json() == {"jsonrpc": "2.0", "id": 1, "result": 14}


def test_callers_that_use_the_same_id_at_once_each_get_their_own_answer(setup: Setup) -> None:
    import concurrent.futures

    def call(n: int) -> object:
        return setup.gateway.post({"jsonrpc": "2.0", "method": "slow_square",
                                   "params": [n, 50], "id": 1}).json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(16)))
    assert answers == [{"jsonrpc": "2.0", "id": 1, "result": n * n} for n in range(16)]


def test_notifications_run_and_get_204(setup: Setup) -> None:
    gateway = setup.gateway
    assert gateway.post({"jsonrpc": "2.0", "method": "count", "params": [3], "id": 0}).status == 200
    produced = gateway.post({"jsonrpc": "2.0", "method": "produced", "id": 1}).json()["result"]
    assert produced > 0
    reply = gateway.post({"jsonrpc": "2.0", "method": "reset"})
    assert reply.status == 204 and reply.body == b""
    wait_until(lambda: gateway.post({"jsonrpc": "2.0", "method": "produced",
                                     "id": 2}).json()["result"] == 0, 5, 0.05, "reset to run")
    both = gateway.post([{"jsonrpc": "2.0", "method": "reset"},
                         {"jsonrpc": "2.0", "method": "echo", "params": [1]}])
    assert both.status == 204


def test_madrpc_options_reach_the_grid(setup: Setup) -> None:
    keyed = {"jsonrpc": "2.0", "method": "slow_square", "params": [3, 1],
             "madrpc": {"idempotency_key": "gw-test-key"}}
    first = setup.gateway.post({**keyed, "id": 1}).json()
    replay = setup.gateway.post({**keyed, "params": [5, 1], "id": 2}).json()
    assert first["result"] == 9 and replay == {"jsonrpc": "2.0", "id": 2, "result": 9}


# ------------------------------------------------------------------------- streams


def stream_lines(gateway: HttpGateway, request: dict[str, object],
                 accept: str = "application/x-ndjson") -> tuple[str, list[bytes]]:
    connection = gateway.connection()
    try:
        connection.request("POST", "/", json.dumps(request),
                           {"Content-Type": "application/json", "Accept": accept})
        response = connection.getresponse()
        assert response.status == 200
        return response.getheader("Content-Type") or "", response.read().splitlines()
    finally:
        connection.close()


def test_a_stream_arrives_as_ndjson_with_the_final_response_last(setup: Setup) -> None:
    kind, lines = stream_lines(setup.gateway, {
        "jsonrpc": "2.0", "method": "count", "params": [50], "id": "s",
        "madrpc": {"stream": {"window": 4}}})
    messages = [json.loads(line) for line in lines]
    assert kind.startswith("application/x-ndjson")
    assert all(m["id"] == "s" for m in messages)
    items = [item for m in messages[:-1] for item in m["madrpc"]["items"]]
    assert items == list(range(50))
    assert messages[-1] == {"jsonrpc": "2.0", "id": "s", "result": {"items": 50}}


def test_a_stream_arrives_as_server_sent_events_when_asked(setup: Setup) -> None:
    kind, lines = stream_lines(setup.gateway, {
        "jsonrpc": "2.0", "method": "ticks", "params": [3, 1], "id": 7,
        "madrpc": {"stream": True}}, accept="text/event-stream")
    events = [json.loads(line[len(b"data: "):]) for line in lines if line]
    assert kind.startswith("text/event-stream")
    assert all(line.startswith(b"data: ") for line in lines if line)
    assert [i for e in events[:-1] for i in e["madrpc"]["items"]] == [{"tick": n}
                                                                       for n in range(3)]
    assert events[-1]["result"] == {"items": 3}


def hang_up_after_headers(gateway: HttpGateway, request: dict[str, object],
                          read_bytes: int = 0) -> None:
    """Send ``request``, read ``read_bytes`` of the answer, and close the connection."""
    body = json.dumps(request).encode()
    with socket.create_connection((gateway.host, gateway.port), timeout=scaled(10)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while len(received) < read_bytes:
            chunk = sock.recv(65536)
            assert chunk, "the gateway closed first"
            received += chunk


def cancelled_count(frontend: str) -> int:
    count: int = metrics(frontend)["broker"]["errors_by_code"].get("-32011", 0)
    return count


def test_a_caller_that_hangs_up_cancels_its_call(setup: Setup) -> None:
    frontend = setup.grid.frontend
    wait_until(lambda: metrics(frontend)["broker"]["in_flight"] == 0, 10, 0.05, "an idle grid")
    before = cancelled_count(frontend)
    body = json.dumps({"jsonrpc": "2.0", "method": "slow_square", "params": [2, 30_000],
                       "id": 1}).encode()
    with socket.create_connection((setup.gateway.host, setup.gateway.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for_in_flight(frontend, 1)
    wait_until(lambda: metrics(frontend)["broker"]["in_flight"] == 0, 5, 0.05,
               "the call to be cancelled (it would run 30 s)")
    assert cancelled_count(frontend) == before + 1


def test_a_stream_reader_that_hangs_up_cancels_the_stream(setup: Setup) -> None:
    frontend = setup.grid.frontend
    wait_until(lambda: metrics(frontend)["broker"]["in_flight"] == 0, 10, 0.05, "an idle grid")
    before = cancelled_count(frontend)
    hang_up_after_headers(setup.gateway, {"jsonrpc": "2.0", "method": "slow_count",
                                          "params": {"n": 1000, "ms": 20}, "id": "e",
                                          "madrpc": {"stream": {"window": 8}}}, read_bytes=300)
    wait_until(lambda: metrics(frontend)["broker"]["in_flight"] == 0, 5, 0.05,
               "the stream to be cancelled (it would run 20 s)")
    assert cancelled_count(frontend) == before + 1


# --------------------------------------------------------------------- other pages


def test_metrics_and_healthz(setup: Setup) -> None:
    page = setup.gateway.get("/metrics")
    assert page.status == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.body.decode()
    assert "madrpc_requests_total " in text and "madrpc_worker_requests_total{" in text
    assert "madrpc_gateway_broker_up 1" in text
    assert 'madrpc_gateway_http_responses_total{status="200"}' in text
    health = setup.gateway.get("/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    setup.gateway.get("/nowhere")
    counted = setup.gateway.get("/api/metrics").json()["gateway"]["responses"]
    assert counted.get("404", 0) >= 1   # errors made by aiohttp are counted too


def test_the_dashboard_and_its_figures_are_served(setup: Setup) -> None:
    page = setup.gateway.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    figures = setup.gateway.get("/api/metrics")
    assert figures.status == 200
    document = figures.json()
    assert document["reachable"] is True and len(document["metrics"]["workers"]) == 2
    assert setup.gateway.get("/static/../setup.cfg").status == 404
    assert setup.gateway.get("/static/nothing.js").status == 404

