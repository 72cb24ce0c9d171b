"""The local shortcut's names (pure): which TCP endpoints offer one, which look for one."""

from __future__ import annotations

import pytest

from madrpc.shortcut import PREFIX, bind_name, connect_name


@pytest.mark.parametrize("bound", ["tcp://127.0.0.1:5555", "tcp://0.0.0.0:5555",
                                   "tcp://*:5555", "tcp://localhost:5555"])
def test_a_port_on_loopback_or_every_interface_offers_a_shortcut_named_by_its_port(
        bound: str) -> None:
    assert bind_name(bound) == f"{PREFIX}127.0.0.1-5555"


@pytest.mark.parametrize("bound", [
    "tcp://198.18.0.1:5555",        # loopback connections could not reach it over TCP either
    "tcp://127.0.0.2:5555",         # another loopback address: its port may be taken twice
    "tcp://[::1]:5555", "tcp://eth0:5555", "tcp://127.0.0.1:*",
    "ipc:///tmp/broker", "ipc://@broker", "inproc://broker",
    "tcp://127.0.0.1;198.18.0.1:5555",
])
def test_other_endpoints_offer_none(bound: str) -> None:
    assert bind_name(bound) is None


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:6000", "tcp://localhost:6000",
                                      "tcp://LOCALHOST:6000"])
def test_a_connector_to_loopback_looks_for_the_shortcut_of_that_port(endpoint: str) -> None:
    assert connect_name(endpoint) == f"{PREFIX}127.0.0.1-6000"


@pytest.mark.parametrize("endpoint", ["tcp://198.18.0.1:6000", "tcp://broker.example:6000",
                                      "tcp://0.0.0.0:6000", "tcp://[::1]:6000",
                                      "ipc:///tmp/broker", "inproc://x"])
def test_a_connector_to_anything_else_uses_its_endpoint_as_given(endpoint: str) -> None:
    assert connect_name(endpoint) is None
