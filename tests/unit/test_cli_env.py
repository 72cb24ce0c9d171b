"""Every endpoint and key option can come from the environment, and --help says which
variable; the worker's --broker (the backend) and the clients' (the frontend) say so."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from madrpc.cli import main

ENDPOINT_AND_KEY_OPTIONS = {
    "broker": {"frontend": "MADRPC_FRONTEND", "backend": "MADRPC_BACKEND",
               "curve_secret": "MADRPC_BROKER_SECRET", "client_keys": "MADRPC_CLIENT_KEYS",
               "worker_keys": "MADRPC_WORKER_KEYS", "admin_keys": "MADRPC_ADMIN_KEYS",
               "state_dir": "MADRPC_STATE_DIR", "metrics_http": "MADRPC_METRICS_HTTP"},
    "worker": {"broker": "MADRPC_BACKEND", "curve_secret": "MADRPC_WORKER_SECRET",
               "server_key": "MADRPC_SERVER_KEY"},
    **{command: {"broker": "MADRPC_BROKER", "curve_secret": "MADRPC_CURVE_SECRET",
                 "server_key": "MADRPC_SERVER_KEY"}
       for command in ("call", "map", "top", "drain", "deploy")},
}


ENDPOINTS = {"MADRPC_FRONTEND", "MADRPC_BACKEND", "MADRPC_BROKER"}


def value_of(variable: str) -> str:
    """A value for ``variable`` that its option takes as it is."""
    return f"ipc:///tmp/{variable}" if variable in ENDPOINTS else f"value-of-{variable}"


def command(name: str) -> click.Command:
    found = main.commands[name]
    return found


@pytest.mark.parametrize("name", sorted(ENDPOINT_AND_KEY_OPTIONS))
def test_each_endpoint_and_key_option_is_read_from_its_environment_variable(
    name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = ENDPOINT_AND_KEY_OPTIONS[name]
    for variable in options.values():
        monkeypatch.setenv(variable, value_of(variable))
    args = {"call": ["m"], "drain": ["w"], "map": ["m"]}.get(name, [])

    context = command(name).make_context(name, list(args), resilient_parsing=True)

    for param, variable in options.items():
        assert context.params[param] == value_of(variable), param


@pytest.mark.parametrize("name", sorted(ENDPOINT_AND_KEY_OPTIONS))
def test_help_names_each_variable(name: str) -> None:
    text = CliRunner().invoke(main, [name, "--help"], terminal_width=200).output
    flat = " ".join(text.split())

    for variable in ENDPOINT_AND_KEY_OPTIONS[name].values():
        assert variable in flat


def test_the_two_brokers_options_say_which_port_they_mean() -> None:
    worker = " ".join(CliRunner().invoke(main, ["worker", "--help"]).output.split())
    client = " ".join(CliRunner().invoke(main, ["call", "--help"]).output.split())

    assert "BACKEND endpoint, the workers' port" in worker
    assert "FRONTEND endpoint, the clients' port" in client
