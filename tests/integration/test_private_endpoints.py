"""Private endpoints keep other local users out, and leave no directories behind.

A LocalGrid listens on ``ipc://`` socket files in directories only their user can enter
(a worker's links to its engines are socket pairs, with no path at all). Here another
user (uid 65534, "nobody") tries to connect to all of them, and to anything named madrpc
that ``/proc/net/unix`` shows it, with nothing but the standard library's ``socket``
module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grid_support import SCRIPTS, SIMPLE_JS, Proc, Spawner, scaled, wait_until

from madrpc import LocalGrid, WorkerStartError
from madrpc.sockets import private_endpoint, remove_private_directory

NOBODY = 65534
AS_NOBODY: dict[str, Any] = {"user": NOBODY, "group": NOBODY, "extra_groups": [],
                             "cwd": "/", "env": {}}

ATTACKER = r"""
import errno, json, socket, sys

def connect(path):
    address = "\0" + path[1:] if path.startswith("@") else path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
        return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
    finally:
        sock.close()

with open("/proc/net/unix") as table:
    rows = [line.split() for line in table.read().splitlines()[1:]]
visible = sorted({row[7] for row in rows if len(row) > 7 and "madrpc" in row[7]})
print(json.dumps({"targets": {path: connect(path) for path in sys.argv[1:]},
                  "visible": {path: connect(path) for path in visible}}))
"""


def python_for_nobody() -> str | None:
    """An interpreter uid 65534 may run (the venv's may sit in a directory it cannot enter)."""
    candidates = [sys.executable, getattr(sys, "_base_executable", None),
                  shutil.which("python3"), "/usr/bin/python3"]
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            done = subprocess.run([candidate, "-I", "-c", "pass"], capture_output=True,
                                  timeout=scaled(30), **AS_NOBODY)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return candidate
    return None


def attack(python: str, paths: list[str]) -> dict[str, dict[str, str]]:
    """Run the attacker as nobody; what each connect attempt gave (an errno name)."""
    popen = subprocess.Popen([python, "-I", "-c", ATTACKER, *paths], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, **AS_NOBODY)
    try:
        out, err = popen.communicate(timeout=scaled(30))
    finally:
        popen.kill()
        popen.wait()
    assert popen.returncode == 0, err.decode(errors="replace")
    result: dict[str, dict[str, str]] = json.loads(out)
    return result


def unix_sockets() -> list[str]:
    """The paths in /proc/net/unix (abstract ones start with '@')."""
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table.read().splitlines()[1:]]
    return [row[7] for row in rows if len(row) > 7]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for a child's TMPDIR, removed with everything in it."""
    path = Path(tempfile.mkdtemp(prefix="mdr-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def local_grid() -> Iterator[LocalGrid]:
    grid = LocalGrid(str(SIMPLE_JS), contexts=1)
    try:
        yield grid
    finally:
        grid.close()


def madrpc(spawn: Spawner, tmpdir: Path, *args: str, name: str) -> Proc:
    """``madrpc ARGS`` with TMPDIR set (``env`` execs it: the pid is madrpc's own)."""
    proc = Proc(["env", f"TMPDIR={tmpdir}", sys.executable, "-m", "madrpc.cli", *args],
                spawn.log_dir, name)
    spawn.procs.append(proc)
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/unix")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as uid 65534")
def test_another_user_cannot_reach_a_local_grid_or_its_engines() -> None:
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    with local_grid() as grid:
        paths = [endpoint.removeprefix("ipc://") for endpoint in (grid.frontend, grid.backend)]
        bundles = grid.worker.pool.directory   # engines' links are socket pairs: no path
        client = grid.client(timeout_s=scaled(10))
        assert client.call("add", [1, 2]) == 3

        seen = attack(python, paths)

        assert seen["targets"] == {path: "EACCES" for path in paths}
        ours = f"madrpc-{os.getpid()}-"   # (other people's grids may be running too)
        assert {path: result for path, result in seen["visible"].items()
                if ours in path and result not in ("EACCES", "ENOENT")} == {}
        listed = unix_sockets()
        assert set(paths) <= set(listed)
        assert [path for path in listed if path.startswith(bundles)] == []
        assert stat.S_IMODE(os.lstat(bundles).st_mode) == 0o700
        assert [path for path in listed if path.startswith(f"@{ours}")] == []
        for path in paths:
            directory = os.lstat(os.path.dirname(path))
            assert stat.S_IMODE(directory.st_mode) == 0o700 and directory.st_uid == 0
        assert client.call("add", [2, 3]) == 5
    assert [path for path in paths if os.path.exists(os.path.dirname(path))] == []


def test_madrpc_run_leaves_no_directory_behind(spawn: Spawner, short_tmp: Path) -> None:
    run = madrpc(spawn, short_tmp, "run", str(SIMPLE_JS), "add", "[1,2]", "--contexts", "1",
                 name="run")

    assert run.wait(60) == 0, run.stderr()
    assert run.stdout().strip() == "3"
    assert [p.name for p in short_tmp.iterdir()] == [f"madrpc-{os.getuid()}"]
    assert list((short_tmp / f"madrpc-{os.getuid()}").iterdir()) == []


def test_a_local_grid_that_cannot_start_leaves_no_directory_behind(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))

    with pytest.raises(WorkerStartError):
        LocalGrid(str(SCRIPTS / "broken.js"), contexts=1)

    assert list((short_tmp / f"madrpc-{os.getuid()}").iterdir()) == []


def test_a_killed_workers_directory_goes_with_the_next_private_endpoint(
    spawn: Spawner, short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = short_tmp / f"madrpc-{os.getuid()}"
    worker = madrpc(spawn, short_tmp, "worker", "--script", str(SIMPLE_JS), "--contexts", "1",
                    "--broker", spawn.endpoints().backend, name="worker")

    def bundle_file() -> Path | None:
        found = base.glob(f"madrpc-{worker.pid}-*/script-*.json") if base.exists() else []
        return next(iter(found), None)

    left = wait_until(bundle_file, 30, message="the worker's script bundle file").parent
    worker.kill_group()   # SIGKILL, and reaped

    assert left.exists()

    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    _, directory = private_endpoint("probe")
    remove_private_directory(directory)

    assert not left.exists()
    assert list(base.iterdir()) == []
