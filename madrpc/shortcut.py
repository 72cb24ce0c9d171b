"""The local shortcut: peers on the broker's own machine skip TCP.

A broker whose frontend or backend is a TCP port on loopback or on every interface
(``tcp://127.0.0.1:5555``, ``tcp://*:5555``) also binds that socket to a Unix socket in
Linux's abstract namespace, named after the port (``ipc://@madrpc-tcp-127.0.0.1-5555``).
A client, worker or gateway told to connect to ``tcp://127.0.0.1:5555`` (or
``localhost``) connects there instead when a broker offers it. Over a Unix socket a
message skips the kernel's TCP stack: a lone trivial call took ~0.9x its time over TCP
loopback (docs/performance.md, ninth round).

Nothing else changes. It is the same ZeroMQ socket, so CURVE and the key checks apply to
it exactly as to the TCP port, and nobody can reach it who could not reach the TCP port:
an abstract socket belongs to its network namespace, the same scope as loopback, and has
no file to leave behind or to protect. The name carries the address, so a broker on
``127.0.0.1`` never answers for one elsewhere. ``madrpc broker --no-local-shortcut``
(``BrokerConfig.local_shortcut``) turns it off; a connector whose broker offers none
(another machine, an older broker, another operating system) uses TCP as given.

:func:`bind_name` and :func:`connect_name` are the pure part; :func:`offer` and
:func:`preferred_endpoint` touch sockets.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any, Final

import zmq

from .endpoints import host_of

__all__ = ["PREFIX", "PROBE_TIMEOUT_S", "bind_name", "connect_name", "offer",
           "preferred_endpoint", "supported"]

log = logging.getLogger(__name__)

PREFIX: Final = "madrpc-tcp-"
"""Every shortcut's name starts with this, then ``<address>-<port>``."""
PROBE_TIMEOUT_S: Final = 0.2
"""How long a connector waits to learn whether a broker offers the shortcut (a local
connect: it answers in microseconds, or is refused at once)."""
_LOOPBACK: Final = "127.0.0.1"
_EVERY_INTERFACE: Final = frozenset({"*", "0.0.0.0"})
_LOOPBACK_NAMES: Final = frozenset({"127.0.0.1", "localhost"})


def supported() -> bool:
    """Abstract Unix sockets are Linux's."""
    return sys.platform.startswith("linux")


def _split(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of ``tcp://HOST:PORT`` with a numeric port; None for anything else."""
    host = host_of(endpoint) if endpoint.startswith("tcp://") else None
    port = endpoint.rpartition(":")[2]
    if host is None or not port.isdigit():
        return None
    return host.lower(), int(port)


def _name(port: int) -> str:
    return f"{PREFIX}{_LOOPBACK}-{port}"


def bind_name(bound: str) -> str | None:
    """The shortcut a socket bound to ``bound`` (its real endpoint, the port resolved)
    offers: one for a TCP port on 127.0.0.1 or on every interface, None otherwise (another
    address is one that loopback connections cannot reach either)."""
    parts = _split(bound)
    if parts is None or parts[0] not in _EVERY_INTERFACE | _LOOPBACK_NAMES:
        return None
    return _name(parts[1])


def connect_name(endpoint: str) -> str | None:
    """The shortcut to look for when connecting to ``endpoint``: one for a TCP port on
    127.0.0.1 or ``localhost``, None otherwise."""
    parts = _split(endpoint)
    if parts is None or parts[0] not in _LOOPBACK_NAMES:
        return None
    return _name(parts[1])


def offer(sock: zmq.Socket[Any]) -> str | None:
    """Also bind ``sock`` (just bound to a TCP endpoint) to its shortcut; the shortcut's
    endpoint, or None where there is none to offer or its name is taken (another process
    on this machine offers it: then this socket is reached over TCP only)."""
    if not supported():
        return None
    bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    name = bind_name(bound)
    if name is None:
        return None
    endpoint = f"ipc://@{name}"
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        log.warning("no local shortcut for %s: %s is taken (%s)", bound, endpoint, exc)
        return None
    log.debug("local shortcut for %s: %s", bound, endpoint)
    return endpoint


def preferred_endpoint(endpoint: str) -> str:
    """Where to connect for ``endpoint``: its shortcut when a broker on this machine
    offers one, else ``endpoint`` itself."""
    name = connect_name(endpoint) if supported() else None
    if name is None:
        return endpoint
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect("\0" + name)
    except OSError:   # nobody offers it (refused), or it did not answer in time
        return endpoint
    finally:
        probe.close()
    return f"ipc://@{name}"
