"""First-run mistakes through the real CLI: each gets a fast, clear, one-line answer and
no traceback (issue: first run)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from grid_support import (
    NOTHING_LISTENS,
    SIMPLE_JS,
    Ahead,
    Background,
    Spawner,
    free_port,
    run_ahead,
    scaled,
    wait_for_workers,
)

from madrpc.__about__ import __version__
from madrpc.cli import main as madrpc_cli
from madrpc.cli_support import NO_BROKER_NOTICE_S, no_broker
from madrpc.native_modules import summary as native_summary

pytestmark = pytest.mark.timeout(60)

OWN_TIMEOUT_S = scaled(NO_BROKER_NOTICE_S + 2)
"""A --timeout that ends well after `call` has said that no broker answers."""
NOT_AN_ENDPOINT = "127.0.0.1:abc"
TAKE_A_BROKER = [
    ("call", "add", "[1, 2]"), ("map", "add", "-"), ("top", "--once"),
    ("worker", "--script", str(SIMPLE_JS)), ("deploy", "--rollback"), ("drain", "w"),
]
"""Commands that take --broker (each given one that is not an endpoint)."""
AHEAD = {
    **{f"--broker {NOT_AN_ENDPOINT}: {command[0]}": Ahead(
        "test_a_broker_endpoint_that_is_not_one_gets_one_line_and_status_2",
        (*command, "--broker", NOT_AN_ENDPOINT)) for command in TAKE_A_BROKER},
    "no broker": Ahead("test_call_with_no_broker_says_so_within_seconds_and_exits_1",
                       ("call", "add", "[1, 2]", "--broker", NOTHING_LISTENS)),
    "own timeout": Ahead("test_call_with_a_timeout_of_its_own_says_so_at_once_and_keeps_trying",
                         ("call", "add", "[1, 2]", "--broker", NOTHING_LISTENS,
                          "--timeout", str(OWN_TIMEOUT_S))),
    "run": Ahead("test_run_shows_console_output_and_a_clean_shutdown_is_quiet",
                 ("run", str(SIMPLE_JS), "sum_of_squares", "[3]")),
}
"""Runs that need no grid of the tests' (most of them mostly wait: for a broker that never
answers, an embedded grid): started when the module starts, so they overlap its other
tests."""


@pytest.fixture(scope="module", autouse=True)
def ahead(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Background]:
    """The AHEAD runs, started at the module's first test (whichever it is)."""
    with run_ahead(request, tmp_path_factory.mktemp("ahead"), AHEAD) as runs:
        yield runs


def madrpc(*args: str, timeout_s: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "madrpc.cli", *args], capture_output=True,
                          text=True, timeout=scaled(timeout_s), stdin=subprocess.DEVNULL,
                          check=False)
    return done, time.monotonic() - started


@pytest.mark.parametrize("command", TAKE_A_BROKER, ids=[c[0] for c in TAKE_A_BROKER])
def test_a_broker_endpoint_that_is_not_one_gets_one_line_and_status_2(
    command: tuple[str, ...], ahead: Background,
) -> None:
    done = ahead.finish(f"--broker {NOT_AN_ENDPOINT}: {command[0]}").done

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


def test_call_with_no_broker_says_so_within_seconds_and_exits_1(ahead: Background) -> None:
    finished = ahead.finish("no broker")
    done, took = finished.done, finished.seconds

    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {no_broker(NOTHING_LISTENS)}"
    assert took < scaled(10)


def test_call_with_a_timeout_of_its_own_says_so_at_once_and_keeps_trying(
    ahead: Background,
) -> None:
    finished = ahead.finish("own timeout")
    done, took = finished.done, finished.seconds

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1
    assert lines[0] == f"{no_broker(NOTHING_LISTENS)}; still trying until --timeout"
    assert lines[-1].startswith("error -32013: ")
    assert took >= OWN_TIMEOUT_S


def test_run_shows_console_output_and_a_clean_shutdown_is_quiet(ahead: Background) -> None:
    done = ahead.finish("run").done

    assert (done.returncode, done.stdout.strip()) == (0, "5")
    assert "summed 3 squares" in done.stderr
    assert "WARNING" not in done.stderr and "unreachable" not in done.stderr


@pytest.mark.parametrize("program", ["madrpc-broker", "madrpc-worker", "madrpc"])
def test_every_program_has_version(program: str) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / program), "--version"],
                          capture_output=True, text=True, timeout=scaled(30), check=False)

    assert done.returncode == 0
    assert done.stdout.strip().endswith(f"version {__version__} ({native_summary()})")


def test_the_top_level_help_cuts_no_command_summary() -> None:
    done, _ = madrpc("--help")

    commands = done.stdout.split("Commands:")[1].strip().splitlines()
    assert len(commands) == len([c for c in madrpc_cli.commands.values() if not c.hidden])
    assert not any(line.rstrip().endswith("...") for line in commands)


@pytest.mark.parametrize(("role", "signum", "status"), [
    ("broker", signal.SIGINT, 130), ("broker", signal.SIGTERM, 0),
    ("worker", signal.SIGINT, 130), ("worker", signal.SIGTERM, 0),
])
def test_servers_exit_130_on_ctrl_c_and_0_on_sigterm(
    spawn: Spawner, role: str, signum: int, status: int,
) -> None:
    endpoints = spawn.endpoints()
    broker = spawn.broker(endpoints)
    proc = broker if role == "broker" else spawn.worker(endpoints, SIMPLE_JS, 1)
    wait_for_workers(endpoints.frontend, 0 if role == "broker" else 1)

    proc.signal(signum)

    assert proc.wait(scaled(20)) == status


@pytest.mark.parametrize(("source", "says"), [
    ("madrpc.register('a', () => 1);\nconst x = 1;\nJSON.parse('{bad json');\n",
     "bad.js:3:6: SyntaxError: Expected property name"),
    ("madrpc.register('a', () => 1);\nmadrpc.register('a', () => 2);\n",
     'bad.js:2:8: Error: madrpc.register: "a" is already registered at bad.js:1:8 '
     "(again at bad.js:2:8); pass {replace: true} to replace it"),
    ("import x from './lib.js';\n", "bad.js:1:1: SyntaxError: Cannot use import statement "
     "outside a module: ES module syntax (import/export) is not supported"),
])
def test_a_script_that_fails_to_load_names_the_users_line(
    tmp_path: Path, source: str, says: str,
) -> None:
    (tmp_path / "bad.js").write_text(source)

    done, _ = madrpc("run", str(tmp_path / "bad.js"), "a")

    assert done.returncode == 1
    assert f"{tmp_path}/{says}" in done.stderr
    assert "Traceback" not in done.stderr


def test_scripts_have_the_standard_web_apis(tmp_path: Path) -> None:
    (tmp_path / "web.js").write_text("""madrpc.register('web', () => {
  const bytes = new TextEncoder().encode('héllo 🌍');
  queueMicrotask(() => {});
  return [new TextDecoder().decode(bytes), atob(btoa('hi')), crypto.randomUUID().length,
          structuredClone({a: [1]}), typeof performance.now(),
          crypto.getRandomValues(new Uint8Array(4)).length];
});
""")

    done, _ = madrpc("run", str(tmp_path / "web.js"), "web")

    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == ["héllo 🌍", "hi", 36, {"a": [1]}, "number", 4]
