"""What the gateway serves besides JSON-RPC: the dashboard and its figures, the
Prometheus page, ``/healthz``, and JSON-RPC error bodies for every HTTP error.

The dashboard (``madrpc/static``) is plain HTML, CSS and JavaScript: no build step and
no third-party code. It polls ``/api/metrics``, which serves the broker's ``_metrics``
at most :attr:`~madrpc.config.GatewayConfig.metrics_max_age_s` old: one ``_metrics``
call serves every viewer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from .errors import ErrorCode, RpcError
from .gateway_auth import ApiKeys, presented_key
from .gateway_link import BrokerLink, LinkLost
from .jsonrpc import NULL, error_response
from .prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE

__all__ = ["GatewayStats", "MetricsFeed", "Pages", "cors_middleware", "error_middleware",
           "json_error"]

log = logging.getLogger(__name__)

STATIC_DIR = "static"
"""The dashboard's files, in the package (setup.cfg ships them as package data)."""
METRICS_CALL_TIMEOUT_S = 2.0
"""How long the gateway waits for the broker's ``_metrics``."""
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""Headers of the dashboard's files: nothing but the gateway's own code runs in the page."""
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                ".svg": "image/svg+xml", ".png": "image/png"}
_HTTP_ERROR_CODES = {401: ErrorCode.FORBIDDEN, 403: ErrorCode.FORBIDDEN,
                     413: ErrorCode.MESSAGE_TOO_LARGE, 429: ErrorCode.OVERLOADED,
                     503: ErrorCode.BROKER_UNREACHABLE, 504: ErrorCode.CLIENT_TIMEOUT}


def json_error(status: int, code: int, message: str, data: Any = None,
               id_json: bytes = NULL, headers: dict[str, str] | None = None) -> web.Response:
    """An HTTP error whose body is a JSON-RPC error response."""
    return web.Response(status=status, body=error_response(id_json, code, message, data),
                        content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413, bad HTTP) with JSON-RPC error bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_ERROR_CODES.get(exc.status, ErrorCode.INVALID_REQUEST)
        reason = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") \
            else exc.reason
        prefix = "Forbidden" if code == ErrorCode.FORBIDDEN else (
            "Message too large" if code == ErrorCode.MESSAGE_TOO_LARGE else "Invalid Request")
        headers = {name: value for name, value in exc.headers.items()
                   if name.lower() in ("allow", "retry-after", "www-authenticate")}
        return json_error(exc.status, code, f"{prefix}: {reason} ({request.method} "
                          f"{request.path})", headers=headers)


CORS_MAX_AGE_S = 600
"""How long a browser may reuse a CORS preflight answer."""
CORS_HEADERS = "Content-Type, X-API-Key, Authorization, Accept"


def cors_middleware(origins: frozenset[str]) -> Any:
    """Let pages from ``origins`` (``*``: any) call the gateway from a browser: answer
    preflights, and name the caller's origin on every answer to it."""
    @web.middleware
    async def cors(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in origins or origin in origins)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "POST, GET",
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": str(CORS_MAX_AGE_S)})
        else:
            response = await handler(request)
        if allowed and not response.prepared:
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return cors


@dataclass
class GatewayStats:
    """The gateway's own figures, for the dashboard and ``/metrics``."""

    started: float = field(default_factory=time.monotonic)
    responses: Counter[int] = field(default_factory=Counter)
    """HTTP responses by status."""
    in_flight: int = 0
    """Calls the gateway has in the grid."""
    by_connection: dict[int, int] = field(default_factory=dict)
    """Calls in the grid per HTTP connection."""

    def summary(self) -> dict[str, Any]:
        return {"uptime_s": round(time.monotonic() - self.started, 1),
                "in_flight": self.in_flight, "connections_calling": len(self.by_connection),
                "responses": {str(status): n for status, n in sorted(self.responses.items())}}

    def exposition(self, broker_up: bool) -> str:
        lines = ["# HELP madrpc_gateway_broker_up 1 while the broker answers the gateway.",
                 "# TYPE madrpc_gateway_broker_up gauge",
                 f"madrpc_gateway_broker_up {int(broker_up)}",
                 "# HELP madrpc_gateway_in_flight Calls the gateway has in the grid.",
                 "# TYPE madrpc_gateway_in_flight gauge",
                 f"madrpc_gateway_in_flight {self.in_flight}",
                 "# HELP madrpc_gateway_http_responses_total HTTP responses by status.",
                 "# TYPE madrpc_gateway_http_responses_total counter"]
        lines += [f'madrpc_gateway_http_responses_total{{status="{status}"}} {n}'
                  for status, n in sorted(self.responses.items())]
        return "\n".join(lines) + "\n"


class MetricsFeed:
    """The broker's ``_metrics``, fetched at most once per ``max_age_s`` for all viewers."""

    def __init__(self, link: BrokerLink, max_age_s: float) -> None:
        self.link = link
        self.max_age_s = max_age_s
        self._latest: Any = None
        self._fetched = 0.0
        self._pending: asyncio.Task[Any] | None = None

    async def latest(self) -> Any:
        """The latest ``_metrics`` result; raises RpcError or LinkLost."""
        if self._latest is not None and time.monotonic() - self._fetched < self.max_age_s:
            return self._latest
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(
                self.link.call("_metrics", None, METRICS_CALL_TIMEOUT_S))
            self._pending.add_done_callback(_retrieve)   # its viewers may all have left
        self._latest = await asyncio.shield(self._pending)
        self._fetched = time.monotonic()
        return self._latest


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Pages:
    """Handlers of the dashboard, its figures, ``/metrics`` and ``/healthz``."""

    def __init__(self, link: BrokerLink, feed: MetricsFeed, stats: GatewayStats,
                 keys: ApiKeys | None) -> None:
        self.link = link
        self.feed = feed
        self.stats = stats
        self.keys = keys

    def refusal(self, request: web.Request) -> web.Response | None:
        """401 for a request without a valid API key (when the gateway has keys)."""
        if self.keys is None or self.keys.allows(presented_key(request.headers)):
            return None
        return json_error(401, ErrorCode.FORBIDDEN,
                          "Forbidden: a valid API key is required (X-API-Key: KEY or "
                          "Authorization: Bearer KEY)",
                          headers={"WWW-Authenticate": 'Bearer realm="madrpc"'})

    async def dashboard(self, request: web.Request) -> web.Response:
        return self._file("dashboard.html")

    async def static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.Response:
        suffix = name[name.rfind("."):] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            raise web.HTTPNotFound()
        try:
            body = resources.files("madrpc").joinpath(STATIC_DIR, name).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise web.HTTPNotFound() from exc
        return web.Response(body=body, content_type=STATIC_TYPES[suffix],
                            charset="utf-8" if suffix != ".png" else None,
                            headers=PAGE_HEADERS)

    async def api_metrics(self, request: web.Request) -> web.Response:
        """The dashboard's figures: the broker's ``_metrics`` and the gateway's own."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        document: dict[str, Any] = {"broker": self.link.endpoint, "reachable": True,
                                    "error": None, "gateway": self.stats.summary(),
                                    "metrics": None}
        status = 200
        try:
            if not self.link.reachable:
                raise LinkLost(self.link.lost_reason or "the broker is unreachable")
            document["metrics"] = await self.feed.latest()
        except (LinkLost, RpcError, TimeoutError) as exc:
            document["reachable"] = False
            document["error"] = str(exc) or "no answer from the broker"
            status = 503
        return web.Response(status=status, body=orjson.dumps(document),
                            content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def prometheus(self, request: web.Request) -> web.Response:
        """The broker's Prometheus page (``_metrics`` rendered by the broker) plus the
        gateway's own metrics."""
        refused = self.refusal(request)
        if refused is not None:
            return refused
        text, status = "", 200
        try:
            if not self.link.reachable:
                raise LinkLost(self.link.lost_reason or "the broker is unreachable")
            text = await self.link.call("_metrics", {"format": "prometheus"},
                                        METRICS_CALL_TIMEOUT_S)
        except (LinkLost, RpcError, TimeoutError) as exc:
            text, status = f"# broker unreachable: {exc}\n", 503
        body = str(text) + self.stats.exposition(self.link.reachable and status == 200)
        return web.Response(status=status, body=body.encode(),
                            headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the broker answers the gateway, else 503 (for load balancers)."""
        body: dict[str, Any] = {"status": "ok" if self.link.reachable else "unavailable"}
        if self.keys is None:   # with keys, callers without one learn nothing more
            body.update(broker=self.link.endpoint, broker_run=self.link.run,
                        error=self.link.lost_reason)
        return web.Response(status=200 if self.link.reachable else 503,
                            body=orjson.dumps(body), content_type="application/json")
