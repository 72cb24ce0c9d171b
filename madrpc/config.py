"""Every tunable limit in one place: frozen dataclasses with documented defaults.

The CLI builds these from its options; library code never hard-codes a number that a
user might want to change. Units are in the names (``_s``, ``_ms``, ``_bytes``, ``_mb``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_FRONTEND",
    "DEFAULT_TIMEOUT_MS",
    "OVERLOAD_RETRY_AFTER_MS",
    "BrokerConfig",
    "ClientConfig",
    "GatewayConfig",
    "WorkerConfig",
]

DEFAULT_FRONTEND = "tcp://127.0.0.1:5555"
"""Where clients connect (the broker binds it)."""
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
"""Where workers connect (the broker binds it)."""

DEFAULT_TIMEOUT_MS = 60_000
"""Deadline of a request that names none in ``madrpc.timeout_ms``."""
MAX_TIMEOUT_MS = 24 * 3600 * 1000
"""Longest deadline a request may ask for (one day)."""
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest frame a broker accepts (``ZMQ_MAXMSGSIZE``); bigger peers are disconnected."""
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_HEARTBEAT_LIVENESS = 3
"""A peer silent for ``liveness`` heartbeat intervals is dead."""
DEFAULT_HWM = 100_000
"""ZeroMQ high-water mark (messages) on every socket: bounded, never unlimited."""
OVERLOAD_RETRY_AFTER_MS = 100
"""The ``retry_after_ms`` hint in an 'Overloaded' error that has no better estimate."""


@dataclass(frozen=True)
class BrokerConfig:
    """How a broker binds, balances and protects itself."""

    frontend: str = DEFAULT_FRONTEND
    """Endpoint clients connect to."""
    backend: str = DEFAULT_BACKEND
    """Endpoint workers connect to."""
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    heartbeat_liveness: int = DEFAULT_HEARTBEAT_LIVENESS
    max_queue: int = 10_000
    """Requests waiting for a worker; past this, new requests get 'Overloaded' at once."""
    max_client_requests: int = 1_000
    """Requests one client may have in the grid (queued, running, or waiting for a twin);
    past this its new requests get 'Overloaded', so no client can fill the queue alone."""
    client_rate: float | None = None
    """Requests per second one client may send (a token bucket); None for no limit."""
    client_burst: int | None = None
    """Requests a client may send at once under ``client_rate``. Default: one second's worth."""
    client_hwm: int = 64
    """Replies ZeroMQ queues for one client connection; past it, replies wait in the
    broker, counted in bytes (``max_client_backlog_bytes``)."""
    max_client_backlog_bytes: int = 16 * 1024 * 1024
    """Unread reply bytes the broker holds for one connection: past this, its new
    requests get 'Overloaded'; past twice this, its replies are dropped (and counted)."""
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    local_shortcut: bool = True
    """Also offer each TCP port on loopback or every interface as a Unix socket, which
    clients and workers on this machine use instead (:mod:`madrpc.shortcut`)."""
    max_batch: int = 10_000
    """Members allowed in one JSON-RPC batch."""
    max_attempts: int = 3
    """Dispatches of one request before a lost worker turns into an error."""
    breaker_threshold: int = 5
    """Consecutive transport failures (lost heartbeats, unreachable, crashed engines) that
    take a worker out of rotation; it gets a trial after 1 s, then 2 s, 4 s ... (60 s max)."""
    max_call_depth: int = 32
    """Longest chain of nested ``madrpc.call`` a request may cause."""
    idempotency_window_s: float = 300.0
    """How long a finished keyed request's reply is kept for retries of the same key."""
    max_idempotency_entries: int = 100_000
    max_idempotency_bytes: int = 64 * 1024 * 1024
    """Bytes of stored results the idempotency cache holds at most (oldest evicted first)."""
    max_idempotent_result_bytes: int = 1024 * 1024
    """Results bigger than this are not kept for retries: a retry of their key runs again."""
    max_workers: int = 10_000
    """Workers registered at once; more READYs are refused."""
    max_methods_reported: int = 100
    """Methods ``_metrics`` and the Prometheus page list (the busiest), besides the totals."""
    drain_timeout_s: float = 10.0
    """On SIGTERM: how long to keep answering in-flight requests before exiting."""
    adoption_grace_s: float | None = None
    """After the broker starts, how long workers re-registering after a broker restart
    may take to hand over what they still run. Clients and workers that noticed the
    restart wait this long before sending their calls again, so the calls join those
    runs instead of repeating them. Default: heartbeat interval x liveness."""
    hwm: int = DEFAULT_HWM
    collect_metrics: bool = True
    """Keep latency histograms and rates (off only to measure their cost)."""
    metrics_http: str | None = None
    """``HOST:PORT`` to serve Prometheus metrics on (off by default)."""
    curve_secret: str | None = None
    """The broker's own key pair (a ``.key_secret`` file): turns CURVE on for both sockets."""
    client_keys: str | None = None
    """Directory of the public keys of allowed clients; None lets any client connect
    (still encrypted) when CURVE is on."""
    worker_keys: str | None = None
    """Directory of the public keys of allowed workers (required with CURVE)."""
    admin_keys: str | None = None
    """Directory of the public keys of admins (management methods such as ``_drain``)."""
    insecure: bool = False
    """Allow binding non-loopback addresses without CURVE (a warning is logged)."""
    state_dir: str | None = None
    """Directory where deployed script versions are kept, so a restarted broker still
    serves them (None: in memory only)."""
    cpu: int | None = None
    """Keep this process's own threads (its loop, ZeroMQ's I/O thread) on this CPU from its
    start (:mod:`madrpc.affinity`); None: wherever the kernel puts them."""


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker connects, how many V8 contexts it runs and how it limits them."""

    script: str | None = None
    """The JavaScript file (or script folder with an index.js) every context loads;
    None: run the script deployed to the grid (``madrpc deploy``)."""
    broker: str = DEFAULT_BACKEND
    """The broker's backend endpoint."""
    contexts: int = os.cpu_count() or 1
    """V8 contexts (each in its own engine process). Default: one per CPU."""
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    heartbeat_liveness: int = DEFAULT_HEARTBEAT_LIVENESS
    reconnect_initial_s: float = 0.25
    """First back-off before reconnecting to a silent broker; doubles each time."""
    reconnect_max_s: float = 8.0
    """Cap of the reconnect back-off."""
    prefetch: int = 32
    """Requests per context the worker accepts beyond the running one while requests are
    quick (mean run time under ``batch_threshold_ms``); 1 per context while they are slow,
    so a worker never hoards long jobs that an idle worker could take."""
    max_batch: int = 64
    """Requests handed to one context in one engine crossing."""
    batch_threshold_ms: float = 2.0
    """Only methods whose mean run time is below this are batched together."""
    queue_step_ms: float = 50.0
    """A context busy with a step expected to end within this many ms (by its methods'
    mean run times) is sent its next step already, which it starts the moment the running
    one ends instead of waiting a round trip to the worker (whose process may be waiting
    for a CPU that V8 holds). 0 turns this off; fresh contexts never queue."""
    cpu_limit_s: float = 60.0
    """Seconds of JavaScript a request may run in all (its first step and every
    continuation after an await) before it is terminated with -32012."""
    max_memory_mb: int = 256
    """Hard V8 heap limit per context; a request that exceeds it gets 'Out of memory'."""
    fresh_context: bool = False
    """Give every request a new context (isolation) instead of reusing them."""
    watch: bool = False
    """Reload the script when its file changes."""
    drain_timeout_s: float = 30.0
    """On SIGTERM: how long to finish held requests before exiting."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    hwm: int = DEFAULT_HWM
    v8_flags: tuple[str, ...] = ()
    """Extra V8 flags for the engine processes (see docs/performance.md)."""
    collect_metrics: bool = True
    """Keep per-method latency histograms and rates for heartbeats (off only to measure)."""
    curve_secret: Any = None
    """This worker's key pair (a ``.key_secret`` file or a z85 secret key) for CURVE."""
    server_key: Any = None
    """The broker's public key (a ``.key`` file or z85) for CURVE."""
    cpu: int | None = None
    """Keep this process's own threads (its loop, ZeroMQ's I/O thread) on this CPU from its
    start; its engines keep every CPU it had (:mod:`madrpc.affinity`). None: wherever the
    kernel puts them."""

    @property
    def initial_credit(self) -> int:
        """Credit announced in READY, before the worker has seen how long requests take."""
        return self.contexts * 2


@dataclass(frozen=True)
class ClientConfig:
    """How a client reaches the broker and how long it waits."""

    endpoint: str = DEFAULT_FRONTEND
    timeout_s: float = DEFAULT_TIMEOUT_MS / 1000
    """Default overall deadline of one call (retries included)."""
    max_in_flight: int = 1_000
    """Calls ``map`` keeps outstanding at once."""
    map_batch_size: int = 32
    """Calls ``Client.map``/``imap`` send together as one JSON-RPC batch (one frame each
    way: the broker answers a batch once all its calls are done); 1 sends each alone."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Requests bigger than this are refused locally (the broker would drop them)."""
    retry_interval_s: float = 5.0
    """A call with no reply for this long is sent again (the interval doubles each time);
    a broker that does not answer a probe within it is reconnected to."""
    probe_interval_s: float = 1.0
    """While calls wait and the broker is quiet, how often to check on it with ``_ping``
    (which also tells a restarted broker, whose calls must be sent again)."""
    retry_backoff_initial_s: float = 0.1
    retry_backoff_max_s: float = 5.0
    max_retries: int = 5
    idempotency: bool = True
    """Add an idempotency key to each call so retries run it at most once."""
    hwm: int = DEFAULT_HWM
    curve_secret: Any = None
    """This client's key pair (a ``.key_secret`` file or a z85 secret key) for CURVE."""
    server_key: Any = None
    """The broker's public key (a ``.key`` file or z85) for CURVE."""


DEFAULT_GATEWAY_LISTEN = "127.0.0.1:8080"
"""Where ``madrpc gateway`` serves HTTP."""


@dataclass(frozen=True)
class GatewayConfig:
    """The HTTP gateway (``madrpc gateway``): where it listens, whom it lets in, its limits."""

    broker: str = DEFAULT_FRONTEND
    """The broker's frontend; the gateway is one client of it."""
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: str | None = None
    """A keys file (one per line); without one the gateway listens on loopback only."""
    insecure: bool = False
    """Listen beyond loopback without API keys (anyone who reaches the port may call)."""
    tls_cert: str | None = None
    tls_key: str | None = None
    curve_secret: Any = None
    server_key: Any = None
    cors_origins: tuple[str, ...] = ()
    """Origins whose pages may call from a browser (``*``: any); none: same origin only."""
    max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest request body (413 beyond); the broker takes no bigger frame anyway."""
    max_in_flight_per_connection: int = 1_000
    """Calls (requests with an id, batch members each) one HTTP connection may have in
    the grid at once (429 beyond)."""
    max_in_flight: int = 10_000
    """Calls all HTTP callers together may have in the grid at once (429 beyond). The
    broker counts the gateway as one client: raise its --max-client-requests to match."""
    read_timeout_s: float = 30.0
    """Time a caller has to send a whole request body (408 beyond)."""
    default_timeout_s: float = DEFAULT_TIMEOUT_MS / 1000
    """Deadline of a call that names none: the broker's --default-timeout."""
    keepalive_timeout_s: float = 30.0
    """An idle keep-alive connection is closed after this long; so is one whose request
    headers have not all arrived by then (slow callers)."""
    metrics_max_age_s: float = 1.0
    """The dashboard's figures are at most this old (one ``_metrics`` serves all viewers)."""
