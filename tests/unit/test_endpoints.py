"""Which endpoints only this machine can reach (madrpc.endpoints)."""

from __future__ import annotations

import pytest

from madrpc.endpoints import host_of, is_private, normalize


@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:5555", "tcp://127.8.0.1:1", "tcp://localhost:5555", "tcp://[::1]:5555",
    "ipc:///tmp/x", "inproc://grid", "127.0.0.1:9100", "localhost:9100",
])
def test_loopback_ipc_and_inproc_endpoints_are_private(endpoint: str) -> None:
    assert is_private(endpoint)


@pytest.mark.parametrize("endpoint", [
    "tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://198.18.0.2:5555", "tcp://eth0:5555",
    "tcp://[::]:5555", "tcp://example.com:5555", "0.0.0.0:9100",
])
def test_wildcards_interfaces_and_other_addresses_are_public(endpoint: str) -> None:
    assert not is_private(endpoint)


def test_the_host_of_a_tcp_endpoint_with_a_source_is_its_destination() -> None:
    assert host_of("tcp://10.0.0.1:0;127.0.0.1:5555") == "127.0.0.1"
    assert host_of("ipc:///tmp/x") is None


# ---------------------------------------------------------------- normalize (first run)

@pytest.mark.parametrize(("given", "endpoint"), [
    ("127.0.0.1:5555", "tcp://127.0.0.1:5555"),
    ("localhost:5556", "tcp://localhost:5556"),
    ("tcp://*:5555", "tcp://*:5555"),
    ("[::1]:5555", "tcp://[::1]:5555"),
    (" ipc:///tmp/x ", "ipc:///tmp/x"),
    ("inproc://grid", "inproc://grid"),
])
def test_host_port_is_tcp_and_endpoints_pass_through(given: str, endpoint: str) -> None:
    assert normalize(given) == endpoint


@pytest.mark.parametrize(("given", "says"), [
    ("5555", "is not an endpoint"),
    ("127.0.0.1:abc", "port must be a number"),
    ("127.0.0.1:0", "port must be a number"),
    ("http://host:80", "use tcp://HOST:PORT"),
    ("bad host:5", "is not a host name"),
    ("ipc://", "names no path"),
])
def test_anything_else_gets_one_line_saying_what_is_wrong(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        normalize(given)
    assert "\n" not in str(caught.value)
