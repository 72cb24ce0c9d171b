"""An embedded LocalGrid reaches its own worker and clients in-process (``inproc://``), and
other processes through its private ``ipc://`` endpoints; with CURVE, only the latter."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from grid_support import SIMPLE_JS, scaled

from madrpc import Client, LocalGrid
from madrpc.broker import Broker
from madrpc.config import BrokerConfig
from madrpc.curve import keygen
from madrpc.errors import ConfigError, RpcTimeoutError

pytestmark = pytest.mark.timeout(120)


def test_a_local_grids_own_clients_reach_it_without_its_socket_files() -> None:
    with LocalGrid(str(SIMPLE_JS), contexts=1) as grid:
        socket_file = grid.frontend.removeprefix("ipc://")
        os.unlink(socket_file)   # a new connection from outside has nothing to reach now

        with Client(grid.frontend, timeout=0.5) as outsider, pytest.raises(RpcTimeoutError):
            outsider.call("add", [1, 1])
        assert grid.client(timeout_s=scaled(10)).call("add", [1, 2]) == 3
        assert grid.client(timeout_s=scaled(10)).call("_metrics")["workers"] != []


def test_a_local_grid_still_serves_other_processes_on_its_ipc_endpoint() -> None:
    with LocalGrid(str(SIMPLE_JS), contexts=1) as grid, \
            Client(grid.frontend, timeout=scaled(10)) as outsider:
        assert outsider.call("add", [2, 3]) == 5
        assert grid.client(timeout_s=scaled(10)).call("add", [3, 4]) == 7


def keys(root: Path) -> dict[str, str]:
    """Broker, worker and client pairs; each role's public key in its directory."""
    made = {}
    for role, name in (("server", "broker"), ("workers", "w1"), ("clients", "c1")):
        public, secret = keygen(name, root / "secrets")
        (root / role).mkdir()
        (root / role / public.name).write_bytes(public.read_bytes())
        made[name] = str(secret)
        made[role] = str(root / role)
    made["server_key"] = str(root / "server" / "broker.key")
    return made


def test_a_local_grid_with_curve_keys_checks_them_on_every_connection(tmp_path: Path) -> None:
    made = keys(tmp_path)
    broker_options = {"curve_secret": made["broker"], "client_keys": made["clients"],
                      "worker_keys": made["workers"]}
    worker_options = {"curve_secret": made["w1"], "server_key": made["server_key"]}

    with LocalGrid(str(SIMPLE_JS), contexts=1, broker_options=broker_options,
                   worker_options=worker_options) as grid:
        client = grid.client(timeout_s=scaled(10), curve_secret=made["c1"],
                             server_key=made["server_key"])
        assert client.config.endpoint == grid.frontend
        assert client.call("add", [1, 2]) == 3
        with pytest.raises(RpcTimeoutError):   # no key: its handshake is refused
            grid.client(timeout_s=0.5).call("add", [1, 1])
        with pytest.raises(ConfigError, match="bypass CURVE"):
            grid.broker.bind_in_process("elsewhere")


def test_a_broker_answers_on_its_in_process_endpoints(tmp_path: Path) -> None:
    broker = Broker(BrokerConfig(frontend=f"ipc://{tmp_path}/front",
                                 backend=f"ipc://{tmp_path}/back"))
    frontend, backend = broker.bind_in_process("probe")
    runner = threading.Thread(target=broker.run, daemon=True)
    runner.start()
    try:
        assert (frontend, backend) == ("inproc://probe-frontend", "inproc://probe-backend")
        with Client(frontend, timeout=scaled(10), context=broker.context) as client:
            assert client.call("_metrics")["workers"] == []
    finally:
        broker.stop(drain=False)
        runner.join(scaled(10))
    assert not runner.is_alive()
