"""MaDRPC: run JavaScript functions across many cores and machines from Python.

A broker routes JSON-RPC 2.0 requests over ZeroMQ to workers that run the functions in
V8. See README.md for the quick start and docs/ for the protocol.
"""

import warnings
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
from .native_modules import stale_modules as _stale_modules

if _stale := _stale_modules():
    warnings.warn(
        f"madrpc: {', '.join(_stale)} changed after the build compiled them, and the compiled "
        "modules are what runs: install again (pip install -e .), or with MADRPC_PURE=1 "
        "while you change them", RuntimeWarning, stacklevel=2)

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
