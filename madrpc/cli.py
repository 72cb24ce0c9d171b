"""The ``madrpc``, ``madrpc-broker`` and ``madrpc-worker`` commands (click)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import orjson

from . import config as cfg
from .cli_support import (
    error_object,
    log_options,
    on_signals,
    parse_params,
    print_error,
    print_result,
    progress_bar,
)
from .errors import MadrpcError
from .logs import setup_logging

__all__ = ["broker_main", "main", "worker_main"]

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="madrpc")
def main() -> None:
    """MaDRPC: run JavaScript functions across cores and machines over ZeroMQ."""


# ------------------------------------------------------------------ broker

@click.command("broker")
@click.option("--frontend", default=cfg.DEFAULT_FRONTEND, show_default=True,
              help="Endpoint clients connect to.")
@click.option("--backend", default=cfg.DEFAULT_BACKEND, show_default=True,
              help="Endpoint workers connect to.")
@click.option("--heartbeat-interval", type=float, default=cfg.DEFAULT_HEARTBEAT_INTERVAL_S,
              show_default=True, help="Seconds between heartbeats.")
@click.option("--heartbeat-liveness", type=int, default=cfg.DEFAULT_HEARTBEAT_LIVENESS,
              show_default=True, help="Missed heartbeats before a worker counts as dead.")
@click.option("--max-queue", type=int, default=cfg.BrokerConfig.max_queue, show_default=True,
              help="Requests that may wait for a worker; beyond, new ones get 'Overloaded'.")
@click.option("--default-timeout", type=float, default=cfg.DEFAULT_TIMEOUT_MS / 1000,
              show_default=True, help="Seconds a request may take when it names no timeout.")
@click.option("--max-message-bytes", type=int, default=cfg.DEFAULT_MAX_MESSAGE_BYTES,
              show_default=True, help="Largest accepted message; bigger peers are cut off.")
@click.option("--max-attempts", type=int, default=cfg.BrokerConfig.max_attempts,
              show_default=True, help="Dispatches of a request whose workers keep dying.")
@click.option("--max-call-depth", type=int, default=cfg.BrokerConfig.max_call_depth,
              show_default=True, help="Deepest chain of nested madrpc.call allowed.")
@click.option("--breaker-threshold", type=click.IntRange(1, 1000),
              default=cfg.BrokerConfig.breaker_threshold, show_default=True,
              help="Transport failures in a row that take a worker out of rotation.")
@click.option("--drain-timeout", type=float, default=cfg.BrokerConfig.drain_timeout_s,
              show_default=True, help="Seconds to finish in-flight requests on SIGTERM.")
@click.option("--max-batch", type=int, default=cfg.BrokerConfig.max_batch, show_default=True,
              help="Members allowed in one JSON-RPC batch.")
@click.option("--idempotency-window", type=float,
              default=cfg.BrokerConfig.idempotency_window_s, show_default=True,
              help="Seconds a finished keyed request's reply is replayed to retries.")
@click.option("--max-idempotency-entries", type=int,
              default=cfg.BrokerConfig.max_idempotency_entries, show_default=True,
              help="Idempotency keys remembered at most.")
@click.option("--hwm", type=int, default=cfg.DEFAULT_HWM, show_default=True,
              help="ZeroMQ high-water mark (messages) of each socket.")
@click.option("--no-metrics", is_flag=True, help="Do not collect latency histograms and rates.")
@click.option("--metrics-http", metavar="HOST:PORT", default=None,
              help="Serve Prometheus metrics on http://HOST:PORT/metrics.")
@log_options("info")
def broker_command(
    frontend: str, backend: str, heartbeat_interval: float, heartbeat_liveness: int,
    max_queue: int, default_timeout: float, max_message_bytes: int, max_attempts: int,
    max_call_depth: int, breaker_threshold: int, drain_timeout: float, max_batch: int,
    idempotency_window: float,
    max_idempotency_entries: int, hwm: int, no_metrics: bool, metrics_http: str | None,
    log_level: str, log_format: str,
) -> None:
    """Run a broker: clients on FRONTEND, workers on BACKEND."""
    from .broker import Broker

    setup_logging(log_level, log_format)
    config = cfg.BrokerConfig(
        frontend=frontend, backend=backend, heartbeat_interval_s=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness, max_queue=max_queue,
        default_timeout_ms=int(default_timeout * 1000), max_message_bytes=max_message_bytes,
        max_attempts=max_attempts, max_call_depth=max_call_depth,
        breaker_threshold=breaker_threshold, drain_timeout_s=drain_timeout,
        max_batch=max_batch, idempotency_window_s=idempotency_window,
        max_idempotency_entries=max_idempotency_entries, hwm=hwm,
        collect_metrics=not no_metrics, metrics_http=metrics_http,
    )
    try:
        broker = Broker(config)
    except Exception as exc:  # noqa: BLE001 - zmq bind errors deserve one clear line
        raise click.ClickException(f"cannot start the broker: {exc}") from exc
    on_signals(lambda drain: broker.stop(drain))
    broker.run()


# ------------------------------------------------------------------ worker

@click.command("worker")
@click.option("--script", required=True, type=click.Path(exists=True, dir_okay=False),
              help="JavaScript file that registers functions with madrpc.register.")
@click.option("--broker", default=cfg.DEFAULT_BACKEND, show_default=True,
              help="The broker's backend endpoint.")
@click.option("--contexts", type=click.IntRange(1, 1024), default=None,
              help="V8 contexts (engine processes).  [default: CPU count]")
@click.option("--prefetch", type=click.IntRange(0, 1000), default=cfg.WorkerConfig.prefetch,
              show_default=True, help="Requests per context accepted beyond the running one.")
@click.option("--cpu-limit", type=float, default=cfg.WorkerConfig.cpu_limit_s,
              show_default=True, help="Seconds a request may run JavaScript without yielding.")
@click.option("--max-memory", type=click.IntRange(16, 1 << 20),
              default=cfg.WorkerConfig.max_memory_mb, show_default=True,
              help="Heap limit per context, MiB.")
@click.option("--fresh-context", is_flag=True,
              help="A new context for every request (isolation, at a cost).")
@click.option("--watch", is_flag=True, help="Reload the script when the file changes.")
@click.option("--heartbeat-interval", type=float, default=cfg.DEFAULT_HEARTBEAT_INTERVAL_S,
              show_default=True, help="Seconds between heartbeats.")
@click.option("--heartbeat-liveness", type=int, default=cfg.DEFAULT_HEARTBEAT_LIVENESS,
              show_default=True, help="Missed heartbeats before the broker counts as dead.")
@click.option("--drain-timeout", type=float, default=cfg.WorkerConfig.drain_timeout_s,
              show_default=True, help="Seconds to finish held requests on SIGTERM.")
@click.option("--max-batch", type=click.IntRange(1, 100_000),
              default=cfg.WorkerConfig.max_batch, show_default=True,
              help="Requests handed to one context in one engine step.")
@click.option("--batch-threshold", type=float, default=cfg.WorkerConfig.batch_threshold_ms,
              show_default=True, help="Only methods quicker than this (ms) are batched.")
@click.option("--reconnect-initial", type=float, default=cfg.WorkerConfig.reconnect_initial_s,
              show_default=True, help="First back-off (s) before reconnecting to the broker.")
@click.option("--reconnect-max", type=float, default=cfg.WorkerConfig.reconnect_max_s,
              show_default=True, help="Longest back-off (s) between reconnections.")
@click.option("--max-message-bytes", type=int, default=cfg.DEFAULT_MAX_MESSAGE_BYTES,
              show_default=True, help="Largest result sent; bigger ones become -32008 errors.")
@click.option("--hwm", type=int, default=cfg.DEFAULT_HWM, show_default=True,
              help="ZeroMQ high-water mark (messages) of each socket.")
@click.option("--v8-flag", multiple=True, help="Extra V8 flag for the engines (repeatable).")
@click.option("--no-metrics", is_flag=True, help="Do not keep latency histograms and rates.")
@log_options("info")
def worker_command(
    script: str, broker: str, contexts: int | None, prefetch: int, cpu_limit: float,
    max_memory: int, fresh_context: bool, watch: bool, heartbeat_interval: float,
    heartbeat_liveness: int, drain_timeout: float, max_batch: int, batch_threshold: float,
    reconnect_initial: float, reconnect_max: float, max_message_bytes: int, hwm: int,
    v8_flag: tuple[str, ...], no_metrics: bool, log_level: str, log_format: str,
) -> None:
    """Run a worker: V8 contexts running SCRIPT's functions for the broker."""
    from .worker import Worker

    setup_logging(log_level, log_format)
    config = cfg.WorkerConfig(
        script=script, broker=broker, contexts=contexts or (os.cpu_count() or 1),
        prefetch=prefetch, cpu_limit_s=cpu_limit, max_memory_mb=max_memory,
        fresh_context=fresh_context, watch=watch, heartbeat_interval_s=heartbeat_interval,
        heartbeat_liveness=heartbeat_liveness, drain_timeout_s=drain_timeout,
        max_batch=max_batch, batch_threshold_ms=batch_threshold,
        reconnect_initial_s=reconnect_initial, reconnect_max_s=reconnect_max,
        max_message_bytes=max_message_bytes, hwm=hwm, v8_flags=v8_flag,
        collect_metrics=not no_metrics,
    )
    worker = Worker(config, engine_log_level=log_level.upper())
    on_signals(lambda drain: worker.stop(drain))
    sys.exit(worker.run())


# ------------------------------------------------------------------ call / run

@click.command("call")
@click.argument("method")
@click.argument("params_json", required=False)
@click.option("--broker", default=cfg.DEFAULT_FRONTEND, show_default=True,
              help="The broker's frontend endpoint.")
@click.option("--timeout", type=float, default=cfg.DEFAULT_TIMEOUT_MS / 1000, show_default=True,
              help="Seconds to wait for the result (retries included).")
def call_command(method: str, params_json: str | None, broker: str, timeout: float) -> None:
    """Call METHOD on a running grid and print the JSON result.

    PARAMS_JSON is a JSON array (positional) or object (named). Exit status 1 and the
    JSON-RPC error on stderr when the call fails.
    """
    from .client import Client

    params = parse_params(params_json)
    with Client(broker, timeout=timeout) as client:
        try:
            result = client.call(method, params)
        except MadrpcError as exc:
            print_error(exc)
            sys.exit(1)
    print_result(result)


@click.command("run")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("method")
@click.argument("params_json", required=False)
@click.option("--contexts", type=click.IntRange(1, 1024), default=None,
              help="V8 contexts of the embedded worker.  [default: CPU count]")
@click.option("--timeout", type=float, default=cfg.DEFAULT_TIMEOUT_MS / 1000, show_default=True,
              help="Seconds to wait for the result.")
@log_options("warning")
def run_command(
    script: str, method: str, params_json: str | None, contexts: int | None, timeout: float,
    log_level: str, log_format: str,
) -> None:
    """Start a local grid for SCRIPT, call METHOD once, print the result, shut down.

    The broker and one worker run in this process on private endpoints; nothing is left
    running afterwards.
    """
    from .local import LocalGrid

    setup_logging(log_level, log_format)
    params = parse_params(params_json)
    try:
        with LocalGrid(script, contexts=contexts) as grid:
            try:
                result = grid.client(timeout_s=timeout).call(method, params)
            except MadrpcError as exc:
                print_error(exc)
                sys.exit(1)
    except MadrpcError as exc:
        print_error(exc)
        sys.exit(1)
    print_result(result)


@click.command("top")
@click.option("--broker", default=cfg.DEFAULT_FRONTEND, show_default=True,
              help="The broker's frontend endpoint.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one plain-text snapshot and exit.")
@click.option("--width", type=int, default=160, show_default=True,
              help="Line width of the --once snapshot.")
def top_command(broker: str, interval: float, once: bool, width: int) -> None:
    """Watch a running grid: workers, methods, rates, latencies, errors.

    Keys: r/l/e/c/n sort workers by req/s, latency, errors, CPU or name; m toggles the
    methods view; arrows and PgUp/PgDn scroll; q quits.
    """
    from . import top

    if once:
        try:
            click.echo(top.once(broker, width=width, timeout_s=max(5.0, interval)), nl=False)
        except MadrpcError as exc:
            print_error(exc)
            sys.exit(1)
        return
    if not sys.stdout.isatty():
        raise click.ClickException("top needs a terminal; use --once for a plain snapshot")
    sys.exit(top.run(broker, interval))


@click.command("map")
@click.argument("method")
@click.argument("params_jsonl", type=click.File("r"), default="-")
@click.option("--broker", default=cfg.DEFAULT_FRONTEND, show_default=True,
              help="The broker's frontend endpoint.")
@click.option("--timeout", type=float, default=cfg.DEFAULT_TIMEOUT_MS / 1000, show_default=True,
              help="Seconds each call may take (retries included).")
@click.option("--max-in-flight", type=click.IntRange(1, 1_000_000),
              default=cfg.ClientConfig.max_in_flight, show_default=True,
              help="Calls outstanding at once.")
def map_command(method: str, params_jsonl: Any, broker: str, timeout: float,
                max_in_flight: int) -> None:
    """Call METHOD once per line of PARAMS_JSONL (a file, or - for stdin).

    Each line is a JSON array or object (blank lines are skipped). Results are printed
    as JSON lines in input order; a failed call prints {"error": ...} in its place and
    the exit status is 1. A progress bar shows on stderr when it is a terminal.
    """
    from .client import Client

    items = []
    for number, line in enumerate(params_jsonl, start=1):
        if line.strip():
            try:
                items.append(parse_params(line))
            except click.BadParameter as exc:
                raise click.BadParameter(f"line {number}: {exc.message}",
                                         param_hint="PARAMS_JSONL") from exc
    with Client(broker, timeout=timeout) as client, progress_bar(len(items), method) as bar:
        results = client.map(method, items, return_exceptions=True,
                             max_in_flight=max_in_flight, progress=bar)
    failed = 0
    for result in results:
        if isinstance(result, MadrpcError):
            failed += 1
            click.echo(orjson.dumps({"error": error_object(result)}).decode())
        else:
            click.echo(orjson.dumps(result).decode())
    if failed:
        click.echo(f"{failed} of {len(results)} calls failed", err=True)
        sys.exit(1)


main.add_command(broker_command)
main.add_command(worker_command)
main.add_command(call_command)
main.add_command(run_command)
main.add_command(top_command)
main.add_command(map_command)


def broker_main() -> None:
    """Entry point of ``madrpc-broker``."""
    broker_command(prog_name="madrpc-broker")


def worker_main() -> None:
    """Entry point of ``madrpc-worker``."""
    worker_command(prog_name="madrpc-worker")


if __name__ == "__main__":
    main()
