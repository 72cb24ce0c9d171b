"""The local shortcut (madrpc.shortcut): a broker on TCP loopback also offers its sockets
as abstract Unix sockets, and local clients and workers given its TCP endpoints use them.
Real processes; the connections are read from the kernel's /proc/net/unix."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
import zmq.auth
from grid_support import SIMPLE_JS, Spawner, free_port, scaled, wait_for_workers, wait_until
from http_support import start_gateway

from madrpc import Client
from madrpc.shortcut import preferred_endpoint, supported

pytestmark = pytest.mark.skipif(not supported(), reason="abstract Unix sockets are Linux's")


def sockets_named(endpoint: str) -> int:
    """Unix sockets of this network namespace bound to ``endpoint``'s abstract name (the
    listener and every connection it accepted)."""
    name = "@" + endpoint.removeprefix("ipc://@")
    with open("/proc/net/unix") as table:
        return sum(1 for row in table.read().splitlines()[1:] if row.split()[7:] == [name])


def settles_at(endpoint: str, count: int) -> None:
    wait_until(lambda: sockets_named(endpoint) == count, scaled(10), 0.05,
               f"{count} sockets named {endpoint}")


def tcp_grid(spawn: Spawner, *broker_args: str, worker_args: tuple[str, ...] = ()
             ) -> tuple[str, str]:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    spawn.run("broker", "--frontend", front, "--backend", back, "--log-level", "debug",
              *broker_args, name="broker")
    spawn.run("worker", "--script", str(SIMPLE_JS), "--broker", back, "--contexts", "1",
              "--log-level", "debug", *worker_args, name="worker")
    return front, back


def test_local_clients_and_workers_reach_a_tcp_broker_over_its_shortcut(spawn: Spawner) -> None:
    front, back = tcp_grid(spawn)
    wait_for_workers(front, 1)
    front_shortcut, back_shortcut = preferred_endpoint(front), preferred_endpoint(back)
    assert front_shortcut == front.replace("tcp://127.0.0.1:", "ipc://@madrpc-tcp-127.0.0.1-")
    assert back_shortcut == back.replace("tcp://127.0.0.1:", "ipc://@madrpc-tcp-127.0.0.1-")
    with Client(front, timeout=scaled(10)) as client:   # and _info says so
        assert client.call("_info")["endpoints"]["shortcuts"] == {
            "frontend": front_shortcut, "backend": back_shortcut}
    # (a look for a shortcut is a connection too, closed at once: counts settle)
    settles_at(back_shortcut, 2)   # listening, and the worker's connection
    settles_at(front_shortcut, 1)   # the client that waited for the worker has gone
    with Client(front, timeout=scaled(10)) as client:
        assert client.call("add", [2, 3]) == 5
        settles_at(front_shortcut, 2)   # and this client's connection
    # a peer elsewhere still has the TCP port, and gets the same answers there
    with Client(front, timeout=scaled(10)) as client, \
            Client(front_shortcut, timeout=scaled(10)) as direct:
        assert client.call("add", [1, 1]) == direct.call("add", [2, 0]) == 2


def test_a_broker_told_no_local_shortcut_offers_none_and_serves_over_tcp(
        spawn: Spawner) -> None:
    front, back = tcp_grid(spawn, "--no-local-shortcut")
    wait_for_workers(front, 1)
    assert preferred_endpoint(front) == front
    assert preferred_endpoint(back) == back
    with Client(front, timeout=scaled(10)) as client:
        assert client.call("add", [2, 3]) == 5
        assert "shortcuts" not in client.call("_info")["endpoints"]


def test_curve_guards_the_shortcut_as_it_guards_the_port(spawn: Spawner, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    (keys / "secrets").mkdir(parents=True)
    for role, name in (("server", "broker"), ("clients", "c1"), ("workers", "w1")):
        public, _ = zmq.auth.create_certificates(str(keys / "secrets"), name)
        (keys / role).mkdir(parents=True, exist_ok=True)
        (keys / role / f"{name}.key").write_bytes(Path(public).read_bytes())
    secret = str(keys / "secrets" / "{}.key_secret")
    server_key = str(keys / "server" / "broker.key")
    front, _ = tcp_grid(spawn, "--curve-secret", secret.format("broker"), "--client-keys",
                        str(keys / "clients"), "--worker-keys", str(keys / "workers"),
                        worker_args=("--curve-secret", secret.format("w1"),
                                     "--server-key", server_key))
    with Client(front, timeout=scaled(10), curve_secret=secret.format("c1"),
                server_key=server_key) as client:   # goes over the shortcut, with its key
        wait_until(lambda: client.call("_metrics")["workers"], scaled(30), 0.1, "a worker")
        assert client.call("add", [2, 3]) == 5
    shortcut = preferred_endpoint(front)
    assert shortcut != front
    context = zmq.Context()
    try:   # no CURVE, or a key the broker does not know: no answer on the shortcut either
        plain = context.socket(zmq.DEALER)
        stranger = context.socket(zmq.DEALER)
        stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
        stranger.curve_serverkey = zmq.auth.load_certificate(server_key)[0]
        for sock in (plain, stranger):
            sock.connect(shortcut)
            sock.send(b'{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}')
        for sock in (plain, stranger):
            assert not sock.poll(int(scaled(1.0) * 1000)), "the shortcut answered without CURVE"
    finally:
        context.destroy(linger=0)


def test_a_gateway_follows_its_broker_off_the_shortcut_when_it_comes_back_without_one(
        spawn: Spawner) -> None:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = spawn.run("broker", "--frontend", front, "--backend", back, name="broker")
    spawn.run("worker", "--script", str(SIMPLE_JS), "--broker", back, "--contexts", "1",
              "--log-level", "debug", name="worker")
    wait_for_workers(front, 1)
    gateway = start_gateway(spawn, front)
    settles_at(preferred_endpoint(front), 2)   # listening, and the gateway's connection
    add = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}
    assert gateway.post(add).json()["result"] == 3
    broker.kill_group()   # back on the same ports, TCP only: the shortcut's name is gone
    spawn.run("broker", "--frontend", front, "--backend", back, "--no-local-shortcut",
              name="broker-again")
    wait_until(lambda: gateway.post(add).status == 200, scaled(30), 0.2,
               "the gateway to reach the broker over TCP")
    assert gateway.post(add).json()["result"] == 3
    assert "connecting over " + front in gateway.proc.stderr()
