"""Code shipped through the grid: ``madrpc deploy`` to workers started without a script.

Real brokers and workers; the deploy command runs as the user runs it (the real CLI in a
subprocess), and the scripts are folders whose ``index.js`` requires a sibling file.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq.auth
from grid_support import (
    HEARTBEAT_S,
    LIVENESS,
    GridEndpoints,
    Proc,
    Spawner,
    metrics,
    scaled,
    wait_until,
)

from madrpc import Client, RpcError

pytestmark = pytest.mark.timeout(120)

INDEX_JS = """\
const lib = require('./lib');
madrpc.register('version', () => lib.name);
madrpc.register('slow', async (ms) => {
  await new Promise((resolve) => setTimeout(resolve, ms));
  return lib.name;
});
"""


def script_folder(root: Path, name: str, index: str = INDEX_JS) -> Path:
    """A folder with index.js, which requires ./lib.js, whose name export is ``name``."""
    folder = root / name
    folder.mkdir()
    (folder / "index.js").write_text(index)
    (folder / "lib.js").write_text(f"exports.name = {name!r};\n")
    return folder


def deploy(frontend: str, *args: str, keys: tuple[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """``madrpc deploy ARGS`` as a user runs it (with CURVE: (secret, server key))."""
    command = [sys.executable, "-m", "madrpc.cli", "deploy", *args, "--broker", frontend,
               "--wait-timeout", str(scaled(60))]
    if keys is not None:
        command += ["--curve-secret", keys[0], "--server-key", keys[1]]
    return subprocess.run(command, capture_output=True, text=True, timeout=scaled(90),
                          stdin=subprocess.DEVNULL, check=False)


def grid_worker(spawn: Spawner, endpoints: GridEndpoints, *extra: str) -> Proc:
    """A worker started without --script: it runs the grid's script."""
    return spawn.run(
        "worker", "--broker", endpoints.backend, "--contexts", "2",
        "--heartbeat-interval", str(HEARTBEAT_S), "--heartbeat-liveness", str(LIVENESS),
        "--log-level", "debug", *extra, name="worker",
    )


def call(frontend: str, method: str, params: Any = None) -> Any:
    with Client(frontend, timeout=scaled(20)) as client:
        return client.call(method, params)


def versions_of_workers(frontend: str) -> set[str | None]:
    return {w["script_version"] for w in metrics(frontend)["workers"]}


@pytest.fixture
def grid(spawn: Spawner, tmp_path: Path) -> GridEndpoints:
    """A broker (with a state directory) and one worker with no script of its own."""
    endpoints = spawn.endpoints()
    spawn.broker(endpoints, "--state-dir", str(tmp_path / "state"))
    grid_worker(spawn, endpoints)
    return endpoints


def test_a_folder_whose_index_requires_a_sibling_reaches_a_worker_without_a_script(
    grid: GridEndpoints, tmp_path: Path,
) -> None:
    done = deploy(grid.frontend, str(script_folder(tmp_path, "v1")))

    assert done.returncode == 0, done.stderr
    version = done.stdout.strip().splitlines()[-1]
    assert len(version) == 12 and int(version, 16) >= 0
    assert call(grid.frontend, "version") == "v1"
    assert versions_of_workers(grid.frontend) == {version}
    assert call(grid.frontend, "_info")["script"]["version"] == version


def test_a_deploy_under_steady_load_loses_no_call_and_then_only_the_new_version_answers(
    grid: GridEndpoints, tmp_path: Path,
) -> None:
    assert deploy(grid.frontend, str(script_folder(tmp_path, "v1"))).returncode == 0
    answers: list[Any] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        with Client(grid.frontend, timeout=scaled(30)) as client:
            while not stop.is_set():
                try:
                    answers.append(client.call("slow", [20]))
                except RpcError as exc:
                    failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(answers) >= 20, scaled(30), 0.05, "calls under way")
        done = deploy(grid.frontend, str(script_folder(tmp_path, "v2")))
        assert done.returncode == 0, done.stderr
        settled = len(answers)
        wait_until(lambda: len(answers) >= settled + 40, scaled(30), 0.05, "calls after it")
    finally:
        stop.set()
        for thread in threads:
            thread.join(scaled(30))

    assert failures == []
    assert set(answers) == {"v1", "v2"}
    assert set(answers[settled + 4:]) == {"v2"}   # the 4 in flight as it returned may be v1
    assert {call(grid.frontend, "version") for _ in range(20)} == {"v2"}


def test_a_version_that_fails_to_load_is_refused_with_file_line_and_the_old_one_serves(
    grid: GridEndpoints, tmp_path: Path,
) -> None:
    good = deploy(grid.frontend, str(script_folder(tmp_path, "v1")))
    broken = script_folder(tmp_path, "v2", INDEX_JS + "madrpc.register('x', () => ;\n")

    done = deploy(grid.frontend, str(broken))

    assert done.returncode == 1
    assert f"{broken / 'index.js'}:7:" in done.stderr
    assert "SyntaxError" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert call(grid.frontend, "version") == "v1"
    assert call(grid.frontend, "_info")["script"]["version"] == good.stdout.split()[-1]


def test_rollback_goes_back_one_version_on_every_worker(
    grid: GridEndpoints, tmp_path: Path,
) -> None:
    first = deploy(grid.frontend, str(script_folder(tmp_path, "v1"))).stdout.split()[-1]
    assert deploy(grid.frontend, str(script_folder(tmp_path, "v2"))).returncode == 0
    assert call(grid.frontend, "version") == "v2"

    done = deploy(grid.frontend, "--rollback")

    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == first
    assert call(grid.frontend, "version") == "v1"
    assert versions_of_workers(grid.frontend) == {first}


def test_a_restarted_broker_with_a_state_dir_serves_the_deployed_version_to_new_workers(
    spawn: Spawner, tmp_path: Path,
) -> None:
    endpoints = spawn.endpoints()
    broker = spawn.broker(endpoints, "--state-dir", str(tmp_path / "state"))
    version = deploy(endpoints.frontend, str(script_folder(tmp_path, "v1"))).stdout.split()[-1]
    broker.kill_group()

    spawn.broker(endpoints, "--state-dir", str(tmp_path / "state"))
    grid_worker(spawn, endpoints)

    wait_until(lambda: versions_of_workers(endpoints.frontend) == {version}, scaled(30), 0.1,
               "the new worker runs the stored version")
    assert call(endpoints.frontend, "version") == "v1"


def test_a_worker_started_before_any_deploy_waits_then_serves_the_first_version(
    grid: GridEndpoints, tmp_path: Path, spawn: Spawner,
) -> None:
    worker = spawn.procs[-1]
    worker.wait_for_log("no script is deployed", scaled(20))
    assert metrics(grid.frontend)["workers"] == []

    assert deploy(grid.frontend, str(script_folder(tmp_path, "v1"))).returncode == 0

    assert call(grid.frontend, "version") == "v1"


def test_a_deploy_without_an_admin_key_is_refused_on_a_curve_broker(
    spawn: Spawner, tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    (keys / "secrets").mkdir(parents=True)
    for role, name in (("server", "broker"), ("clients", "c1"), ("workers", "w1"),
                       ("admins", "a1")):
        public, _ = zmq.auth.create_certificates(str(keys / "secrets"), name)
        (keys / role).mkdir(parents=True, exist_ok=True)
        (keys / role / f"{name}.key").write_bytes(Path(public).read_bytes())
    secret = str(keys / "secrets" / "{}.key_secret").format
    server = str(keys / "secrets" / "broker.key")
    endpoints = spawn.endpoints()
    spawn.broker(endpoints, "--curve-secret", secret("broker"), "--client-keys",
                 str(keys / "clients"), "--worker-keys", str(keys / "workers"),
                 "--admin-keys", str(keys / "admins"))
    grid_worker(spawn, endpoints, "--curve-secret", secret("w1"), "--server-key", server)
    folder = str(script_folder(tmp_path, "v1"))

    refused = deploy(endpoints.frontend, folder, keys=(secret("c1"), server))
    allowed = deploy(endpoints.frontend, folder, keys=(secret("a1"), server))

    assert refused.returncode == 1
    assert "-32010" in refused.stderr and "admin key" in refused.stderr
    assert refused.stdout == ""
    assert allowed.returncode == 0, allowed.stderr
    with Client(endpoints.frontend, timeout=scaled(20), curve_secret=secret("c1"),
                server_key=server) as client:
        assert client.call("version") == "v1"


def test_a_worker_with_a_script_folder_loads_its_requires_and_node_modules(
    spawn: Spawner, tmp_path: Path,
) -> None:
    folder = script_folder(tmp_path, "v1", "const pad = require('left-pad');\n"
                           "const lib = require('./lib.js');\n"
                           "madrpc.register('padded', () => pad(lib.name, 5));\n")
    package = folder / "node_modules" / "left-pad"
    (package / "src").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "left-pad", "main": "src/pad.js"}')
    (package / "src" / "pad.js").write_text(
        "module.exports = (text, n) => String(text).padStart(n, '.');\n")
    endpoints = spawn.endpoints()
    spawn.broker(endpoints)
    spawn.worker(endpoints, folder)

    wait_until(lambda: metrics(endpoints.frontend)["workers"], scaled(30), 0.1, "the worker")
    assert call(endpoints.frontend, "padded") == "...v1"
