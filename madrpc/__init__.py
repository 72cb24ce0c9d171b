"""MaDRPC: run JavaScript functions across many cores and machines from Python.

A broker routes JSON-RPC 2.0 requests over ZeroMQ to workers that run the functions in
V8. See README.md for the quick start and docs/ for the protocol.
"""

from concurrent.futures import as_completed

from .__about__ import __version__
from .async_client import AsyncClient
from .client import CallFuture, Client
from .client_stats import ClientStats
from .config import BrokerConfig, ClientConfig, WorkerConfig
from .errors import (
    CancelledError,
    ConfigError,
    EngineError,
    ErrorCode,
    JSError,
    MadrpcError,
    MessageTooLargeError,
    ProtocolError,
    RpcError,
    RpcTimeoutError,
    ScriptError,
    TransportError,
    WorkerStartError,
)
from .local import LocalGrid

__all__ = [
    "AsyncClient",
    "BrokerConfig",
    "CallFuture",
    "CancelledError",
    "Client",
    "ClientConfig",
    "ClientStats",
    "ConfigError",
    "EngineError",
    "ErrorCode",
    "JSError",
    "LocalGrid",
    "MadrpcError",
    "MessageTooLargeError",
    "ProtocolError",
    "RpcError",
    "RpcTimeoutError",
    "ScriptError",
    "TransportError",
    "WorkerConfig",
    "WorkerStartError",
    "__version__",
    "as_completed",
]
