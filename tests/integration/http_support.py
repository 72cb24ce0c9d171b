"""Helpers for the gateway's tests: start ``madrpc gateway`` as a process, talk HTTP to it
with the standard library (so tests see exactly what goes over the wire)."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any

from grid_support import Proc, Spawner, free_port, wait_until


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpGateway:
    proc: Proc
    host: str
    port: int
    tls: ssl.SSLContext | None = None

    def connection(self, timeout_s: float = 30.0) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s,
                                               context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> Reply:
        connection = self.connection(timeout_s)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                         response.read())
        finally:
            connection.close()

    def post(self, body: bytes | str | Any, path: str = "/", **headers: str) -> Reply:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        sent = {"Content-Type": "application/json"}
        sent.update({name.replace("_", "-"): value for name, value in headers.items()})
        return self.request("POST", path, body, sent)

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, None,
                            {name.replace("_", "-"): value for name, value in headers.items()})

    def get_or_none(self, path: str) -> int | None:
        """The status of GET ``path``, or None while nothing answers on the port."""
        try:
            return self.get(path).status
        except OSError:
            return None

    def healthy(self) -> bool:
        try:
            return self.get("/healthz").status == 200
        except OSError:
            return False


def start_gateway(spawn: Spawner, frontend: str, *extra: str,
                  tls: ssl.SSLContext | None = None, wait: bool = True) -> HttpGateway:
    """``madrpc gateway`` for the broker at ``frontend``; waits until /healthz says 200."""
    port = free_port()
    proc = spawn.run("gateway", "--broker", frontend, "--listen", f"127.0.0.1:{port}",
                     "--log-level", "debug", *extra, name="gateway")
    gateway = HttpGateway(proc, "127.0.0.1", port, tls)
    if wait:
        wait_until(lambda: gateway.healthy() or not proc.alive(), 20, 0.05, "the gateway")
        assert proc.alive(), proc.stderr()
    return gateway
