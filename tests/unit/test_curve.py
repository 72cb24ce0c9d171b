"""CURVE keys and roles (madrpc.curve): key files, raw keys, the key ring by role."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zmq
import zmq.auth

from madrpc.curve import (
    ADMIN,
    BACKEND_DOMAIN,
    CLIENT,
    FRONTEND_DOMAIN,
    WORKER,
    KeyRing,
    client_curve,
    keygen,
    load_keypair,
    load_public_key,
)
from madrpc.errors import ConfigError


def test_keygen_writes_a_public_file_and_a_private_pair(tmp_path: Path) -> None:
    public, secret = keygen("alice", tmp_path / "keys")
    pair = load_keypair(secret)

    assert (public.name, secret.name) == ("alice.key", "alice.key_secret")
    assert load_public_key(public) == pair.public == zmq.curve_public(pair.secret)
    assert os.stat(secret).st_mode & 0o077 == 0 and os.stat(public).st_mode & 0o044


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden"])
def test_keygen_refuses_names_that_are_not_plain_file_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        keygen(name, tmp_path)


def test_keygen_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    keygen("bob", tmp_path)
    with pytest.raises(ConfigError, match="exists already"):
        keygen("bob", tmp_path)
    keygen("bob", tmp_path, overwrite=True)


def test_raw_z85_keys_are_taken_as_keys_not_file_names() -> None:
    public, secret = zmq.curve_keypair()

    assert load_keypair(secret.decode()).public == public
    assert load_public_key(public) == public


def test_a_public_key_file_is_not_a_pair(tmp_path: Path) -> None:
    public, _ = keygen("carol", tmp_path)
    with pytest.raises(ConfigError, match="no secret key"):
        load_keypair(public)


def test_an_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk.key").write_text("not a certificate\n")
    with pytest.raises(ConfigError):
        load_public_key(tmp_path / "junk.key")
    with pytest.raises(ConfigError, match="cannot read"):
        load_keypair(tmp_path / "missing.key_secret")


def test_client_curve_wants_both_keys_or_neither(tmp_path: Path) -> None:
    _, secret = keygen("dave", tmp_path)
    server, _ = keygen("server", tmp_path)

    assert client_curve(None, None) is None
    assert client_curve(secret, server) is not None
    for half in ((secret, None), (None, server)):
        with pytest.raises(ConfigError, match="both"):
            client_curve(*half)


def test_a_key_is_valid_only_for_its_role() -> None:
    ring = KeyRing({b"c"}, {b"w"}, {b"a"})

    assert [ring.allows(role, b"c") for role in (CLIENT, WORKER, ADMIN)] == [True, False, False]
    assert [ring.allows(role, b"w") for role in (CLIENT, WORKER, ADMIN)] == [False, True, False]
    assert (ring.frontend_role(b"a"), ring.frontend_role(b"c"), ring.frontend_role(b"w")) == (
        ADMIN, CLIENT, None)
    assert ring.callback(BACKEND_DOMAIN, b"w") and not ring.callback(BACKEND_DOMAIN, b"c")
    assert ring.callback(FRONTEND_DOMAIN, b"a") and not ring.callback(FRONTEND_DOMAIN, b"w")


def test_without_a_client_directory_any_client_key_may_call_but_none_is_admin() -> None:
    ring = KeyRing(None, {b"w"})

    assert ring.frontend_role(b"anyone") == CLIENT and ring.frontend_role(None) is None
    assert not ring.allows(ADMIN, b"anyone") and not ring.allows(WORKER, b"anyone")


def test_a_key_ring_reads_its_directories_again_on_reload(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    public, _ = keygen("w1", workers)
    key = load_public_key(public)
    ring = KeyRing.from_dirs(None, str(workers))
    assert ring.allows(WORKER, key)

    public.unlink()
    ring.reload()
    assert not ring.allows(WORKER, key)


def test_a_missing_key_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        KeyRing.from_dirs(None, str(tmp_path / "nowhere"))
