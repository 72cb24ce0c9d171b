"""What the ``madrpc`` commands share: log options, signal handling, reading params,
printing results and errors, and the progress bar. Command-line code only."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import orjson

from . import config as cfg
from .endpoints import normalize
from .errors import MadrpcError, RpcError
from .logs import LOG_FORMATS
from .native_modules import summary as native_summary

__all__ = [
    "ENDPOINT", "NO_BROKER_NOTICE_S", "VERSION_MESSAGE", "Endpoint", "call_limit_options",
    "client_options", "error_object", "exit_130_on_ctrl_c", "exit_status", "log_options",
    "no_broker", "on_signals", "parse_params", "print_error", "print_result", "progress_bar",
    "quiet_on_broken_pipe",
]

log = logging.getLogger("madrpc.cli")

VERSION_MESSAGE = f"%(prog)s, version %(version)s ({native_summary()})"
"""What ``--version`` says: the version, and whether the request path runs compiled."""

LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def log_options(default_level: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The --log-level and --log-format options of a command."""
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text",
                            show_default=True, help="Log lines as text or as JSON objects.")(func)
        return click.option("--log-level", type=LOG_LEVELS, default=default_level,
                            show_default=True, help="Least severe log level shown.")(func)
    return decorate


class Endpoint(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    """A ZeroMQ endpoint; ``HOST:PORT`` means ``tcp://HOST:PORT``. Anything else is one
    line on stderr and exit status 2 (no usage text, no traceback)."""

    name = "ENDPOINT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        try:
            return normalize(str(value))
        except ValueError as exc:
            option = param.opts[0] if param is not None and param.opts else "endpoint"
            error = click.ClickException(f"{option}: {exc}")
            error.exit_code = 2  # type: ignore[misc]  # a class default in click 8.2 on
            raise error from None


ENDPOINT = Endpoint()


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--broker, --curve-secret and --server-key, with their environment variables."""
    for option in reversed([
        click.option("--broker", envvar="MADRPC_BROKER", default=cfg.DEFAULT_FRONTEND,
                     type=ENDPOINT,
                     show_default=True,
                     help="The broker's FRONTEND endpoint, the clients' port (its "
                          "--frontend; workers use the backend) [MADRPC_BROKER]."),
        click.option("--curve-secret", metavar="FILE", envvar="MADRPC_CURVE_SECRET",
                     default=None,
                     help="Our key pair when the broker has CURVE [MADRPC_CURVE_SECRET]."),
        click.option("--server-key", metavar="FILE", envvar="MADRPC_SERVER_KEY", default=None,
                     help="The broker's public key (.key) [MADRPC_SERVER_KEY]."),
    ]):
        func = option(func)
    return func


def call_limit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--cpu-limit and --max-memory: lower the worker's limits for these calls."""
    func = click.option("--max-memory", "max_memory_mb", type=click.IntRange(1), default=None,
                        help="Heap limit (MiB) for these calls, below the worker's.")(func)
    return click.option("--cpu-limit", "cpu_limit_s", type=click.FloatRange(min=0,
                        min_open=True), default=None,
                        help="Seconds of JavaScript these calls may use, below the "
                             "worker's limit.")(func)


@contextmanager
def exit_130_on_ctrl_c() -> Iterator[None]:
    """Ctrl-C (SIGINT) ends the command with status 130, as shells expect; the clients
    have cancelled what they started on the grid by then."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("cancelled", err=True)
        sys.exit(130)


@contextmanager
def quiet_on_broken_pipe() -> Iterator[None]:
    """Output that nobody reads any more (``madrpc call --stream ... | head``) ends the
    command quietly with status 141 (as a process killed by SIGPIPE), not a traceback;
    whatever the command started has been cancelled on the way out."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)   # the interpreter flushes stdout at exit
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)


def on_signals(stop: Callable[[bool], None]) -> dict[str, int]:
    """First SIGINT/SIGTERM: stop gracefully (drain). Second: stop now. Returns where the
    first signal's number is kept (``"signal"``; 0 for none), so that a server stopped by
    Ctrl-C can exit with 130 as shells expect."""
    count = {"n": 0, "signal": 0}

    def handler(signum: int, frame: Any) -> None:
        count["n"] += 1
        count["signal"] = count["signal"] or signum
        name = signal.Signals(signum).name
        if count["n"] == 1:
            log.info("%s: stopping (again to stop at once)", name)
            stop(True)
        else:
            stop(False)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return count


def exit_status(status: int, signals: dict[str, int]) -> int:
    """``status``, or 130 when Ctrl-C (SIGINT) stopped the server cleanly."""
    return 130 if status == 0 and signals["signal"] == signal.SIGINT else status


def parse_params(text: str | None) -> Any:
    if text is None:
        return None
    try:
        params = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="PARAMS_JSON") from exc
    if not isinstance(params, (list, dict)):
        raise click.BadParameter("must be a JSON array or object", param_hint="PARAMS_JSON")
    return params


def print_result(result: Any) -> None:
    click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


def error_object(error: MadrpcError) -> dict[str, Any]:
    """The JSON-RPC error object of a failed call (transport errors have no code)."""
    if not isinstance(error, RpcError):
        return {"message": str(error)}
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return body


NO_BROKER_NOTICE_S = 3.0
"""How long a command waits for any answer from the broker before it says none came."""


def no_broker(endpoint: str) -> str:
    """What to tell a user whose broker does not answer."""
    return (f"no broker answering at {endpoint} (is `madrpc broker` running there? clients "
            "connect to its frontend, port 5555 by default; with CURVE, check --server-key)")


def print_error(error: MadrpcError, as_json: bool = False) -> None:
    """A failed call on stderr: ``error CODE: message``, then a JavaScript stack one frame
    per line, then any other data as JSON; with ``as_json``, the JSON-RPC error object."""
    if not isinstance(error, RpcError):
        click.echo(f"error: {error}", err=True)
        return
    if as_json:
        document = {"error": error_object(error)}
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode(), err=True)
        return
    click.echo(f"error {error.code}: {error.message}", err=True)
    data = error.data
    if isinstance(data, dict) and isinstance(data.get("stack"), str):
        frames = data["stack"].splitlines()
        if frames and frames[0].strip() == error.message.strip():
            frames = frames[1:]
        for frame in frames:
            click.echo(f"  {frame.strip()}", err=True)
        data = {k: v for k, v in data.items() if k not in ("stack", "name", "message")}
    if data:
        click.echo(f"  data: {orjson.dumps(data).decode()}", err=True)


@contextmanager
def progress_bar(total: int | None, label: str) -> Iterator[Callable[[int], None] | None]:
    """A callback that advances click's progress bar on stderr (done/total, rate, ETA);
    None when stderr is not a terminal or the total is unknown."""
    if total is None or not sys.stderr.isatty():
        yield None
        return
    started = time.monotonic()
    done = 0

    def rate(_: object) -> str:
        elapsed = time.monotonic() - started
        return f"{done / elapsed:,.0f} calls/s" if elapsed > 0 else ""

    bar: Any
    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True,
        item_show_func=rate,
    ) as bar:
        def advance(n: int) -> None:
            nonlocal done
            done += n
            bar.update(n, done)

        yield advance
