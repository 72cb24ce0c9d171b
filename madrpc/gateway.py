"""``madrpc gateway``: JSON-RPC over HTTP, and the web dashboard, in a process of its own.

The gateway is an ordinary client of the broker (:mod:`madrpc.gateway_link`); the broker
has no HTTP code. ``POST /`` (or ``/rpc``) takes a JSON-RPC request or batch and answers
it as the broker's frontend would (:mod:`madrpc.gateway_core`): 200 with the response,
204 for notifications, a stream as newline-delimited JSON or server-sent events. HTTP
errors get the fitting status and a JSON-RPC error body. A caller that disconnects
cancels what it asked for. Served with aiohttp (handlers are cancelled when their
connection closes, which is what cancels a call).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import web

from .config import GatewayConfig
from .curve import client_curve
from .endpoints import is_private
from .errors import ConfigError, ErrorCode
from .gateway_auth import ApiKeys
from .gateway_core import (
    ANSWER_GRACE_S,
    Plan,
    Refusal,
    assemble_batch,
    cancel_frame,
    is_partial,
    more_frame,
    partial_items,
    plan_body,
    restore_id,
)
from .gateway_link import BrokerLink, Exchange, LinkLost
from .gateway_pages import (
    GatewayStats,
    MetricsFeed,
    Pages,
    cors_middleware,
    error_middleware,
    json_error,
)
from .jsonrpc import NULL, error_response

__all__ = ["JSON_TYPES", "Gateway", "is_loopback"]

log = logging.getLogger(__name__)

JSON_TYPES = frozenset({"application/json", "application/json-rpc", "application/jsonrequest"})
"""Content types a JSON-RPC body may have (or none at all)."""
SHUTDOWN_GRACE_S = 5.0
"""On SIGTERM, how long requests in progress may take to finish."""
RETRY_AFTER_S = 1
"""The ``Retry-After`` of a 429 or 503."""
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to listen on) is this machine only: the
    broker's own rule for its binds (:func:`madrpc.endpoints.is_private`)."""
    return is_private(f"tcp://{host}:0")


class Gateway:
    """The HTTP gateway: build with a :class:`~madrpc.config.GatewayConfig`, then
    ``await gateway.start()`` and ``await gateway.stop()`` (or :meth:`serve`)."""

    def __init__(self, config: GatewayConfig) -> None:
        if not config.api_keys and not config.insecure and not is_loopback(config.host):
            raise ConfigError(
                f"refusing to listen on {config.host}:{config.port} without --api-keys: "
                "anyone who reaches the port could call the grid (give --api-keys FILE, "
                "listen on 127.0.0.1 behind a proxy that checks callers, or --insecure)")
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        self.config = config
        self.keys = ApiKeys(config.api_keys) if config.api_keys else None
        self.ssl = _tls_context(config) if config.tls_cert else None
        self.link = BrokerLink(config.broker,
                               client_curve(config.curve_secret, config.server_key))
        self.stats = GatewayStats()
        self.pages = Pages(self.link, MetricsFeed(self.link, config.metrics_max_age_s),
                           self.stats, self.keys)
        self.address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        middlewares = [self._count_middleware, error_middleware]   # outermost first
        if self.config.cors_origins:
            middlewares.insert(0, cors_middleware(frozenset(self.config.cors_origins)))
        app = web.Application(middlewares=middlewares, client_max_size=self.config.max_body_bytes)
        for path in ("/", "/rpc"):
            app.router.add_post(path, self.rpc)
        app.router.add_get("/", self.pages.dashboard)
        app.router.add_get("/static/{name}", self.pages.static)
        app.router.add_get("/api/metrics", self.pages.api_metrics)
        app.router.add_get("/metrics", self.pages.prometheus)
        app.router.add_get("/healthz", self.pages.healthz)
        return app

    async def start(self) -> None:
        await self.link.start()
        runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None,
                               keepalive_timeout=self.config.keepalive_timeout_s,
                               shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, ssl_context=self.ssl)
        await site.start()
        self._runner = runner
        self.address = runner.addresses[0][:2]
        scheme = "https" if self.ssl else "http"
        log.info("gateway on %s://%s:%s (dashboard at /, JSON-RPC at POST / and /rpc), "
                 "broker %s%s", scheme, *self.address, self.config.broker,
                 f", {len(self.keys)} API keys" if self.keys else ", no API keys (loopback)")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.link.close()

    async def serve(self, stopped: asyncio.Event) -> None:
        """Serve until ``stopped`` is set."""
        await self.start()
        try:
            await stopped.wait()
        finally:
            await self.stop()

    @web.middleware
    async def _count_middleware(self, request: web.Request, handler: Any) -> Any:
        response = await handler(request)
        self.stats.responses[response.status] += 1
        return response

    # ------------------------------------------------------------------ JSON-RPC

    async def rpc(self, request: web.Request) -> web.StreamResponse:
        refused = self.pages.refusal(request) or _wrong_type(request)
        if refused is not None:
            return refused
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        if not self.link.reachable:
            return _unreachable(self.link.lost_reason)
        plan = plan_body(body, self.link.new_id, self.config.default_timeout_s)
        if isinstance(plan, Refusal):
            return web.Response(status=plan.status, body=plan.body,
                                content_type="application/json")
        if not plan.expects_reply:
            if plan.frame is not None:
                self.link.notify(plan.frame)
            return _answer(assemble_batch(plan, None) if plan.batch is not None else None)
        overload = self._admit(request, plan)
        if overload is not None:
            return overload
        assert plan.frame is not None
        exchange = self.link.open(plan.frame)
        try:
            if plan.stream_window is not None:
                return await self._stream(request, plan, exchange)
            return await self._one_answer(plan, exchange)
        finally:
            exchange.close()
            self._release(request, plan)

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return json_error(413, ErrorCode.MESSAGE_TOO_LARGE,
                              f"Message too large: the body is {request.content_length} "
                              f"bytes, the limit is {limit}")
        try:
            return await asyncio.wait_for(request.read(), self.config.read_timeout_s)
        except TimeoutError:
            return json_error(408, ErrorCode.INVALID_REQUEST,
                              "Invalid Request: the body did not arrive within "
                              f"{self.config.read_timeout_s:g} s", headers={"Connection": "close"})
        except ConnectionError:   # the caller hung up while sending: nobody reads an answer
            return web.Response(status=400)

    def _admit(self, request: web.Request, plan: Plan) -> web.Response | None:
        """429 when the calls would pass the connection's or the gateway's limit."""
        connection = id(request.protocol)
        mine = self.stats.by_connection.get(connection, 0)
        config = self.config
        if mine + plan.calls > config.max_in_flight_per_connection:
            detail = (f"this connection has {mine} calls in the grid and sends {plan.calls}; "
                      f"the limit per connection is {config.max_in_flight_per_connection}")
        elif self.stats.in_flight + plan.calls > config.max_in_flight:
            detail = (f"the gateway has {self.stats.in_flight} calls in the grid; its limit "
                      f"is {config.max_in_flight}")
        else:
            self.stats.by_connection[connection] = mine + plan.calls
            self.stats.in_flight += plan.calls
            return None
        return json_error(429, ErrorCode.OVERLOADED, f"Overloaded: {detail}",
                          {"retry_after_ms": RETRY_AFTER_S * 1000},
                          headers={"Retry-After": str(RETRY_AFTER_S)})

    def _release(self, request: web.Request, plan: Plan) -> None:
        connection = id(request.protocol)
        left = self.stats.by_connection.get(connection, 0) - plan.calls
        if left > 0:
            self.stats.by_connection[connection] = left
        else:
            self.stats.by_connection.pop(connection, None)
        self.stats.in_flight -= plan.calls

    async def _one_answer(self, plan: Plan, exchange: Exchange) -> web.Response:
        try:
            reply = await exchange.next(plan.timeout_s + ANSWER_GRACE_S)
        except TimeoutError:
            self._cancel(plan)
            return json_error(504, ErrorCode.CLIENT_TIMEOUT,
                              "Client timeout: the broker did not answer within "
                              f"{plan.timeout_s + ANSWER_GRACE_S:g} s",
                              id_json=_lone_id(plan))
        except LinkLost as lost:
            return _unreachable(str(lost), _lone_id(plan))
        except asyncio.CancelledError:   # the caller hung up
            self._cancel(plan)
            raise
        if plan.batch is not None:
            return _answer(assemble_batch(plan, reply))
        return _answer(restore_id(reply, plan.names))

    async def _stream(self, request: web.Request, plan: Plan,
                      exchange: Exchange) -> web.StreamResponse:
        """Items as they come, one JSON-RPC message per line (or event), the final
        response last; each written batch of items is acknowledged with ``_more``."""
        sse = SSE in request.headers.get("Accept", "")
        response = web.StreamResponse(headers={
            "Content-Type": SSE if sse else NDJSON, "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        gateway_id = next(iter(plan.names))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + plan.timeout_s + ANSWER_GRACE_S
        try:
            while True:
                try:
                    reply = await exchange.next(deadline - loop.time())
                except TimeoutError:
                    self._cancel(plan)
                    reply = error_response(gateway_id, ErrorCode.CLIENT_TIMEOUT,
                                           "Client timeout: the stream did not end in time")
                except LinkLost as lost:
                    reply = error_response(gateway_id, ErrorCode.BROKER_UNREACHABLE,
                                           f"Broker unreachable: {lost}")
                message = restore_id(reply, plan.names)
                await response.write(b"data: " + message + b"\n\n" if sse else message + b"\n")
                if not is_partial(reply):
                    break
                self.link.notify(more_frame(gateway_id, partial_items(reply)))
        except (asyncio.CancelledError, ConnectionResetError):   # the caller hung up
            self._cancel(plan)
            raise
        await response.write_eof()
        return response

    def _cancel(self, plan: Plan) -> None:
        frame = cancel_frame(plan.names)
        if frame is not None and self.link.reachable:
            self.link.notify(frame)


def _wrong_type(request: web.Request) -> web.Response | None:
    content_type = request.headers.get("Content-Type")
    if content_type is None or request.content_type in JSON_TYPES:
        return None
    return json_error(415, ErrorCode.INVALID_REQUEST,
                      f"Invalid Request: the body must be JSON (Content-Type: "
                      f"application/json), not {request.content_type}")


def _unreachable(reason: str | None, id_json: bytes = NULL) -> web.Response:
    return json_error(503, ErrorCode.BROKER_UNREACHABLE,
                      f"Broker unreachable: {reason or 'no answer from the broker'}",
                      {"retry_after_ms": RETRY_AFTER_S * 1000}, id_json=id_json,
                      headers={"Retry-After": str(RETRY_AFTER_S)})


def _lone_id(plan: Plan) -> bytes:
    """The caller's id of a lone request, for a gateway-made error (null for a batch)."""
    if plan.batch is None and len(plan.names) == 1:
        return next(iter(plan.names.values()))
    return NULL


def _answer(body: bytes | None) -> web.Response:
    if body is None:
        return web.Response(status=204)
    return web.Response(body=body, content_type="application/json")


def _tls_context(config: GatewayConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load --tls-cert/--tls-key: {exc}") from exc
    return context
