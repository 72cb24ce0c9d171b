"""Which endpoints only this machine can reach (madrpc.endpoints)."""

from __future__ import annotations

import pytest

from madrpc.endpoints import host_of, is_private


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
