"""ZeroMQ endpoints: which ones only this machine can reach. Pure."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["LOOPBACK_NAMES", "host_of", "is_private", "normalize"]

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
"""Host names taken as loopback without looking them up."""


def host_of(endpoint: str) -> str | None:
    """The host part of a ``tcp://`` endpoint (or of ``HOST:PORT``); None for others."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return None
    address = endpoint.removeprefix("tcp://")
    host, _, _port = address.rpartition(":")
    if ";" in host:   # tcp://source;destination: the bind side is the destination
        host = host.rpartition(";")[2]
    return host.strip("[]")


def is_private(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: ``ipc://``, ``inproc://`` and TCP
    on a loopback address. ``*``, ``0.0.0.0``, interface names and other addresses are
    public."""
    host = host_of(endpoint)
    if host is None:
        return True
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOST_NAME = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def normalize(text: str) -> str:
    """``text`` as a ZeroMQ endpoint: ``HOST:PORT`` is taken as ``tcp://HOST:PORT``.
    ValueError with one line saying what is wrong for anything else that is not a
    ``tcp://HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME`` endpoint."""
    value = text.strip()
    if value.startswith(("ipc://", "inproc://")):
        if value.split("://", 1)[1]:
            return value
        raise ValueError(f"{text!r} names no path")
    if "://" in value and not value.startswith("tcp://"):
        raise ValueError(f"{text!r}: use tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    address = value.removeprefix("tcp://")
    host, colon, port = address.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{text!r} is not an endpoint: give HOST:PORT (tcp://127.0.0.1:5555), "
                         "ipc://PATH or inproc://NAME")
    if not (port.isdigit() and 0 < int(port) < 65536) and port != "*":
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    bare = host.rpartition(";")[2].strip("[]")
    if not _HOST_NAME.match(bare):
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(f"{text!r}: {bare!r} is not a host name or address") from None
    return f"tcp://{address}"
