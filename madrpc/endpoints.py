"""ZeroMQ endpoints: which ones only this machine can reach. Pure."""

from __future__ import annotations

import ipaddress

__all__ = ["LOOPBACK_NAMES", "host_of", "is_private"]

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
