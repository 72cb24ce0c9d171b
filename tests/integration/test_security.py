"""The trust boundary under real CURVE: keys by role, hostile peers, revocation, safe binds.

Real brokers and workers with keys made by ``madrpc keygen``; hostile peers are raw pyzmq
sockets doing what an attacker would (plaintext, unknown keys, keys of another role).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
import zmq.auth
from grid_support import (
    SIMPLE_JS,
    GridEndpoints,
    Proc,
    Spawner,
    free_port,
    scaled,
    wait_until,
)

from madrpc import AsyncClient, Client, ConfigError, RpcError
from madrpc import protocol as p

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Keys:
    """Key files of one test: the broker's pair and the role directories."""

    root: Path

    def secret(self, name: str) -> str:
        return str(self.root / "secrets" / f"{name}.key_secret")

    @property
    def server(self) -> str:
        return str(self.root / "secrets" / "broker.key")

    def role_dir(self, role: str) -> str:
        return str(self.root / role)

    def public(self, role: str, name: str) -> Path:
        return self.root / role / f"{name}.key"

    def pair(self, name: str) -> tuple[bytes, bytes]:
        public, secret = zmq.auth.load_certificate(self.secret(name))
        assert secret is not None
        return public, secret


def make_key(keys_root: Path, role: str | None, name: str) -> None:
    """A pair in secrets/, its public half in the role's directory (None: nowhere)."""
    secrets = keys_root / "secrets"
    public, _ = zmq.auth.create_certificates(str(secrets), name)
    if role is not None:
        (keys_root / role).mkdir(exist_ok=True)
        (keys_root / role / f"{name}.key").write_bytes(Path(public).read_bytes())


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    root = tmp_path / "keys"
    (root / "secrets").mkdir(parents=True)
    for role, name in (("server", "broker"), ("clients", "c1"), ("workers", "w1"),
                       ("workers", "w2"), ("admins", "a1"), (None, "outsider")):
        make_key(root, role, name)
    return Keys(root)


@dataclass
class CurveGrid:
    endpoints: GridEndpoints
    broker: Proc
    workers: list[Proc]
    keys: Keys

    @property
    def frontend(self) -> str:
        return self.endpoints.frontend

    def client(self, name: str = "c1", timeout: float = 10.0) -> Client:
        return Client(self.frontend, timeout=scaled(timeout),
                      curve_secret=self.keys.secret(name), server_key=self.keys.server)

    def metrics(self, name: str = "a1") -> dict[str, Any]:
        with self.client(name, timeout=5.0) as client:
            result: dict[str, Any] = client.call("_metrics")
            return result

    def wait_for_workers(self, count: int) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            snapshot = self.metrics()
            return snapshot if len(snapshot["workers"]) == count else None

        found: dict[str, Any] = wait_until(ready, 30, 0.1, f"{count} registered worker(s)")
        return found


def curve_broker(spawn: Spawner, keys: Keys, *extra: str) -> tuple[GridEndpoints, Proc]:
    endpoints = spawn.endpoints()
    broker = spawn.broker(
        endpoints, "--curve-secret", keys.secret("broker"), "--client-keys",
        keys.role_dir("clients"), "--worker-keys", keys.role_dir("workers"),
        "--admin-keys", keys.role_dir("admins"), *extra,
    )
    return endpoints, broker


def curve_worker(spawn: Spawner, endpoints: GridEndpoints, keys: Keys, name: str) -> Proc:
    return spawn.worker(endpoints, SIMPLE_JS, 1, "--curve-secret", keys.secret(name),
                        "--server-key", keys.server)


@pytest.fixture
def curve_grid(spawn: Spawner, keys: Keys) -> CurveGrid:
    endpoints, broker = curve_broker(spawn, keys)
    grid = CurveGrid(endpoints, broker, [curve_worker(spawn, endpoints, keys, "w1")], keys)
    grid.wait_for_workers(1)
    return grid


# ---------------------------------------------------------------- keys


def test_keygen_writes_a_zmq_auth_pair_with_a_private_secret_and_refuses_to_overwrite(
    tmp_path: Path,
) -> None:
    def keygen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "madrpc.cli", "keygen", *args],
                              capture_output=True, text=True, timeout=scaled(30))

    made = keygen("alice", "--dir", str(tmp_path / "k"))
    public, secret = zmq.auth.load_certificate(str(tmp_path / "k" / "alice.key_secret"))

    assert made.returncode == 0, made.stderr
    assert zmq.auth.load_certificate(str(tmp_path / "k" / "alice.key")) == (public, None)
    assert secret is not None and zmq.curve_public(secret) == public
    assert (tmp_path / "k" / "alice.key_secret").stat().st_mode & 0o077 == 0
    again = keygen("alice", "--dir", str(tmp_path / "k"))
    assert again.returncode == 1 and "exists already" in again.stderr


# ---------------------------------------------------------------- legit use


def test_a_client_and_a_worker_with_allowed_keys_work_under_curve(curve_grid: CurveGrid) -> None:
    with curve_grid.client() as client:
        assert client.call("add", [1, 2]) == 3
    public, secret = curve_grid.keys.pair("c1")
    server = zmq.auth.load_certificate(curve_grid.keys.server)[0]
    with Client(curve_grid.frontend, timeout=scaled(10), curve_secret=secret.decode(),
                server_key=server.decode()) as raw_keys:   # z85 strings instead of files
        assert raw_keys.call("add", [2, 3]) == 5

    async def call_async() -> Any:
        async with AsyncClient(curve_grid.frontend, timeout=scaled(10),
                               curve_secret=curve_grid.keys.secret("c1"),
                               server_key=curve_grid.keys.server) as client:
            return await client.call("add", [3, 4])

    import asyncio
    assert asyncio.run(call_async()) == 7


def test_madrpc_call_takes_its_keys_from_options_or_the_environment(
    curve_grid: CurveGrid,
) -> None:
    env = {**os.environ, "MADRPC_BROKER": curve_grid.frontend,
           "MADRPC_CURVE_SECRET": curve_grid.keys.secret("c1"),
           "MADRPC_SERVER_KEY": curve_grid.keys.server}
    done = subprocess.run([sys.executable, "-m", "madrpc.cli", "call", "add", "[20, 22]"],
                          capture_output=True, text=True, env=env, timeout=scaled(30))

    assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr


# ---------------------------------------------------------------- hostile peers


@dataclass
class Attempt:
    side: str            # "frontend" or "backend"
    key: str | None      # None: plaintext; else the name of the key pair used
    label: str


ATTEMPTS = [
    Attempt("frontend", None, "plaintext client"),
    Attempt("backend", None, "plaintext worker"),
    Attempt("frontend", "outsider", "unknown client key"),
    Attempt("backend", "outsider", "unknown worker key"),
    Attempt("frontend", "w2", "worker key on the frontend"),
    Attempt("backend", "c1", "client key on the backend"),
]


def hostile_socket(context: zmq.Context[Any], grid: CurveGrid, attempt: Attempt,
                   number: int) -> zmq.Socket[Any]:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if attempt.key is not None:
        public, secret = grid.keys.pair(attempt.key)
        socket.curve_publickey, socket.curve_secretkey = public, secret
        socket.curve_serverkey = zmq.auth.load_certificate(grid.keys.server)[0]
    endpoint = grid.frontend if attempt.side == "frontend" else grid.endpoints.backend
    socket.connect(endpoint)
    try:
        if attempt.side == "frontend":
            socket.send(orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [number, 1],
                                      "id": number}), zmq.NOBLOCK)
        else:
            ready = {"methods": ["add"], "credit": 1000, "id": f"evil-{number}"}
            socket.send_multipart(p.json_message(p.READY, ready), zmq.NOBLOCK)
    except zmq.Again:
        pass   # the broker already dropped this peer's connection: it stays, and must hear nothing
    return socket


def test_plaintext_unknown_and_wrong_role_peers_get_nothing_while_a_client_is_served(
    curve_grid: CurveGrid,
) -> None:
    before = curve_grid.metrics()
    stop = threading.Event()
    served: list[int] = []
    failures: list[BaseException] = []

    def legit() -> None:
        with curve_grid.client() as client:
            n = 0
            while not stop.is_set():
                try:
                    assert client.call("add", [n, 1]) == n + 1
                    served.append(n)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)
                n += 1

    thread = threading.Thread(target=legit)
    thread.start()
    context: zmq.Context[Any] = zmq.Context()
    received = 0
    try:
        for round_number in range(10):
            sockets = [hostile_socket(context, curve_grid, ATTEMPTS[i % len(ATTEMPTS)],
                                      round_number * 100 + i) for i in range(100)]
            deadline = time.monotonic() + scaled(0.3)
            while time.monotonic() < deadline:
                for socket in sockets:
                    while socket.poll(0):
                        socket.recv_multipart()
                        received += 1
                time.sleep(0.01)
            for socket in sockets:
                socket.close(linger=0)
    finally:
        stop.set()
        thread.join(scaled(30))
        context.destroy(linger=0)   # closes any socket an error left open (term would wait)
    after = curve_grid.metrics()

    assert received == 0
    assert failures == [] and len(served) > 10
    assert [w["id"] for w in after["workers"]] == [w["id"] for w in before["workers"]]
    legit_calls = after["broker"]["requests"] - before["broker"]["requests"]
    assert legit_calls == len(served) + len(failures)
    assert after["broker"]["dropped_frames"] == before["broker"]["dropped_frames"]


def test_a_client_key_cannot_register_a_worker(spawn: Spawner, keys: Keys) -> None:
    endpoints, broker = curve_broker(spawn, keys)
    impostor = curve_worker(spawn, endpoints, keys, "c1")
    grid = CurveGrid(endpoints, broker, [impostor], keys)
    wait_until(lambda: "b'400'" in broker.stderr(), 30, message="the broker refusing the key")

    assert grid.metrics()["workers"] == []
    assert impostor.popen.poll() is None   # it keeps trying, and keeps being refused
    log = impostor.wait_for_log("refused our CURVE key")
    assert log.count("refused our CURVE key") == 1   # said once, not per attempt


def test_a_revoked_worker_key_is_out_within_one_heartbeat_of_sighup(
    spawn: Spawner, keys: Keys,
) -> None:
    endpoints, broker = curve_broker(spawn, keys)
    grid = CurveGrid(endpoints, broker, [curve_worker(spawn, endpoints, keys, name)
                                         for name in ("w1", "w2")], keys)
    grid.wait_for_workers(2)
    keys.public("workers", "w1").unlink()
    revoked_at = time.monotonic()
    os.kill(broker.pid, signal.SIGHUP)
    snapshot = grid.wait_for_workers(1)
    gone_after = time.monotonic() - revoked_at

    assert [w["pid"] for w in snapshot["workers"]] == [grid.workers[1].pid]
    assert gone_after < scaled(1.0) + 0.5   # one 0.2 s heartbeat, plus the _metrics calls
    with grid.client() as client:
        assert [client.call("add", [i, i]) for i in range(20)] == [2 * i for i in range(20)]
    wait_until(lambda: broker.stderr().count("b'400'") >= 1, 10,
               message="the revoked worker's reconnection refused")
    assert len(grid.metrics()["workers"]) == 1


def test_a_revoked_client_key_is_refused_at_once_even_on_its_open_connection(
    curve_grid: CurveGrid,
) -> None:
    with curve_grid.client() as client:
        assert client.call("add", [1, 1]) == 2
        curve_grid.keys.public("clients", "c1").unlink()
        os.kill(curve_grid.broker.pid, signal.SIGHUP)

        def refused() -> bool:
            try:
                client.call("add", [1, 1])
            except RpcError as exc:
                return exc.code == -32010
            return False

        wait_until(refused, 10, message="the revoked client refused")


def test_drain_needs_an_admin_key_and_takes_a_worker_out_of_rotation(
    curve_grid: CurveGrid,
) -> None:
    worker_id = curve_grid.metrics()["workers"][0]["id"]
    with curve_grid.client("c1") as client, pytest.raises(RpcError) as refused:
        client.call("_drain", {"worker": worker_id})
    assert refused.value.code == -32010

    with curve_grid.client("a1") as admin:
        assert admin.call("_drain", {"worker": worker_id})["paused"] is True
        assert curve_grid.metrics()["workers"][0]["paused"] is True
        with curve_grid.client("c1", timeout=1.0) as client, pytest.raises(RpcError) as waited:
            client.call("add", [1, 2])
        assert waited.value.code in (-32001, -32003, -32013)   # nobody took it
        admin.call("_drain", {"worker": worker_id, "resume": True})
    with curve_grid.client() as client:
        assert client.call("add", [1, 2]) == 3


# ---------------------------------------------------------------- safe by default


def broker_start(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "madrpc.cli", "broker", *args],
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(scaled(10))


@pytest.mark.parametrize("binding", [
    ("--frontend", "tcp://0.0.0.0:{port}"),
    ("--backend", "tcp://*:{port}"),
    ("--metrics-http", "0.0.0.0:{port}"),
])
def test_a_public_bind_without_curve_is_refused_in_one_line(
    binding: tuple[str, str], started: list[subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    option, address = binding
    log = tmp_path / "broker.err"
    proc = broker_start(log, "--frontend", f"ipc://{tmp_path}/f", "--backend",
                        f"ipc://{tmp_path}/b", option, address.format(port=free_port()))
    started.append(proc)
    proc.wait(scaled(30))

    assert proc.returncode == 1
    message = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(message) == 1 and "--insecure" in message[0]
    assert ("HTTP has no CURVE" if option == "--metrics-http" else "--curve-secret") in message[0]


def test_insecure_allows_a_public_bind_and_says_so(started: list[subprocess.Popen[bytes]],
                                                    tmp_path: Path) -> None:
    log = tmp_path / "broker.err"
    proc = broker_start(log, "--frontend", f"tcp://0.0.0.0:{free_port()}", "--backend",
                        f"ipc://{tmp_path}/b", "--insecure")
    started.append(proc)
    text = wait_until(lambda: "serving" in log.read_text() and log.read_text(), 30,
                      message="the broker serving")

    assert any("--insecure" in line and "0.0.0.0" in line for line in text.splitlines())


def test_a_missing_key_directory_or_key_file_is_a_one_line_error(keys: Keys,
                                                                 tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "madrpc.cli", "broker", "--frontend", f"ipc://{tmp_path}/f",
         "--backend", f"ipc://{tmp_path}/b", "--curve-secret", keys.secret("broker"),
         "--worker-keys", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 1 and "nowhere does not exist" in done.stderr

    with pytest.raises(ConfigError, match="both"):
        Client("ipc:///nowhere", curve_secret=keys.secret("c1"))
    with pytest.raises(ConfigError, match="cannot read"):
        Client("ipc:///nowhere", curve_secret=str(tmp_path / "missing.key_secret"),
               server_key=keys.server)


def test_a_worker_cannot_be_given_a_public_key_as_its_secret(keys: Keys) -> None:
    with pytest.raises(ConfigError, match="no secret key"):
        Client("ipc:///nowhere", curve_secret=str(keys.public("clients", "c1")),
               server_key=keys.server)

