"""``madrpc gateway``: JSON-RPC over HTTP and the web dashboard (see :mod:`madrpc.gateway`).
Each option is named after the :class:`~madrpc.config.GatewayConfig` field it sets."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import click

from . import config as cfg
from .cli_support import ENDPOINT, log_options
from .errors import ConfigError
from .logs import setup_logging

__all__ = ["Listen", "gateway_command", "parse_listen"]

G = cfg.GatewayConfig


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port); raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host.strip("[]"), int(port)


class Listen(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_listen(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command("gateway", short_help="Serve JSON-RPC over HTTP and a web dashboard.")
@click.option("--broker", default=cfg.DEFAULT_FRONTEND, show_default=True, type=ENDPOINT,
              envvar="MADRPC_BROKER", show_envvar=True,
              help="The broker's FRONTEND endpoint, the clients' port.")
@click.option("--listen", default=cfg.DEFAULT_GATEWAY_LISTEN, show_default=True,
              type=Listen(), envvar="MADRPC_GATEWAY_LISTEN", show_envvar=True,
              help="Where to serve HTTP (loopback only unless --api-keys is given).")
@click.option("--api-keys", metavar="FILE", default=None, envvar="MADRPC_API_KEYS",
              show_envvar=True,
              help="Keys callers must present (X-API-Key or Authorization: Bearer), one per "
                   "line; re-read when it changes.")
@click.option("--insecure", is_flag=True,
              help="Listen beyond loopback without --api-keys (anyone may call).")
@click.option("--tls-cert", metavar="FILE", default=None, envvar="MADRPC_TLS_CERT",
              show_envvar=True, help="Serve HTTPS with this certificate chain (PEM).")
@click.option("--tls-key", metavar="FILE", default=None, envvar="MADRPC_TLS_KEY",
              show_envvar=True, help="The private key of --tls-cert (PEM).")
@click.option("--curve-secret", metavar="FILE", envvar="MADRPC_CURVE_SECRET", default=None,
              help="The gateway's client key pair when the broker has CURVE.")
@click.option("--server-key", metavar="FILE", envvar="MADRPC_SERVER_KEY", default=None,
              help="The broker's public key (.key).")
@click.option("--cors-origin", "cors_origins", metavar="ORIGIN", multiple=True,
              help="Let pages from ORIGIN (e.g. https://app.example; * for any) call from a "
                   "browser; repeat for more. [default: same origin only]")
@click.option("--max-body-bytes", type=click.IntRange(1), default=G.max_body_bytes,
              show_default=True, help="Largest request body (413 beyond).")
@click.option("--max-in-flight-per-connection", type=click.IntRange(1),
              default=G.max_in_flight_per_connection, show_default=True,
              help="Calls one HTTP connection may have in the grid (429 beyond).")
@click.option("--max-in-flight", type=click.IntRange(1), default=G.max_in_flight,
              show_default=True, help="Calls all callers may have in the grid (429 beyond).")
@click.option("--read-timeout", "read_timeout_s", type=click.FloatRange(0, min_open=True),
              default=G.read_timeout_s, show_default=True,
              help="Seconds a caller has to send its body (408 beyond).")
@click.option("--default-timeout", "default_timeout_s", type=click.FloatRange(0, min_open=True),
              default=G.default_timeout_s, show_default=True,
              help="Deadline of a call that names none (the broker's --default-timeout).")
@click.option("--keepalive-timeout", "keepalive_timeout_s",
              type=click.FloatRange(0, min_open=True), default=G.keepalive_timeout_s,
              show_default=True,
              help="Seconds an idle connection stays open (also the time a caller has to "
                   "send its headers).")
@log_options("info")
def gateway_command(listen: tuple[str, int], log_level: str, log_format: str,
                    **options: Any) -> None:
    """Serve JSON-RPC 2.0 over HTTP (POST / or /rpc) and a web dashboard (GET /), as a
    client of the broker at --broker. Also /metrics (Prometheus) and /healthz.

    SIGINT/SIGTERM stop it (requests in progress get a few seconds to finish).
    """
    from .gateway import Gateway

    setup_logging(log_level, log_format)
    host, port = listen
    try:
        gateway = Gateway(cfg.GatewayConfig(host=host, port=port, **options))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    received: list[int] = []

    async def serve() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            received.append(signum)
            stopped.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        await gateway.serve(stopped)

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from exc
    sys.exit(130 if received[:1] == [signal.SIGINT] else 0)
