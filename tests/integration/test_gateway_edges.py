"""``madrpc gateway`` at its edges, through real HTTP: bad HTTP, limits, slow callers, API
keys, TLS, and a broker that goes away and comes back. None of it takes the gateway down."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import zmq.auth
from grid_support import SIMPLE_JS, Grid, Spawner, scaled, wait_for_workers, wait_until
from http_support import HttpGateway, start_gateway

pytestmark = pytest.mark.timeout(90)
KEY = "0123456789abcdef-team-a"
ADD = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Grid, Spawner]]:
    spawner = Spawner(tmp_path_factory.mktemp("gateway-edges"))
    try:
        endpoints = spawner.endpoints()
        broker = spawner.broker(endpoints)
        worker = spawner.worker(endpoints, contexts=2)
        wait_for_workers(endpoints.frontend, 1)
        yield Grid(endpoints, broker, [worker]), spawner
    finally:
        spawner.cleanup()


@pytest.fixture(scope="module")
def tight(grid: tuple[Grid, Spawner]) -> HttpGateway:
    """A gateway with small limits."""
    return start_gateway(grid[1], grid[0].frontend, "--max-body-bytes", "2000",
                         "--read-timeout", str(scaled(1)), "--keepalive-timeout", str(scaled(2)),
                         "--max-in-flight-per-connection", "3")


def raw_exchange(gateway: HttpGateway, data: bytes, wait_s: float = 10) -> bytes:
    """Send raw bytes, return everything the gateway answers until it closes or goes quiet."""
    with socket.create_connection((gateway.host, gateway.port), timeout=scaled(wait_s)) as sock:
        sock.sendall(data)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
        return received


def error_of(reply_body: bytes) -> dict[str, object]:
    document = json.loads(reply_body)
    assert document["jsonrpc"] == "2.0" and document["id"] is None
    error: dict[str, object] = document["error"]
    return error


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/rpc", 405), ("PUT", "/", 405), ("DELETE", "/rpc", 405), ("GET", "/nowhere", 404),
    ("POST", "/nowhere", 404)])
def test_wrong_methods_and_paths_get_json_rpc_errors(tight: HttpGateway, method: str, path: str,
                                                     status: int) -> None:
    reply = tight.request(method, path, json.dumps(ADD), {"Content-Type": "application/json"})
    assert reply.status == status
    assert error_of(reply.body)["code"] == -32600
    if status == 405:
        assert "POST" in reply.headers["allow"]


def test_a_body_that_is_not_json_gets_415(tight: HttpGateway) -> None:
    reply = tight.request("POST", "/", "a=1", {"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 415
    assert "application/json" in str(error_of(reply.body)["message"])


def test_a_body_over_the_limit_gets_413_declared_or_chunked(tight: HttpGateway) -> None:
    big = json.dumps({**ADD, "params": ["x" * 5000, 1]})
    declared = tight.post(big)
    assert declared.status == 413 and error_of(declared.body)["code"] == -32008
    chunked = raw_exchange(tight, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                           b"\r\nTransfer-Encoding: chunked\r\n\r\n" +
                           f"{len(big):x}\r\n".encode() + big.encode() + b"\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413")
    assert b'"code":-32008' in chunked
    assert tight.post(ADD).json()["result"] == 3   # still serving


def test_a_slow_caller_gets_408_and_the_gateway_keeps_serving(tight: HttpGateway) -> None:
    answer = raw_exchange(tight, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          b"\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"", wait_s=10)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within" in answer
    assert tight.post(ADD).json()["result"] == 3


def test_a_caller_that_never_finishes_its_headers_is_disconnected(tight: HttpGateway) -> None:
    with socket.create_connection((tight.host, tight.port), timeout=scaled(10)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")   # and nothing more
        assert sock.recv(1000) == b""   # closed at --keepalive-timeout, not held forever
    assert tight.post(ADD).json()["result"] == 3


def test_more_calls_than_a_connection_may_have_get_429(tight: HttpGateway) -> None:
    batch = [{**ADD, "id": n} for n in range(4)]
    reply = tight.post(batch)
    assert reply.status == 429 and reply.headers["retry-after"] == "1"
    error = error_of(reply.body)
    assert error["code"] == -32002 and error["data"] == {"retry_after_ms": 1000}
    assert len(tight.post(batch[:3]).json()) == 3


def test_hostile_bodies_leave_the_gateway_serving_and_its_memory_flat(tight: HttpGateway) -> None:
    bad_bodies = [b"{" * 1500, b"[" + b"1," * 600 + b"1]", b"\xff\xfe", b'{"jsonrpc":"2.0"}',
                  b"[" + b'{"jsonrpc":"2.0","method":"_more"},' * 40 + b"1]"]

    def hammer() -> None:
        for body in bad_bodies * 40:
            assert tight.post(body).status in (200, 400, 413)

    hammer()   # warm up allocator pools
    process = psutil.Process(tight.proc.pid)
    before = process.memory_info().rss
    hammer()
    hammer()
    assert process.memory_info().rss - before < 8 * 1024 * 1024
    assert tight.post(ADD).json()["result"] == 3


# ------------------------------------------------------------------------ API keys


@pytest.fixture(scope="module")
def keyed(grid: tuple[Grid, Spawner], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[HttpGateway, Path]]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# the team's key\n{KEY}\n")
    yield start_gateway(grid[1], grid[0].frontend, "--api-keys", str(keys)), keys


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "0123456789abcdef-team-b"},
                                     {"Authorization": f"Basic {KEY}"}])
def test_calls_without_a_valid_key_are_refused(keyed: tuple[HttpGateway, Path],
                                               headers: dict[str, str]) -> None:
    gateway, _ = keyed
    for path in ("/", "/metrics", "/api/metrics"):
        reply = gateway.request("POST" if path == "/" else "GET", path, json.dumps(ADD),
                                {"Content-Type": "application/json", **headers})
        assert reply.status == 401, path
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert error_of(reply.body)["code"] == -32010


def test_calls_with_a_key_in_either_header_are_answered(keyed: tuple[HttpGateway, Path]) -> None:
    gateway, _ = keyed
    assert gateway.post(ADD, X_API_Key=KEY).json()["result"] == 3
    assert gateway.post(ADD, Authorization=f"Bearer {KEY}").json()["result"] == 3
    health = gateway.get("/healthz")   # for load balancers: no key, and nothing but status
    assert health.status == 200 and health.json() == {"status": "ok"}
    assert gateway.get("/").status == 200          # the page itself holds no data


def test_keys_added_to_the_file_are_taken_without_a_restart(
        keyed: tuple[HttpGateway, Path]) -> None:
    gateway, keys = keyed
    new_key = "fedcba9876543210-team-c"
    assert gateway.post(ADD, X_API_Key=new_key).status == 401
    keys.write_text(f"{KEY}\n{new_key}\n")
    wait_until(lambda: gateway.post(ADD, X_API_Key=new_key).status == 200, 5, 0.1,
               "the new key to be accepted")


def test_a_public_address_without_keys_is_refused(grid: tuple[Grid, Spawner]) -> None:
    gateway = start_gateway(grid[1], grid[0].frontend, "--listen", "0.0.0.0:0", wait=False)
    assert gateway.proc.wait(20) == 1
    assert "without --api-keys" in gateway.proc.stderr()


# ---------------------------------------------------------------------------- CORS


def test_browsers_may_call_from_the_origins_named_only(grid: tuple[Grid, Spawner],
                                                       tight: HttpGateway) -> None:
    gateway = start_gateway(grid[1], grid[0].frontend, "--cors-origin", "https://app.example")
    preflight = gateway.request("OPTIONS", "/rpc", None, {
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-api-key"})
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    called = gateway.post(ADD, Origin="https://app.example")
    assert called.json()["result"] == 3
    assert called.headers["access-control-allow-origin"] == "https://app.example"
    stranger = gateway.post(ADD, Origin="https://evil.example")
    assert "access-control-allow-origin" not in stranger.headers
    assert "access-control-allow-origin" not in tight.post(ADD, Origin="https://app.example"
                                                           ).headers


@pytest.mark.parametrize(("signum", "status"), [(2, 130), (15, 0)])
def test_the_gateway_stops_on_ctrl_c_and_sigterm(grid: tuple[Grid, Spawner], signum: int,
                                                 status: int) -> None:
    gateway = start_gateway(grid[1], grid[0].frontend)
    gateway.proc.signal(signum)
    assert gateway.proc.wait(15) == status
    assert "Traceback" not in gateway.proc.stderr()


# ----------------------------------------------------------------------------- TLS


def test_tls_serves_https(grid: tuple[Grid, Spawner], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    trust = ssl.create_default_context(cafile=str(cert))
    gateway = start_gateway(grid[1], grid[0].frontend, "--tls-cert", str(cert),
                            "--tls-key", str(key), tls=trust)
    assert gateway.post(ADD).json()["result"] == 3
    plain = raw_exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=3)
    assert not plain.startswith(b"HTTP/1.1 200")   # no plaintext on the TLS port


# --------------------------------------------------------------------------- CURVE


def test_with_a_curve_broker_the_gateway_is_a_client_with_its_own_key(
        spawn: Spawner, tmp_path: Path) -> None:
    secrets, clients, workers = (tmp_path / d for d in ("secrets", "clients", "workers"))
    for directory in (secrets, clients, workers):
        directory.mkdir()
    for name, role in (("broker", None), ("gateway", clients), ("worker", workers),
                       ("stranger", None)):
        public, _ = zmq.auth.create_certificates(str(secrets), name)
        if role is not None:
            shutil.copy(public, role)
    endpoints = spawn.endpoints()
    spawn.broker(endpoints, "--curve-secret", str(secrets / "broker.key_secret"),
                 "--client-keys", str(clients), "--worker-keys", str(workers))
    spawn.worker(endpoints, SIMPLE_JS, 1, "--curve-secret", str(secrets / "worker.key_secret"),
                 "--server-key", str(secrets / "broker.key"))
    gateway = start_gateway(spawn, endpoints.frontend,
                            "--curve-secret", str(secrets / "gateway.key_secret"),
                            "--server-key", str(secrets / "broker.key"))
    wait_until(lambda: gateway.post(ADD).status == 200, 30, 0.2, "the worker to serve")
    assert gateway.post(ADD).json()["result"] == 3
    stranger = start_gateway(spawn, endpoints.frontend, "--curve-secret",
                             str(secrets / "stranger.key_secret"), "--server-key",
                             str(secrets / "broker.key"), wait=False)
    wait_until(lambda: stranger.get_or_none("/healthz") == 503, 15, 0.2,
               "the gateway with an unknown key to find no broker")


# ------------------------------------------------------------- the broker goes away


def test_a_lost_broker_gives_503_and_the_gateway_recovers(
        spawn: Spawner, start_grid: Callable[..., Grid]) -> None:
    grid = start_grid()
    gateway = start_gateway(spawn, grid.frontend)
    assert gateway.post(ADD).json()["result"] == 3
    grid.broker.kill_group()
    wait_until(lambda: gateway.get("/healthz").status == 503, 10, 0.1, "/healthz to say 503")
    lost = gateway.post(ADD)
    assert lost.status == 503 and lost.headers["retry-after"] == "1"
    assert error_of(lost.body)["code"] == -32014
    figures = gateway.get("/api/metrics")
    assert figures.status == 503 and figures.json()["reachable"] is False
    spawn.broker(grid.endpoints)
    wait_until(lambda: gateway.get("/healthz").status == 200, 15, 0.1, "/healthz to say 200")
    wait_until(lambda: gateway.post(ADD).status == 200, 20, 0.2, "calls to be answered again")
    assert gateway.post(ADD).json() == {"jsonrpc": "2.0", "id": 1, "result": 3}
