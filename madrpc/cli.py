"""The ``madrpc`` command (click): the grid's servers (:mod:`madrpc.cli_servers`) and the
commands that use a grid: call, map, run, top, drain, deploy, keygen.

Client commands reach the broker at ``--broker`` (``MADRPC_BROKER``) and, when it has
CURVE, with ``--curve-secret`` (``MADRPC_CURVE_SECRET``) and ``--server-key``
(``MADRPC_SERVER_KEY``)."""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import click
import orjson

from . import config as cfg
from .cli_deploy import deploy_command
from .cli_gateway import gateway_command
from .cli_servers import broker_command, worker_command
from .cli_support import (
    NO_BROKER_NOTICE_S,
    VERSION_MESSAGE,
    call_limit_options,
    client_options,
    error_object,
    exit_130_on_ctrl_c,
    log_options,
    no_broker,
    parse_params,
    print_error,
    print_result,
    progress_bar,
    quiet_on_broken_pipe,
)
from .errors import MadrpcError, RpcTimeoutError
from .jsonrpc import MAX_STREAM_WINDOW
from .logs import setup_logging

__all__ = ["broker_main", "main", "worker_main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="madrpc", message=VERSION_MESSAGE)
def main() -> None:
    """MaDRPC: run JavaScript functions across cores and machines over ZeroMQ."""


# ------------------------------------------------------------------ call / run

@click.command("call", short_help="Call METHOD on a running grid and print the JSON result.")
@click.argument("method")
@click.argument("params_json", required=False)
@client_options
@click.option("--timeout", type=float, default=None,
              help="Seconds to wait for the result (retries included); with --stream, for "
                   "the whole stream. Given, the call keeps trying while no broker answers "
                   "(saying so); not given, it gives up after 3 s of silence.  [default: 60]")
@click.option("--stream", is_flag=True,
              help="METHOD is a generator: print each item as a JSON line as it arrives.")
@click.option("--window", type=click.IntRange(1, MAX_STREAM_WINDOW), default=None,
              help="With --stream: items the grid may send ahead of those printed.  "
                   "[default: 64]")
@click.option("--json", "as_json", is_flag=True,
              help="Print a failure as the JSON-RPC error object (default: readable, with "
                   "the JavaScript stack one frame per line).")
@call_limit_options
def call_command(method: str, params_json: str | None, timeout: float | None, stream: bool,
                 window: int | None, cpu_limit_s: float | None, max_memory_mb: int | None,
                 as_json: bool, **connection: Any) -> None:
    """Call METHOD on a running grid and print the JSON result.

    PARAMS_JSON is a JSON array (positional) or object (named). With --stream, each item
    of the stream is printed as one JSON line as it arrives. Exit status 1 and the
    error on stderr when the call fails (after the items that came before the
    error); Ctrl-C cancels the call on the grid and exits 130.
    """
    if window is not None and not stream:
        raise click.UsageError("--window needs --stream")
    params = parse_params(params_json)
    limits = _limits(cpu_limit_s, max_memory_mb)
    wait = timeout if timeout is not None else cfg.DEFAULT_TIMEOUT_MS / 1000
    if stream:
        _stream_call(method, params, wait, window, limits=limits, as_json=as_json,
                     **connection)
    else:
        print_result(_one_call(method, params, wait, limits=limits, as_json=as_json,
                               give_up_on_silence=timeout is None, **connection))


def _limits(cpu_limit_s: float | None, max_memory_mb: int | None) -> dict[str, Any]:
    return {"cpu_limit_ms": None if cpu_limit_s is None else cpu_limit_s * 1000,
            "max_memory_mb": max_memory_mb}


def _one_call(method: str, params: Any, timeout: float, broker: str,
              limits: dict[str, Any] | None = None, as_json: bool = False,
              give_up_on_silence: bool = True, **curve: Any) -> Any:
    """The result of one call, or exit 1 with the error on stderr (130 on Ctrl-C). When
    no broker answers within NO_BROKER_NOTICE_S, say so at once, and give up unless
    ``give_up_on_silence`` is False (the user asked for a timeout of their own)."""
    from .client import Client

    with exit_130_on_ctrl_c():
        try:
            with Client(broker, timeout=timeout, **curve) as client:
                future = client.submit(method, params, **(limits or {}))
                try:
                    _say_when_silent(client, future, broker, give_up_on_silence)
                    return future.result()
                finally:
                    future.cancel()   # nothing once it is done; else cancelled on the grid
        except MadrpcError as exc:
            print_error(exc, as_json)
            sys.exit(1)


def _say_when_silent(client: Any, future: Any, broker: str, give_up: bool) -> None:
    """Wait for ``future``; when no broker has answered after NO_BROKER_NOTICE_S, say so
    (and exit 1 when ``give_up``)."""
    notice_at = time.monotonic() + NO_BROKER_NOTICE_S
    while not concurrent.futures.wait([future], timeout=0.1).done:
        if time.monotonic() >= notice_at and not client.broker_answered:
            if give_up:
                click.echo(f"error: {no_broker(broker)}", err=True)
                sys.exit(1)
            click.echo(f"{no_broker(broker)}; still trying until --timeout", err=True)
            concurrent.futures.wait([future])
            return


def _stream_call(method: str, params: Any, timeout: float, window: int | None, broker: str,
                 limits: dict[str, Any], as_json: bool = False, **curve: Any) -> None:
    """Print each item of a stream as a JSON line as it arrives (click.echo flushes each);
    exit 1 with the error on stderr when the stream fails, 130 on Ctrl-C. The stream is
    cancelled on the grid before the client closes, however the loop ends."""
    from .client import Client

    with exit_130_on_ctrl_c(), quiet_on_broken_pipe():
        try:
            with Client(broker, timeout=timeout, **curve) as client, \
                    closing(client.stream(method, params, window=window, **limits)) as items:
                for item in items:
                    click.echo(orjson.dumps(item).decode())
        except MadrpcError as exc:
            print_error(exc, as_json)
            sys.exit(1)


@click.command("drain", short_help="Take a worker out of rotation (--resume puts it back).")
@click.argument("worker_id")
@click.option("--resume", is_flag=True, help="Put the worker back into rotation.")
@client_options
def drain_command(worker_id: str, resume: bool, **connection: Any) -> None:
    """Take worker WORKER_ID out of rotation: it finishes what it holds and gets nothing
    new until --resume (an admin key is needed when the broker has CURVE). WORKER_ID is
    the id madrpc top and _metrics show (host:pid)."""
    params = {"worker": worker_id, "resume": resume}
    print_result(_one_call("_drain", params, 10.0, **connection))


@click.command("keygen", short_help="Write a CURVE key pair: NAME.key and NAME.key_secret.")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Where to write NAME.key and NAME.key_secret.")
@click.option("--force", is_flag=True, help="Overwrite an existing key of that name.")
def keygen_command(name: str, directory: str, force: bool) -> None:
    """Write a CURVE key pair: DIR/NAME.key (public: give it to the broker's key
    directory of the right role, or to clients as --server-key) and DIR/NAME.key_secret
    (keep it private, mode 0600)."""
    from .curve import keygen
    from .errors import ConfigError

    try:
        public, secret = keygen(name, Path(directory), overwrite=force)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"public key: {public}\nsecret key: {secret}")


@click.command("run", short_help="Run SCRIPT on an embedded grid and call METHOD once.")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("method")
@click.argument("params_json", required=False)
@click.option("--contexts", type=click.IntRange(1, 1024), default=None,
              help="V8 contexts of the embedded worker.  [default: CPU count]")
@click.option("--timeout", type=float, default=cfg.DEFAULT_TIMEOUT_MS / 1000, show_default=True,
              help="Seconds to wait for the result.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a failure as the JSON-RPC error object (default: readable, with "
                   "the JavaScript stack one frame per line).")
@log_options("warning")
def run_command(
    script: str, method: str, params_json: str | None, contexts: int | None, timeout: float,
    as_json: bool, log_level: str, log_format: str,
) -> None:
    """Start a local grid for SCRIPT, call METHOD once, print the result, shut down.

    The broker and one worker run in this process on private endpoints; nothing is left
    running afterwards. The script's console output goes to stderr.
    """
    import logging

    from .local import LocalGrid

    setup_logging(log_level, log_format)
    logging.getLogger("madrpc.js").setLevel(logging.INFO)   # console.log is the user's
    params = parse_params(params_json)
    with exit_130_on_ctrl_c():
        try:
            with LocalGrid(script, contexts=contexts) as grid:
                try:
                    result = grid.client(timeout_s=timeout).call(method, params)
                except MadrpcError as exc:
                    print_error(exc, as_json)
                    sys.exit(1)
        except MadrpcError as exc:
            print_error(exc, as_json)
            sys.exit(1)
    print_result(result)


@click.command("top", short_help="Watch a running grid: workers, methods, rates, errors.")
@client_options
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one plain-text snapshot and exit.")
@click.option("--width", type=int, default=160, show_default=True,
              help="Line width of the --once snapshot.")
def top_command(broker: str, interval: float, once: bool, width: int, **curve: Any) -> None:
    """Watch a running grid: workers, methods, rates, latencies, errors.

    Keys: m switches between the workers and the methods view; r/l/e/n sort the rows
    of the view by req/s (requests), p99 latency, errors or name, and c by CPU (workers);
    arrows and PgUp/PgDn scroll; q quits. 80x24 shows every column.
    """
    from . import top

    if once:
        try:
            click.echo(top.once(broker, width=width, timeout_s=NO_BROKER_NOTICE_S, **curve),
                       nl=False)
        except RpcTimeoutError:
            click.echo(f"error: {no_broker(broker)}", err=True)
            sys.exit(1)
        except MadrpcError as exc:
            print_error(exc)
            sys.exit(1)
        return
    if not sys.stdout.isatty():
        raise click.ClickException("top needs a terminal; use --once for a plain snapshot")
    with exit_130_on_ctrl_c():
        sys.exit(top.run(broker, interval, **curve))


@click.command("map", short_help="Call METHOD once per input line; print results in order.")
@click.argument("method")
@click.argument("params_jsonl", type=click.File("r"), default="-")
@client_options
@click.option("--timeout", type=float, default=cfg.DEFAULT_TIMEOUT_MS / 1000, show_default=True,
              help="Seconds each call may take (retries included).")
@click.option("--max-in-flight", type=click.IntRange(1, 1_000_000),
              default=cfg.ClientConfig.max_in_flight, show_default=True,
              help="Calls outstanding at once.")
@call_limit_options
def map_command(method: str, params_jsonl: Any, broker: str, timeout: float,
                max_in_flight: int, cpu_limit_s: float | None, max_memory_mb: int | None,
                **curve: Any) -> None:
    """Call METHOD once per line of PARAMS_JSONL (a file, or - for stdin).

    Each line is a JSON array or object (blank lines are skipped). Input is read and
    results are printed as the calls go (bounded memory, however long the input), as
    JSON lines in input order; a failed call or an unreadable line prints
    {"error": ...} in its place and the exit status is 1. A progress bar shows on stderr
    when it is a terminal and the input a file; Ctrl-C cancels and exits 130.
    """
    from .client import Client

    try:
        client = Client(broker, timeout=timeout, **curve)
    except MadrpcError as exc:
        print_error(exc)
        sys.exit(1)
    total = _count_lines(params_jsonl)
    bad: deque[tuple[int, str]] = deque()   # (good items before it, why) of unreadable lines
    good = 0

    def items() -> Iterator[Any]:
        nonlocal good
        for number, line in enumerate(params_jsonl, start=1):
            if not line.strip():
                continue
            try:
                params = parse_params(line)
            except click.BadParameter as exc:
                bad.append((good, f"line {number}: {exc.message}"))
                continue
            good += 1
            yield params

    failed = printed = unreadable = 0

    def print_bad(upto: int) -> None:
        nonlocal failed, unreadable
        while bad and bad[0][0] <= upto:
            failed += 1
            unreadable += 1
            why = bad.popleft()[1]
            click.echo(orjson.dumps({"error": {"code": -32602, "message": why}}).decode())

    with exit_130_on_ctrl_c(), client, progress_bar(total, method) as bar:
        for result in client.imap(method, items(), return_exceptions=True,
                                  max_in_flight=max_in_flight, progress=bar,
                                  **_limits(cpu_limit_s, max_memory_mb)):
            print_bad(printed)
            printed += 1
            if isinstance(result, MadrpcError):
                failed += 1
                click.echo(orjson.dumps({"error": error_object(result)}).decode())
            else:
                click.echo(orjson.dumps(result).decode())
        print_bad(printed)
    if failed:
        click.echo(f"{failed} of {printed + unreadable} calls failed", err=True)
        sys.exit(1)


def _count_lines(source: Any) -> int | None:
    """Non-blank lines of a regular file (for the progress bar), read once ahead; None for
    a pipe or a terminal, which cannot be read twice."""
    try:
        if not source.seekable():
            return None
        count = sum(1 for line in source if line.strip())
        source.seek(0)
        return count
    except (OSError, ValueError):
        return None


main.add_command(broker_command)
main.add_command(worker_command)
main.add_command(call_command)
main.add_command(run_command)
main.add_command(top_command)
main.add_command(map_command)
main.add_command(drain_command)
main.add_command(keygen_command)
main.add_command(deploy_command)
main.add_command(gateway_command)


def broker_main() -> None:
    """Entry point of ``madrpc-broker``."""
    broker_command(prog_name="madrpc-broker")


def worker_main() -> None:
    """Entry point of ``madrpc-worker``."""
    worker_command(prog_name="madrpc-worker")


if __name__ == "__main__":
    main()
