"""CurveZMQ for MaDRPC: key files, who may connect in which role, and socket set-up.

Keys are pyzmq's own certificate files (:mod:`zmq.auth`): ``NAME.key`` holds a public
key, ``NAME.key_secret`` the pair. The broker has one key pair of its own and three
directories of allowed public keys, one per role:

* clients (the frontend: calls),
* workers (the backend: registering, answering),
* admins (the frontend too, and the management methods such as ``_drain``).

A key is valid only for its role: a client key cannot register a worker, a worker key
cannot call. Without a client directory any client may connect (its traffic is still
encrypted); workers are always checked. The ZAP authenticator (a thread of pyzmq's)
asks :class:`KeyRing` at each connection; the broker asks it again for each message,
so a key removed from its directory (and ``SIGHUP``) is refused at once, even on a
connection made before.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from .errors import ConfigError

__all__ = [
    "ADMIN", "BACKEND_DOMAIN", "CLIENT", "FRONTEND_DOMAIN", "WORKER", "ClientCurve", "Gatekeeper",
    "KeyPair", "KeyRing", "apply_client", "apply_server", "client_curve", "keygen",
    "load_keypair", "load_public_key",
]

log = logging.getLogger(__name__)

CLIENT = "client"
WORKER = "worker"
ADMIN = "admin"
FRONTEND_DOMAIN = "madrpc-frontend"
"""ZAP domain of the broker's frontend (clients and admins)."""
BACKEND_DOMAIN = "madrpc-backend"
"""ZAP domain of the broker's backend (workers)."""
Z85_KEY_LENGTH = 40


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes


def keygen(name: str, directory: str | os.PathLike[str] = ".", *,
           overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret`` (the pair, mode 0600)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    folder = Path(directory)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise ConfigError(f"{public} or {secret} exists already; choose another name")
    folder.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old_umask)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


def load_keypair(value: str | os.PathLike[str] | bytes) -> KeyPair:
    """Our own key pair, from a ``.key_secret`` file or a z85 secret key."""
    raw = _raw_key(value)
    if raw is not None:
        return KeyPair(zmq.curve_public(raw), raw)
    public, secret = _read_certificate(value)
    if secret is None:
        raise ConfigError(f"{os.fsdecode(value)} holds no secret key: use the .key_secret file")
    return KeyPair(public, secret)


def load_public_key(value: str | os.PathLike[str] | bytes) -> bytes:
    """A public key (z85), from a ``.key`` or ``.key_secret`` file or a z85 string."""
    raw = _raw_key(value)
    if raw is not None:
        return raw
    return _read_certificate(value)[0]


def _raw_key(value: str | os.PathLike[str] | bytes) -> bytes | None:
    """``value`` as a z85 key when it is one (and not the name of a file)."""
    if isinstance(value, bytes):
        text = value.decode("ascii", errors="replace")
    elif isinstance(value, str):
        text = value
    else:
        return None
    if len(text) == Z85_KEY_LENGTH and not os.path.exists(text):
        try:
            z85.decode(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        return text.encode("ascii")
    return None


def _read_certificate(path: str | os.PathLike[str] | bytes) -> tuple[bytes, bytes | None]:
    name = os.fsdecode(path)
    try:
        public, secret = zmq.auth.load_certificate(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key file {name}: {exc}") from exc
    if public is None:
        raise ConfigError(f"{name} is not a CURVE certificate (no public-key line)")
    return public, secret


@dataclass(frozen=True)
class ClientCurve:
    """What a connecting side (client, worker) needs: its pair and the broker's key."""

    keys: KeyPair
    server_key: bytes


def client_curve(curve_secret: Any, server_key: Any) -> ClientCurve | None:
    """Both or neither: ``curve_secret`` (our pair) and ``server_key`` (the broker's)."""
    if curve_secret is None and server_key is None:
        return None
    if curve_secret is None or server_key is None:
        raise ConfigError("CURVE needs both a secret key (--curve-secret) and the broker's "
                          "public key (--server-key)")
    return ClientCurve(load_keypair(curve_secret), load_public_key(server_key))


def apply_client(socket: zmq.Socket[Any], curve: ClientCurve) -> None:
    """Make ``socket`` (before it connects) a CURVE client of the broker."""
    socket.curve_secretkey = curve.keys.secret
    socket.curve_publickey = curve.keys.public
    socket.curve_serverkey = curve.server_key


def apply_server(socket: zmq.Socket[Any], keys: KeyPair, domain: str) -> None:
    """Make ``socket`` (before it binds) a CURVE server authenticated in ``domain``."""
    socket.zap_domain = domain.encode()
    socket.curve_server = True
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public


class KeyRing:
    """The allowed public keys of each role, re-read from their directories on
    :meth:`reload`. Safe to read from the authenticator's thread: each reload swaps in
    new sets."""

    def __init__(self, clients: set[bytes] | None, workers: set[bytes],
                 admins: set[bytes] | None = None) -> None:
        """Keys (z85) by role; None for clients lets any client in, for admins none."""
        self.dirs: dict[str, str | None] = {CLIENT: None, WORKER: None, ADMIN: None}
        self._keys: dict[str, frozenset[bytes] | None] = {}
        self.update(clients, workers, admins)

    def update(self, clients: set[bytes] | None, workers: set[bytes],
               admins: set[bytes] | None = None) -> None:
        """Swap in new key sets (what :meth:`reload` does with the directories' keys)."""
        self._keys = {CLIENT: _frozen(clients), WORKER: frozenset(workers),
                      ADMIN: _frozen(admins)}

    @classmethod
    def from_dirs(cls, client_dir: str | None, worker_dir: str,
                  admin_dir: str | None = None) -> KeyRing:
        """The keys in each role's directory (read again by :meth:`reload`)."""
        ring = cls(None, set())
        ring.dirs = {CLIENT: client_dir, WORKER: worker_dir, ADMIN: admin_dir}
        ring.reload()
        return ring

    def reload(self) -> None:
        """Read every role's directory again; ConfigError if one cannot be read."""
        keys: dict[str, frozenset[bytes] | None] = {}
        for role, directory in self.dirs.items():
            keys[role] = None if directory is None else _public_keys(directory)
        self._keys = keys
        log.info("CURVE keys: %s", ", ".join(
            f"{role}s {'any' if found is None else len(found)}" for role, found in keys.items()
        ))

    def allows(self, role: str, key: bytes | str | None) -> bool:
        """Whether ``key`` (z85) may act in ``role``; a role without a directory admits any
        key, except the worker and admin roles, which admit none."""
        if key is None:
            return False
        allowed = self._keys.get(role)
        if allowed is None:
            return role == CLIENT
        return (key.encode() if isinstance(key, str) else key) in allowed

    def frontend_role(self, key: bytes | str | None) -> str | None:
        """ADMIN or CLIENT for a key the frontend accepts now; None for one it does not."""
        if self.allows(ADMIN, key):
            return ADMIN
        return CLIENT if self.allows(CLIENT, key) else None

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's ZAP credentials provider: may ``key`` connect to ``domain``?"""
        if domain == BACKEND_DOMAIN:
            allowed = self.allows(WORKER, key)
        else:
            allowed = self.frontend_role(key) is not None
        if not allowed:
            log.debug("refused a CURVE key on %s: %s", domain, key.decode(errors="replace"))
        return allowed


def _frozen(keys: set[bytes] | None) -> frozenset[bytes] | None:
    return None if keys is None else frozenset(keys)


def _public_keys(directory: str) -> frozenset[bytes]:
    if not os.path.isdir(directory):
        raise ConfigError(f"key directory {directory} does not exist")
    try:
        return frozenset(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the keys in {directory}: {exc}") from exc


class Gatekeeper:
    """pyzmq's ZAP authenticator thread, asking one :class:`KeyRing` for both domains."""

    def __init__(self, context: zmq.Context[Any], ring: KeyRing) -> None:
        self.ring = ring
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger(__name__))
        self._lock = threading.Lock()

    def start(self) -> None:
        self._authenticator.start()
        for domain in (FRONTEND_DOMAIN, BACKEND_DOMAIN):
            self._authenticator.configure_curve_callback(domain, self.ring)

    def stop(self) -> None:
        with self._lock:
            if self._authenticator.is_alive():
                self._authenticator.stop()
