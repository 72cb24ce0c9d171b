"""Private ipc endpoints: socket files in directories only their user can enter.

Every test works under a short directory of its own (``parent``), used as the temporary
directory and as the fallback for long ones, and removed afterwards with whatever is in
it; the processes a test starts are stopped by PID whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from madrpc import sockets
from madrpc.errors import TransportError
from madrpc.sockets import (
    SUN_PATH_MAX,
    bind_private,
    private_endpoint,
    process_start,
    remove_private_directory,
    remove_stale_private_directories,
)

NOBODY = 65534


@pytest.fixture
def parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short directory standing in for the temporary directory (and its fallback)."""
    path = Path(tempfile.mkdtemp(prefix="mdr-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    monkeypatch.setattr(sockets, "SHORT_TMP", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def user_base(parent: Path) -> Path:
    return parent / f"madrpc-{os.getuid()}"


@contextlib.contextmanager
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A Python process that runs until its stdin is closed; killed and reaped at the end."""
    popen = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        yield popen
    finally:
        popen.kill()
        popen.wait()
        if popen.stdin is not None:
            popen.stdin.close()


def leftover(base: Path, pid: int, start: str | None) -> Path:
    """A directory as a killed process would leave it: named by its creator, with a file."""
    directory = base / f"madrpc-{pid}-{start}-abcd_123"
    directory.mkdir(mode=0o700)
    (directory / "engines").write_bytes(b"")
    return directory


def test_the_endpoint_is_a_socket_file_in_a_0700_directory_of_ours(parent: Path) -> None:
    endpoint, directory = private_endpoint("frontend")
    try:
        info = os.lstat(directory)
        base = os.lstat(user_base(parent))

        assert endpoint == f"ipc://{directory}/frontend"
        assert Path(directory).parent == user_base(parent)
        assert Path(directory).name.startswith(f"madrpc-{os.getpid()}-")
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert stat.S_ISDIR(base.st_mode) and stat.S_IMODE(base.st_mode) == 0o700
        assert info.st_uid == base.st_uid == os.getuid()
    finally:
        remove_private_directory(directory)

    assert not os.path.exists(directory)


def test_the_socket_path_fits_in_sun_path_and_binds(parent: Path) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    try:
        endpoint, directory = bind_private(socket, "engines")
        try:
            path = endpoint.removeprefix("ipc://")

            assert len(os.fsencode(path)) <= SUN_PATH_MAX
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
        finally:
            remove_private_directory(directory)
    finally:
        socket.close(linger=0)
        context.term()


def test_a_failed_bind_leaves_no_directory(parent: Path) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.close()
    try:
        with pytest.raises(zmq.ZMQError):
            bind_private(socket, "engines")
    finally:
        context.term()

    assert list(user_base(parent).iterdir()) == []


def test_a_second_call_gives_a_different_endpoint(parent: Path) -> None:
    first, first_dir = private_endpoint("engines")
    try:
        second, second_dir = private_endpoint("engines")
        remove_private_directory(second_dir)
    finally:
        remove_private_directory(first_dir)

    assert first != second and first_dir != second_dir


def test_a_long_temporary_directory_falls_back_to_a_short_one(
    parent: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    long = parent.joinpath(*["d" * 50] * 3)
    long.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(long))

    endpoint, directory = private_endpoint("frontend")
    remove_private_directory(directory)

    assert Path(directory).parent == user_base(parent)
    assert len(os.fsencode(endpoint.removeprefix("ipc://"))) <= SUN_PATH_MAX
    assert not (long / f"madrpc-{os.getuid()}").exists()


def test_a_name_too_long_for_any_directory_is_refused(parent: Path) -> None:
    with pytest.raises(TransportError, match="TMPDIR"):
        private_endpoint("n" * SUN_PATH_MAX)


def test_stale_directories_are_removed_and_live_ones_kept(parent: Path) -> None:
    mine, my_dir = private_endpoint("frontend")
    base = user_base(parent)
    outside = parent / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    with child() as dead, child() as zombie, child() as live:
        dead_start, zombie_start = process_start(dead.pid), process_start(zombie.pid)
        live_start = process_start(live.pid)
        for ended in (dead, zombie):
            assert ended.stdin is not None
            ended.stdin.close()
        dead.wait()
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped
        stale = [leftover(base, dead.pid, dead_start),
                 leftover(base, zombie.pid, zombie_start),
                 leftover(base, live.pid, "1")]   # the pid now names another process
        kept = [leftover(base, live.pid, live_start), base / "not-an-endpoint"]
        kept[1].mkdir()
        link = base / f"madrpc-{dead.pid}-{dead_start}-link_123"
        link.symlink_to(outside)

        endpoint, directory = private_endpoint("backend")
        remove_private_directory(directory)

        assert [path for path in stale if path.exists()] == []
        assert [path for path in kept if not path.exists()] == []
        assert os.path.exists(my_dir) and endpoint != mine
        assert (outside / "precious").read_bytes() == b"keep me"
    remove_private_directory(my_dir)


def test_a_sweep_removes_what_killed_processes_left_and_keeps_the_rest(parent: Path) -> None:
    mine, my_dir = private_endpoint("frontend")
    base = user_base(parent)
    with child() as dead, child() as live:
        dead_start, live_start = process_start(dead.pid), process_start(live.pid)
        dead.kill()
        dead.wait()
        stale = leftover(base, dead.pid, dead_start)
        kept = leftover(base, live.pid, live_start)

        remove_stale_private_directories()

        assert not stale.exists()
        assert kept.exists() and os.path.exists(my_dir)
    remove_private_directory(my_dir)


def test_a_sweep_without_a_user_base_makes_none(parent: Path) -> None:
    remove_stale_private_directories()

    assert not user_base(parent).exists()


def test_process_start_names_a_live_process_and_none_for_a_gone_one() -> None:
    with child() as popen:
        start = process_start(popen.pid)

        assert start is not None and start == process_start(popen.pid)
        assert start != process_start(os.getpid())
    assert process_start(popen.pid) is None


def test_a_symlinked_base_is_refused(parent: Path) -> None:
    elsewhere = parent / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    user_base(parent).symlink_to(elsewhere)

    with pytest.raises(TransportError, match="symbolic link"):
        private_endpoint("frontend")
    assert list(elsewhere.iterdir()) == []


def test_a_base_others_may_enter_is_refused(parent: Path) -> None:
    user_base(parent).mkdir()
    user_base(parent).chmod(0o755)

    with pytest.raises(TransportError, match="0755"):
        private_endpoint("frontend")
    assert list(user_base(parent).iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a directory another "
                                              "user owns")
def test_a_base_owned_by_another_user_is_refused(parent: Path) -> None:
    user_base(parent).mkdir(mode=0o700)
    os.chown(user_base(parent), NOBODY, NOBODY)

    with pytest.raises(TransportError, match=f"belongs to uid {NOBODY}"):
        private_endpoint("frontend")
    assert list(user_base(parent).iterdir()) == []
