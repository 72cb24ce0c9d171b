"""First-run mistakes through the real CLI: each gets a fast, clear, one-line answer and
no traceback (issue: first run)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from grid_support import SIMPLE_JS, Spawner, free_port, scaled, wait_for_workers

pytestmark = pytest.mark.timeout(60)


def madrpc(*args: str, timeout_s: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "madrpc.cli", *args], capture_output=True,
                          text=True, timeout=scaled(timeout_s), stdin=subprocess.DEVNULL,
                          check=False)
    return done, time.monotonic() - started


@pytest.mark.parametrize("command", [
    ["call", "add", "[1, 2]"], ["map", "add", "-"], ["top", "--once"],
    ["worker", "--script", str(SIMPLE_JS)], ["deploy", "--rollback"], ["drain", "w"],
])
def test_a_broker_endpoint_that_is_not_one_gets_one_line_and_status_2(
    command: list[str],
) -> None:
    done, _ = madrpc(*command, "--broker", "127.0.0.1:abc")

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: --broker: '127.0.0.1:abc': the port must be a number from 1 to 65535"]
    assert "Traceback" not in done.stderr


def test_host_port_without_tcp_is_taken_as_tcp(spawn: Spawner) -> None:
    front, back = free_port(), free_port()
    spawn.run("broker", "--frontend", f"127.0.0.1:{front}", "--backend", f"127.0.0.1:{back}",
              name="broker")
    spawn.run("worker", "--script", str(SIMPLE_JS), "--broker", f"127.0.0.1:{back}",
              "--contexts", "1", name="worker")
    wait_for_workers(f"tcp://127.0.0.1:{front}", 1)

    done, _ = madrpc("call", "add", "[1, 2]", "--broker", f"127.0.0.1:{front}")

    assert (done.returncode, done.stdout.strip()) == (0, "3")


def test_a_client_at_the_workers_port_is_told_at_once(spawn: Spawner) -> None:
    endpoints = spawn.endpoints()
    spawn.broker(endpoints)

    done, took = madrpc("call", "add", "[1, 2]", "--broker", endpoints.backend)

    assert done.returncode == 1
    assert "this is the broker's backend, the workers' port" in done.stderr
    assert "Traceback" not in done.stderr
    assert took < scaled(10)


def test_a_worker_at_the_clients_port_says_so_in_one_error_line(spawn: Spawner) -> None:
    endpoints = spawn.endpoints()
    spawn.broker(endpoints)
    worker = spawn.run("worker", "--script", str(SIMPLE_JS), "--broker", endpoints.frontend,
                       "--contexts", "1", name="worker")

    text = "this is the broker's frontend"
    line = next(x for x in worker.wait_for_log(text, scaled(20)).splitlines() if text in x)

    assert "ERROR" in line and "workers connect to its backend" in line
    assert worker.stderr().count("this is the broker's frontend") == 1


def test_a_worker_logs_one_line_when_it_registers(spawn: Spawner) -> None:
    endpoints = spawn.endpoints()
    spawn.broker(endpoints)
    worker = spawn.worker(endpoints, SIMPLE_JS, 1)

    text = "registered with broker"
    line = next(x for x in worker.wait_for_log(text, scaled(30)).splitlines() if text in x)

    assert endpoints.backend in line and "1 contexts" in line and "add" in line
