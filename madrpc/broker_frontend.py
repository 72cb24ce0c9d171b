"""The broker's frontend: what a client frame means. Pure: frames, the peer's CURVE key
and ``now`` in; admissions into :class:`~madrpc.broker_core.BrokerCore` out.

Who may ask (a key the :class:`~madrpc.curve.KeyRing` accepts now, in the client or the
admin role), which client a request counts against (its key, else its connection), and
whether that connection still reads its replies (:class:`~madrpc.broker_clients.ReplyBacklog`).
"""

from __future__ import annotations

import logging

from . import protocol as p
from .broker_core import BrokerCore
from .broker_tables import Batch
from .curve import ADMIN, KeyRing
from .endpoints import is_private
from .errors import ErrorCode, ScriptError
from .jsonrpc import (
    NULL,
    Call,
    Invalid,
    Parsed,
    batch_response,
    error_fragment,
    error_response,
    json_dumps,
)
from .jsonrpc_large import parse_large_frame

__all__ = ["CANCEL_METHOD", "DEPLOY_METHOD", "MORE_METHOD", "Frontend"]

CANCEL_METHOD = "_cancel"
"""The built-in a client sends to cancel one of its requests: ``{"id": <its id>}``."""
DEPLOY_METHOD = "_deploy"
"""The admin built-in ``madrpc deploy`` sends: ``{"bundle": {...}}`` or
``{"rollback": true}`` (see :mod:`madrpc.broker_scripts`)."""
MORE_METHOD = "_more"
"""The built-in a client sends as it takes a stream's items: ``{"id": <its id>, "n": k}``
(it took k more items; the stream may run k further ahead)."""

log = logging.getLogger(__name__)


class Frontend:
    """Client frames in, admitted requests (or immediate answers) out."""

    def __init__(self, core: BrokerCore, keys: KeyRing | None) -> None:
        self.core = core
        self.keys = keys
        """None without CURVE: every client may call everything, management included."""

    def on_frame(self, frames: list[bytes], now: float, peer: str | None = None) -> None:
        """A message on the frontend: route frames, then one JSON-RPC frame; ``peer`` is
        the sender's CURVE key (z85) when the broker has CURVE."""
        core = self.core
        if len(frames) < 2:
            core.figures.dropped["client message without body"] += 1
            return
        route, body = frames[:-1], frames[-1]
        if frames[1].startswith(p.PROTOCOL_NAME):
            self._worker_at_the_wrong_port(frames[0])
            return
        parsed = parse_large_frame(body, max_batch=core.config.max_batch)
        admin = True
        if self.keys is not None:
            role = self.keys.frontend_role(peer)
            if role is None:   # revoked since it connected
                self._forbid(route, parsed)
                return
            admin = role == ADMIN
        client = core.clients.seen(peer.encode() if peer is not None else route[0], now)
        refusal = core.backlog.refusal(route[0])
        origin = peer or ""
        if isinstance(parsed, Call):
            if parsed.method == CANCEL_METHOD:
                self._cancel(parsed, now, route)
                return
            if parsed.method == MORE_METHOD:
                self._more(parsed, now, route)
                return
            if parsed.method == DEPLOY_METHOD:
                self._deploy(parsed, now, route, admin)
                return
            if parsed.is_notification and parsed.options.stream_window is not None:
                core.figures.dropped["stream without an id"] += 1   # nowhere to send items
                return
            core.admit(parsed, now, route=route, client=client, admin=admin, refusal=refusal,
                       origin=origin)
        elif isinstance(parsed, Invalid):
            core.figures.error(parsed.code)
            core.outbox.reply(route, parsed.response())
        else:
            batch = core.delivery.open_batch(route, parsed)
            nothing_to_wait_for = batch.waiting == 0
            for index, member in enumerate(parsed):
                if isinstance(member, Call) and member.method == CANCEL_METHOD:
                    self._cancel(member, now, route, batch, index)
                elif isinstance(member, Call) and member.method == MORE_METHOD:
                    self._more(member, now, route, batch, index)
                elif isinstance(member, Call):
                    core.admit(member, now, route=route, batch=batch, index=index,
                               client=client, admin=admin, refusal=refusal, origin=origin)
                else:
                    core.figures.error(member.code)
            if nothing_to_wait_for:   # otherwise the last member to finish sends the batch
                core.delivery.send_batch(batch)

    def _worker_at_the_wrong_port(self, identity: bytes) -> None:
        """A worker-protocol message on the frontend: a worker given the clients' port.
        Tell it so (it would otherwise wait in silence)."""
        self.core.figures.dropped["worker message on the frontend"] += 1
        self.core.outbox.reply([identity, p.TAG, p.DISCONNECT], json_dumps({
            "reason": f"{p.WRONG_PORT}this is the broker's frontend, the clients' port; "
                      "workers connect to its backend (--backend, port 5556 by default)"}))

    def _cancel(self, call: Call, now: float, route: list[bytes], batch: Batch | None = None,
                index: int = 0) -> None:
        """``_cancel {"id": X}``: cancel the request this connection sent with id X (and
        every nested call it made); the answer says whether one was still running."""
        params = call.params
        target = params.get("id") if isinstance(params, dict) else (
            params[0] if isinstance(params, list) and params else None)
        if target is None or isinstance(target, (bool, dict, list)):
            fragment = error_fragment(ErrorCode.INVALID_PARAMS,
                                      'Invalid params: _cancel needs {"id": <request id>}')
        else:
            request = self.core.requests.find(route[0], json_dumps(target))
            if request is not None:
                self.core.cancel(request, now, "by its client")
            fragment = b'"result":' + json_dumps({"cancelled": request is not None})
        self.core.answer(call, now, fragment, route=route, batch=batch, index=index)

    def _more(self, call: Call, now: float, route: list[bytes], batch: Batch | None = None,
              index: int = 0) -> None:
        """``_more {"id": X, "n": k}``: the client took k more items of its stream X."""
        params = call.params
        target = params.get("id") if isinstance(params, dict) else None
        items = params.get("n") if isinstance(params, dict) else None
        if (target is None or isinstance(target, (bool, dict, list))
                or not isinstance(items, int) or isinstance(items, bool) or items <= 0):
            fragment = error_fragment(ErrorCode.INVALID_PARAMS, 'Invalid params: _more needs '
                                      '{"id": <stream request id>, "n": <items taken>}')
        else:
            stream = self.core.requests.find_stream(route[0], json_dumps(target))
            granted = self.core.grant(stream, items) if stream is not None else 0
            fragment = b'"result":' + json_dumps({"granted": granted})
        self.core.answer(call, now, fragment, route=route, batch=batch, index=index)

    def _deploy(self, call: Call, now: float, route: list[bytes], admin: bool) -> None:
        """``_deploy``: a new script version for the grid, or back to the previous one.
        With CURVE only admin keys may; without, only a broker whose frontend only this
        machine can reach (loopback or ipc) takes deploys."""
        core = self.core
        if self.keys is None and not is_private(core.config.frontend):
            code, message = ErrorCode.FORBIDDEN, (
                "Forbidden: deploying needs CURVE and an admin key on a broker other "
                "machines can reach (see docs/security.md)")
        elif not admin:
            code, message = ErrorCode.FORBIDDEN, "Forbidden: _deploy needs an admin key"
        else:
            try:
                outcome = core.scripts.deploy(call.params)
            except ScriptError as exc:
                code, message = ErrorCode.INVALID_PARAMS, f"Invalid params: {exc}"
            else:
                core.answer(call, now, b'"result":' + json_dumps(outcome), route=route)
                return
        core.figures.error(code)
        core.answer(call, now, error_fragment(code, message), route=route)

    def _forbid(self, route: list[bytes], parsed: Parsed) -> None:
        """Answer every member of a frame from a key no longer allowed with -32010."""
        members = parsed if isinstance(parsed, list) else [parsed]
        parts = []
        for member in members:
            self.core.figures.error(ErrorCode.FORBIDDEN)
            if isinstance(member, Invalid):
                parts.append(member.response())
            elif not member.is_notification:
                parts.append(error_response(member.id_json or NULL, ErrorCode.FORBIDDEN,
                                            "Forbidden: this client key is not allowed"))
        if isinstance(parsed, list):
            if parts:
                self.core.outbox.reply(route, batch_response(parts))
        elif parts:
            self.core.outbox.reply(route, parts[0])
