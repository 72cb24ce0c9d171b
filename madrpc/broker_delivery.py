"""Where an answer goes: to a client (alone, or as its member of a batch) or, for a
nested call, to the worker whose code made it. Pure: frames out through the outbox."""

from __future__ import annotations

from .broker_outbox import Outbox
from .broker_tables import Batch, Request
from .broker_workers import WorkerTable
from .jsonrpc import Call, Invalid, batch_response, partial_response, response

__all__ = ["Delivery"]


class Delivery:
    """Addresses answers; assembles batch responses as their members finish."""

    def __init__(self, outbox: Outbox, workers: WorkerTable) -> None:
        self.outbox = outbox
        self.workers = workers

    def open_batch(self, route: list[bytes], members: list[Call | Invalid]) -> Batch:
        """A batch whose invalid members are answered already; the rest fill in later."""
        batch = Batch(route, [None] * len(members), 0)
        for index, member in enumerate(members):
            if isinstance(member, Invalid):
                batch.parts[index] = member.response()
            elif not member.is_notification:
                batch.waiting += 1
        return batch

    def send_batch(self, batch: Batch) -> None:
        """The batch response, unless every member was a notification."""
        parts = [part for part in batch.parts if part is not None]
        if parts:
            self.outbox.reply(batch.route, batch_response(parts))

    def deliver_items(self, request: Request, items: bytes) -> None:
        """A stream's items (a checked JSON array) to whoever asked, ahead of its answer."""
        if request.caller is not None:
            if request.caller in self.workers:
                self.outbox.partial(request.caller, request.call_key, items)
        elif request.call.id_json is not None and request.route is not None:
            self.outbox.reply(request.route, partial_response(request.call.id_json, items))

    def deliver(self, request: Request, fragment: bytes) -> None:
        """The answer (a ``"result":..`` or ``"error":..`` fragment) to whoever asked."""
        if request.caller is not None:
            caller = self.workers.get(request.caller)
            if caller is not None:
                caller.calls.discard(request.key)
                self.outbox.result(request.caller, request.call_key, fragment)
        elif request.batch is not None:
            batch = request.batch
            if request.call.id_json is not None:
                batch.parts[request.index] = response(request.call.id_json, fragment)
                batch.waiting -= 1
                if batch.waiting == 0:
                    self.send_batch(batch)
        elif request.call.id_json is not None and request.route is not None:
            self.outbox.reply(request.route, response(request.call.id_json, fragment))
