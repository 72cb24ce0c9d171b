"""What the Python clients accept: params, the idempotency key default, per-call options,
and the configuration a constructor's arguments describe. Pure; shared by
:mod:`madrpc.client`, :mod:`madrpc.async_client` and :mod:`madrpc.client_core`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import ClientConfig

__all__ = ["AUTO_KEY", "Params", "call_options", "check_params", "client_config"]

AUTO_KEY: Any = object()
"""``idempotency_key`` default: the client makes a key of its own for the call (none for
a stream, which is never run twice)."""
Params = Sequence[Any] | dict[str, Any] | None
"""A call's params: positional (list or tuple), named (dict), or none."""


def check_params(params: Any) -> Any:
    """Params as JSON-RPC wants them (a tuple becomes a list); TypeError otherwise."""
    if params is None or isinstance(params, (list, dict)):
        return params
    if isinstance(params, tuple):
        return list(params)
    raise TypeError(
        f"params must be a list, a tuple, a dict or None, not {type(params).__name__}"
    )


def call_options(
    default_timeout_s: float, timeout_s: float | None, cpu_limit_ms: float | None = None,
    max_memory_mb: float | None = None,
) -> tuple[float, dict[str, float]]:
    """(timeout in seconds, lower limits to send) of one call; ValueError if an option is
    out of range. ``timeout_s`` None means ``default_timeout_s``; limits left None are
    not sent."""
    timeout = default_timeout_s if timeout_s is None else timeout_s
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    limits = {name: value for name, value in (("cpu_limit_ms", cpu_limit_ms),
                                              ("max_memory_mb", max_memory_mb))
              if value is not None}
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number")
    return timeout, limits


def client_config(
    endpoint: str, timeout: float | None, config: ClientConfig | None,
    curve_secret: Any = None, server_key: Any = None,
) -> ClientConfig:
    """The configuration a client constructor's arguments describe."""
    if config is not None:
        return config
    options: dict[str, Any] = {"curve_secret": curve_secret, "server_key": server_key}
    if timeout is not None:
        options["timeout_s"] = timeout
    return ClientConfig(endpoint=endpoint, **options)
