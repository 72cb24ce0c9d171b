"""What the broker has to send, collected while it handles one poll round's messages.

Requests, cancellations, stream items, results and stream grants bound for one worker
in one round leave as one message each, in that order; control messages (heartbeats, READY
acknowledgements, DISCONNECT) leave first, so the heartbeat that acknowledges a READY
reaches the worker before the first requests sent to it. Pure: frames in, frames out.
"""

from __future__ import annotations

from collections import defaultdict

from . import protocol as p

__all__ = ["BACKEND", "FRONTEND", "Outbox"]

FRONTEND = 0
"""The clients' socket."""
BACKEND = 1
"""The workers' socket."""


class Outbox:
    """Frames to send, by socket; :meth:`take` empties it."""

    def __init__(self) -> None:
        self._control: list[list[bytes]] = []
        self._replies: list[list[bytes]] = []
        self._requests: defaultdict[bytes, list[bytes]] = defaultdict(list)
        self._results: defaultdict[bytes, list[bytes]] = defaultdict(list)
        self._cancels: defaultdict[bytes, list[bytes]] = defaultdict(list)
        self._partials: defaultdict[bytes, list[bytes]] = defaultdict(list)
        self._grants: defaultdict[bytes, list[bytes]] = defaultdict(list)

    def reply(self, route: list[bytes], body: bytes) -> None:
        """A response (or batch response) to the client at ``route``."""
        self._replies.append([*route, body])

    def control(self, identity: bytes, frames: list[bytes]) -> None:
        """A whole worker-protocol message to one worker, ahead of its requests."""
        self._control.append([identity, *frames])

    def request(self, identity: bytes, meta: bytes, method: bytes, body: bytes) -> None:
        self._requests[identity] += [meta, method, body]

    def result(self, identity: bytes, call_key: bytes, fragment: bytes) -> None:
        """The outcome of a nested call, for the worker that made it."""
        self._results[identity] += [call_key, fragment]

    def cancel(self, identity: bytes, key: bytes) -> None:
        self._cancels[identity].append(key)

    def partial(self, identity: bytes, call_key: bytes, items: bytes) -> None:
        """Items of a stream the worker opened with a nested call (before its RESULT)."""
        self._partials[identity] += [call_key, items]

    def more(self, identity: bytes, key: bytes, items: int) -> None:
        """The consumer of request ``key``'s stream took ``items`` more."""
        self._grants[identity] += [key, p.encode_grant(items)]

    def take(self) -> list[tuple[int, list[bytes]]]:
        """Everything to send since the last call, as (socket, frames) pairs."""
        sends: list[tuple[int, list[bytes]]] = [(BACKEND, f) for f in self._control]
        self._control = []
        sends.extend((FRONTEND, f) for f in self._replies)
        self._replies = []
        # A cancel follows the requests it may name, and goes before the results of the
        # nested calls its request made (cancelled with it): the script sees its signal
        # abort before those calls reject. A stream's items go before its final RESULT.
        for table, command in (
            (self._requests, p.REQUEST),
            (self._cancels, p.CANCEL),
            (self._partials, p.PARTIAL),
            (self._results, p.RESULT),
            (self._grants, p.MORE),
        ):
            for identity, frames in table.items():
                if frames:
                    sends.append((BACKEND, [identity, p.TAG, command, *frames]))
            table.clear()
        return sends
