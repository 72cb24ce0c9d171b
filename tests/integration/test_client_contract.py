"""The fixed client contract (DESIGN.md §2), spoken by raw pyzmq REQ and DEALER sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import zmq
from grid_support import Grid, metrics, scaled_ms, wait_until

REPLY_TIMEOUT_MS = scaled_ms(10_000)
NO_REPLY_MS = scaled_ms(500)
"""How long a reply that should not come is waited for, once the broker has finished."""


class RawClient:
    """A bare ZeroMQ socket speaking JSON-RPC, as a client in another language would."""

    def __init__(self, kind: str, endpoint: str) -> None:
        self.kind = kind
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.REQ if kind == "req" else zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        self.socket.send(data)

    def receive(self, timeout_ms: int = REPLY_TIMEOUT_MS) -> Any:
        assert self.socket.poll(timeout_ms), "no reply"
        return orjson.loads(self.socket.recv())

    def rpc(self, payload: Any) -> Any:
        self.send(payload)
        return self.receive()

    def close(self) -> None:
        self.socket.close(linger=0)


@pytest.fixture(params=["req", "dealer"])
def raw(request: pytest.FixtureRequest, shared_grid: Grid) -> Iterator[RawClient]:
    client = RawClient(request.param, shared_grid.frontend)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def dealer(shared_grid: Grid) -> Iterator[RawClient]:
    client = RawClient("dealer", shared_grid.frontend)
    try:
        yield client
    finally:
        client.close()


def request(method: str, params: Any = None, id: Any = 1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id, **extra}
    if params is not None:
        body["params"] = params
    return body


def test_positional_params_are_passed_as_arguments(raw: RawClient) -> None:
    assert raw.rpc(request("add", [2, 3], id=7)) == {"jsonrpc": "2.0", "id": 7, "result": 5}


def test_named_params_arrive_as_one_object(raw: RawClient) -> None:
    reply = raw.rpc(request("greet", {"name": "Ada", "greeting": "Hi"}, id="g-1"))
    assert reply == {"jsonrpc": "2.0", "id": "g-1", "result": "Hi, Ada!"}


def test_a_request_without_params_calls_the_function_with_no_arguments(raw: RawClient) -> None:
    assert raw.rpc(request("fail", id=3))["error"]["data"]["message"] == "something went wrong"


def test_a_null_id_is_a_request_and_is_echoed(raw: RawClient) -> None:
    assert raw.rpc(request("echo", ["x"], id=None)) == {"jsonrpc": "2.0", "id": None, "result": "x"}


def test_async_functions_resolve_before_replying(raw: RawClient) -> None:
    assert raw.rpc(request("slow_square", [9, 20]))["result"] == 81


def test_a_js_exception_carries_name_message_and_stack(raw: RawClient) -> None:
    error = raw.rpc(request("fail", ["bad things"]))["error"]
    assert error["code"] == -32000
    assert error["message"] == "TypeError: bad things"
    assert error["data"]["name"] == "TypeError"
    assert error["data"]["message"] == "bad things"
    assert "simple.js:" in error["data"]["stack"]


def test_an_unknown_method_gets_method_not_found(raw: RawClient) -> None:
    error = raw.rpc(request("no_such_method", []))["error"]
    assert error["code"] == -32601


def test_bad_params_reported_by_the_function_get_invalid_params(raw: RawClient) -> None:
    reply = raw.rpc(request("add", ["one", 2], id=11))
    assert reply["id"] == 11
    assert reply["error"]["code"] == -32602


def test_malformed_json_gets_a_parse_error_with_null_id(raw: RawClient) -> None:
    reply = raw.rpc(b'{"jsonrpc": "2.0", "method": "echo", "params": [1]')
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700


def test_a_request_object_without_jsonrpc_version_is_invalid(raw: RawClient) -> None:
    reply = raw.rpc({"method": "echo", "params": [1], "id": 5})
    assert reply["error"]["code"] == -32600
    assert reply["id"] == 5


def test_non_structured_params_are_an_invalid_request(raw: RawClient) -> None:
    assert raw.rpc(request("echo", 5))["error"]["code"] == -32600


def test_an_empty_batch_gets_one_invalid_request_error(raw: RawClient) -> None:
    reply = raw.rpc(b"[]")
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == -32600


def test_a_batch_gets_one_array_with_a_reply_per_request(raw: RawClient) -> None:
    batch = [
        request("add", [1, 2], id=1),
        {"jsonrpc": "2.0", "method": "echo", "params": ["note"]},   # notification
        {"jsonrpc": "2.0", "method": 1, "id": 3},                    # invalid
        request("no_such_method", id=4),
        request("greet", {"name": "Bo"}, id=5),
        42,                                                          # not an object
    ]
    replies = raw.rpc(batch)
    assert isinstance(replies, list)
    by_id = {r["id"]: r for r in replies if r["id"] is not None}
    assert by_id[1]["result"] == 3
    assert by_id[3]["error"]["code"] == -32600
    assert by_id[4]["error"]["code"] == -32601
    assert by_id[5]["result"] == "Hello, Bo!"
    nulls = [r for r in replies if r["id"] is None]
    assert [r["error"]["code"] for r in nulls] == [-32600]
    assert len(replies) == 5


def echo_calls_finished(frontend: str) -> int:
    """Calls to ``echo`` the broker has finished (notifications included)."""
    snapshot = metrics(frontend)
    if snapshot["broker"]["in_flight"] or snapshot["broker"]["queue_depth"]:
        return 0
    stats = snapshot["methods"].get("echo")
    return int(stats["requests"]) if stats else 0


def wait_for_echo_calls(frontend: str, count: int) -> None:
    """Wait until the broker has finished ``count`` calls to ``echo`` and holds nothing:
    a reply it would send has been sent by then."""
    wait_until(lambda: echo_calls_finished(frontend) >= count, 10, 0.02,
               f"the broker to finish {count} echo call(s)")


def test_a_notification_gets_no_reply(shared_grid: Grid, dealer: RawClient) -> None:
    before = metrics(shared_grid.frontend)["methods"].get("echo", {}).get("requests", 0)
    dealer.send({"jsonrpc": "2.0", "method": "echo", "params": ["x"]})
    wait_for_echo_calls(shared_grid.frontend, before + 1)
    assert not dealer.socket.poll(NO_REPLY_MS)
    assert dealer.rpc(request("echo", ["after"], id=2))["result"] == "after"


def test_a_batch_of_only_notifications_gets_no_reply(shared_grid: Grid,
                                                     dealer: RawClient) -> None:
    before = metrics(shared_grid.frontend)["methods"].get("echo", {}).get("requests", 0)
    dealer.send([{"jsonrpc": "2.0", "method": "echo", "params": [i]} for i in range(3)])
    wait_for_echo_calls(shared_grid.frontend, before + 3)
    assert not dealer.socket.poll(NO_REPLY_MS)


def test_a_dealer_may_send_an_empty_delimiter_like_req_does(dealer: RawClient) -> None:
    dealer.socket.send_multipart([b"", orjson.dumps(request("echo", ["d"], id=9))])
    assert dealer.socket.poll(REPLY_TIMEOUT_MS)
    delimiter, body = dealer.socket.recv_multipart()
    assert delimiter == b""
    assert orjson.loads(body)["result"] == "d"


def test_many_requests_in_flight_on_one_dealer_all_come_back(dealer: RawClient) -> None:
    for i in range(200):
        dealer.send(request("add", [i, 1], id=i))
    replies = [dealer.receive() for _ in range(200)]
    assert sorted(r["id"] for r in replies) == list(range(200))
    assert all(r["result"] == r["id"] + 1 for r in replies)


def test_garbage_does_not_stop_the_broker_serving(dealer: RawClient) -> None:
    for junk in (b"\xff\xfe", b"", b"null", b'"string"', b"[1, 2]", b"{" * 5000):
        dealer.send(junk)
        assert "error" in orjson.dumps(dealer.receive()).decode()
    assert dealer.rpc(request("add", [1, 1], id=1))["result"] == 2


def test_a_zero_delay_timer_runs_its_callback(raw: RawClient) -> None:
    assert raw.rpc(request("slow_square", [6, 0]))["result"] == 36


def test_nested_calls_fan_out_from_the_example_script(raw: RawClient) -> None:
    assert raw.rpc(request("sum_of_squares", [20]))["result"] == sum(i * i for i in range(20))
