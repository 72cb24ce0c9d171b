"""The long-running commands: ``madrpc broker`` (``madrpc-broker``) and ``madrpc worker``
(``madrpc-worker``). Each option is named after the configuration field it sets."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import click

from . import config as cfg
from .__about__ import __version__
from .allocator import keep_freed_memory
from .cli_support import ENDPOINT, VERSION_MESSAGE, exit_status, log_options, on_signals
from .errors import ConfigError
from .logs import setup_logging
from .native_modules import summary as native_summary

log = logging.getLogger("madrpc.cli")

__all__ = ["broker_command", "worker_command"]

B = cfg.BrokerConfig
W = cfg.WorkerConfig


@click.command("broker", short_help="Run a broker: clients on FRONTEND, workers on BACKEND.")
@click.version_option(package_name="madrpc", message=VERSION_MESSAGE)
@click.option("--frontend", default=cfg.DEFAULT_FRONTEND, show_default=True,
              type=ENDPOINT,
              envvar="MADRPC_FRONTEND", show_envvar=True,
              help="Endpoint clients connect to (their --broker).")
@click.option("--backend", default=cfg.DEFAULT_BACKEND, show_default=True,
              type=ENDPOINT,
              envvar="MADRPC_BACKEND", show_envvar=True,
              help="Endpoint workers connect to (their --broker).")
@click.option("--curve-secret", metavar="FILE", default=None,
              envvar="MADRPC_BROKER_SECRET", show_envvar=True,
              help="The broker's key pair (madrpc keygen): CURVE on both sockets.")
@click.option("--client-keys", metavar="DIR", default=None, envvar="MADRPC_CLIENT_KEYS",
              show_envvar=True,
              help="Public keys of allowed clients. [default: any client, encrypted]")
@click.option("--worker-keys", metavar="DIR", default=None, envvar="MADRPC_WORKER_KEYS",
              show_envvar=True,
              help="Public keys of allowed workers (required with --curve-secret).")
@click.option("--admin-keys", metavar="DIR", default=None, envvar="MADRPC_ADMIN_KEYS",
              show_envvar=True,
              help="Public keys of admins (_drain, _deploy).")
@click.option("--insecure", is_flag=True,
              help="Allow binding non-loopback addresses without CURVE (logs a warning).")
@click.option("--cpu", type=click.IntRange(0), default=None,
              help="Keep this process's own threads on CPU N (fewer costly wake-ups for a "
                   "lone call; see madrpc.affinity).  [default: any CPU]")
@click.option("--local-shortcut/--no-local-shortcut", default=B.local_shortcut,
              show_default=True,
              help="Also offer a TCP port on loopback or * as a Unix socket, which clients "
                   "and workers on this machine then use (same CURVE; see docs/protocol.md).")
@click.option("--state-dir", metavar="DIR", default=None, envvar="MADRPC_STATE_DIR",
              show_envvar=True,
              help="Keep deployed script versions here too, for restarts. "
                   "[default: in memory]")
@click.option("--heartbeat-interval", "heartbeat_interval_s", type=float,
              default=cfg.DEFAULT_HEARTBEAT_INTERVAL_S, show_default=True,
              help="Seconds between heartbeats.")
@click.option("--heartbeat-liveness", type=int, default=cfg.DEFAULT_HEARTBEAT_LIVENESS,
              show_default=True, help="Missed heartbeats before a worker counts as dead.")
@click.option("--max-queue", type=int, default=B.max_queue, show_default=True,
              help="Requests that may wait for a worker; beyond, new ones get 'Overloaded'.")
@click.option("--max-client-requests", type=click.IntRange(1), default=B.max_client_requests,
              show_default=True, help="Requests one client may have in the grid at once.")
@click.option("--client-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second one client may send. [default: no limit]")
@click.option("--client-burst", type=click.IntRange(1), default=None,
              help="Requests a client may send at once under --client-rate. [default: 1 s]")
@click.option("--client-hwm", type=click.IntRange(1), default=B.client_hwm, show_default=True,
              help="Replies ZeroMQ queues per client connection before the broker holds them.")
@click.option("--max-client-backlog-bytes", type=click.IntRange(1),
              default=B.max_client_backlog_bytes, show_default=True,
              help="Unread reply bytes held per connection before its requests are refused.")
@click.option("--default-timeout", type=float, default=cfg.DEFAULT_TIMEOUT_MS / 1000,
              show_default=True, help="Seconds a request may take when it names no timeout.")
@click.option("--max-message-bytes", type=int, default=cfg.DEFAULT_MAX_MESSAGE_BYTES,
              show_default=True, help="Largest accepted message; bigger peers are cut off.")
@click.option("--max-attempts", type=int, default=B.max_attempts, show_default=True,
              help="Dispatches of a request whose workers keep dying.")
@click.option("--max-call-depth", type=int, default=B.max_call_depth, show_default=True,
              help="Deepest chain of nested madrpc.call allowed.")
@click.option("--max-workers", type=click.IntRange(1), default=B.max_workers,
              show_default=True, help="Workers registered at once.")
@click.option("--breaker-threshold", type=click.IntRange(1, 1000),
              default=B.breaker_threshold, show_default=True,
              help="Transport failures in a row that take a worker out of rotation.")
@click.option("--drain-timeout", "drain_timeout_s", type=float, default=B.drain_timeout_s,
              show_default=True, help="Seconds to finish in-flight requests on SIGTERM.")
@click.option("--max-batch", type=int, default=B.max_batch, show_default=True,
              help="Members allowed in one JSON-RPC batch.")
@click.option("--idempotency-window", "idempotency_window_s", type=float,
              default=B.idempotency_window_s, show_default=True,
              help="Seconds a finished keyed request's reply is replayed to retries.")
@click.option("--max-idempotency-entries", type=int, default=B.max_idempotency_entries,
              show_default=True, help="Idempotency keys remembered at most.")
@click.option("--max-idempotency-bytes", type=int, default=B.max_idempotency_bytes,
              show_default=True, help="Bytes of results kept for retries at most.")
@click.option("--max-idempotent-result-bytes", type=int,
              default=B.max_idempotent_result_bytes, show_default=True,
              help="Results bigger than this are not kept for retries.")
@click.option("--max-methods-reported", type=click.IntRange(1),
              default=B.max_methods_reported, show_default=True,
              help="Methods _metrics and Prometheus list (the busiest).")
@click.option("--hwm", type=int, default=cfg.DEFAULT_HWM, show_default=True,
              help="ZeroMQ high-water mark (messages) of each socket.")
@click.option("--no-metrics", is_flag=True, help="Do not collect latency histograms and rates.")
@click.option("--metrics-http", metavar="HOST:PORT", default=None,
              envvar="MADRPC_METRICS_HTTP", show_envvar=True,
              help="Serve Prometheus metrics on http://HOST:PORT/metrics.")
@log_options("info")
def broker_command(default_timeout: float, no_metrics: bool, log_level: str,
                   log_format: str, **options: Any) -> None:
    """Run a broker: clients on FRONTEND, workers on BACKEND.

    SIGHUP re-reads the key directories: a removed worker key leaves the rotation at
    once. SIGINT/SIGTERM drain (answer what runs), twice to stop at once.
    """
    from .broker import Broker

    setup_logging(log_level, log_format)
    log.debug("madrpc %s, %s", __version__, native_summary())
    keep_freed_memory()
    config = cfg.BrokerConfig(default_timeout_ms=int(default_timeout * 1000),
                              collect_metrics=not no_metrics, **options)
    try:
        broker = Broker(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - zmq bind errors deserve one clear line
        raise click.ClickException(f"cannot start the broker: {exc}") from exc
    signals = on_signals(lambda drain: broker.stop(drain))
    signal.signal(signal.SIGHUP, lambda *_: broker.reload_keys())
    broker.run()
    sys.exit(exit_status(0, signals))


@click.command("worker", short_help="Run a worker: V8 contexts serving a script's functions.")
@click.version_option(package_name="madrpc", message=VERSION_MESSAGE)
@click.option("--script", type=click.Path(exists=True), envvar="MADRPC_SCRIPT",
              show_envvar=True,
              help="JavaScript file (or folder with an index.js) that registers functions "
                   "with madrpc.register. [default: the script deployed to the grid]")
@click.option("--broker", default=cfg.DEFAULT_BACKEND, show_default=True,
              type=ENDPOINT,
              envvar="MADRPC_BACKEND", show_envvar=True,
              help="The broker's BACKEND endpoint, the workers' port (its --backend; "
                   "clients use the frontend).")
@click.option("--curve-secret", metavar="FILE", default=None,
              envvar="MADRPC_WORKER_SECRET", show_envvar=True,
              help="This worker's key pair (madrpc keygen) when the broker has CURVE.")
@click.option("--server-key", metavar="FILE", default=None, envvar="MADRPC_SERVER_KEY",
              show_envvar=True,
              help="The broker's public key (its .key file) when it has CURVE.")
@click.option("--contexts", type=click.IntRange(1, 1024), default=None,
              help="V8 contexts (engine processes).  [default: CPU count]")
@click.option("--prefetch", type=click.IntRange(0, 1000), default=W.prefetch,
              show_default=True, help="Requests per context accepted beyond the running one.")
@click.option("--cpu-limit", "cpu_limit_s", type=float, default=W.cpu_limit_s,
              show_default=True,
              help="Seconds of JavaScript a request may run in all (every step counts).")
@click.option("--max-memory", "max_memory_mb", type=click.IntRange(16, 1 << 20),
              default=W.max_memory_mb, show_default=True, help="Heap limit per context, MiB.")
@click.option("--fresh-context", is_flag=True,
              help="A new context for every request (isolation, at a cost).")
@click.option("--watch", is_flag=True, help="Reload the script when the file changes.")
@click.option("--heartbeat-interval", "heartbeat_interval_s", type=float,
              default=cfg.DEFAULT_HEARTBEAT_INTERVAL_S, show_default=True,
              help="Seconds between heartbeats.")
@click.option("--heartbeat-liveness", type=int, default=cfg.DEFAULT_HEARTBEAT_LIVENESS,
              show_default=True, help="Missed heartbeats before the broker counts as dead.")
@click.option("--drain-timeout", "drain_timeout_s", type=float, default=W.drain_timeout_s,
              show_default=True, help="Seconds to finish held requests on SIGTERM.")
@click.option("--max-batch", type=click.IntRange(1, 100_000), default=W.max_batch,
              show_default=True, help="Requests handed to one context in one engine step.")
@click.option("--batch-threshold", "batch_threshold_ms", type=float,
              default=W.batch_threshold_ms, show_default=True,
              help="Only methods quicker than this (ms) are batched.")
@click.option("--queue-step", "queue_step_ms", type=click.FloatRange(0), default=W.queue_step_ms,
              show_default=True, help="Send a context its next step while it runs one "
              "expected to end within this (ms); 0: off.")
@click.option("--reconnect-initial", "reconnect_initial_s", type=float,
              default=W.reconnect_initial_s, show_default=True,
              help="First back-off (s) before reconnecting to the broker.")
@click.option("--reconnect-max", "reconnect_max_s", type=float, default=W.reconnect_max_s,
              show_default=True, help="Longest back-off (s) between reconnections.")
@click.option("--max-message-bytes", type=int, default=cfg.DEFAULT_MAX_MESSAGE_BYTES,
              show_default=True, help="Largest result sent; bigger ones become -32008 errors.")
@click.option("--hwm", type=int, default=cfg.DEFAULT_HWM, show_default=True,
              help="ZeroMQ high-water mark (messages) of each socket.")
@click.option("--v8-flag", "v8_flags", multiple=True,
              help="Extra V8 flag for the engines (repeatable).")
@click.option("--cpu", type=click.IntRange(0), default=None,
              help="Keep this process's own threads on CPU N; its engines keep every CPU "
                   "(see madrpc.affinity).  [default: any CPU]")
@click.option("--no-metrics", is_flag=True, help="Do not keep latency histograms and rates.")
@log_options("info")
def worker_command(contexts: int | None, no_metrics: bool, log_level: str, log_format: str,
                   **options: Any) -> None:
    """Run a worker: V8 contexts running SCRIPT's functions for the broker.

    Without --script it runs the grid's script (madrpc deploy) and every new version.
    """
    from .worker import Worker

    setup_logging(log_level, log_format)
    log.debug("madrpc %s, %s", __version__, native_summary())
    keep_freed_memory()
    config = cfg.WorkerConfig(contexts=contexts or (os.cpu_count() or 1),
                              collect_metrics=not no_metrics, **options)
    try:
        worker = Worker(config, engine_log_level=log_level.upper())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    signals = on_signals(lambda drain: worker.stop(drain))
    status = worker.run()
    sys.exit(exit_status(0 if signals["signal"] else status, signals))
