"""The nested calls a worker's code made and still awaits. Pure: no sockets, no clocks.

Each call gets the worker's own call key (the broker answers RESULT, and for a stream
sends PARTIAL, under it); the table remembers which engine context awaits it. A nested
*stream* (``madrpc.stream`` in JavaScript) is also found from the other side: the script
names it by its JavaScript call id when it takes items (MORE) or leaves the loop early
(ABANDON), and a stream cannot be sent again to a restarted broker (its items would
repeat), so it fails instead.
"""

from __future__ import annotations

from typing import NamedTuple

from . import protocol as p
from .worker_handover import HandOver

__all__ = ["NestedCalls", "PendingCall"]


class PendingCall(NamedTuple):
    """Where the answer of one nested call goes."""

    engine: int
    """Index of the engine whose context made the call."""
    generation: int
    """That engine's generation then: an answer for an older one is moot."""
    js_call: int
    """The call's id in its context."""
    slot: bytes
    """The context (see :meth:`madrpc.worker_state.WorkerState.slot_of`)."""
    stream: bool


class NestedCalls:
    """Calls awaiting an answer by call key, and the frames for the broker they make."""

    def __init__(self, handover: HandOver) -> None:
        self._pending: dict[int, PendingCall] = {}
        self._streams: dict[tuple[int, int, bytes, int], int] = {}
        """(engine, generation, slot, JS call id) -> call key, for streams only."""
        self._handover = handover
        self._next_key = 1
        self.calls_out: list[bytes] = []
        """CALL frames: ([meta][body])*."""
        self.grants_out: list[bytes] = []
        """MORE frames: ([call key][n])*."""
        self.abandoned_out: list[bytes] = []
        """ABANDON frames: [call key]*."""

    def __len__(self) -> int:
        return len(self._pending)

    def get(self, call_key: bytes) -> PendingCall | None:
        """Where the answer of the call with this key goes (None if nobody waits)."""
        return self._pending.get(p.decode_key(call_key))

    def open(self, call: PendingCall, parent_key: bytes, body: bytes) -> None:
        """A new nested call (its CALL goes out with the next messages)."""
        number = self._next_key
        self._next_key += 1
        stream = call.stream
        self._pending[number] = call
        meta = p.encode_call_meta(number, parent_key)
        if stream:
            self._streams[call.engine, call.generation, call.slot, call.js_call] = number
        else:   # a stream is not sent again to a restarted broker
            self._handover.track_call(number, meta, body)
        self.calls_out += [meta, body]

    def answered(self, call_key: bytes) -> PendingCall | None:
        """The call's final answer came: where it goes (None if nobody waits any more)."""
        number = p.decode_key(call_key)
        self._handover.call_answered(number)
        call = self._pending.pop(number, None)
        if call is not None and call.stream:
            self._streams.pop((call.engine, call.generation, call.slot, call.js_call), None)
        return call

    def fed(self, call_key: bytes) -> PendingCall | None:
        """Items of a nested stream came: where they go (None if nobody waits any more)."""
        call = self._pending.get(p.decode_key(call_key))
        return call if call is not None and call.stream else None

    def took(self, engine: int, generation: int, slot: bytes, js_call: int, items: int) -> None:
        """The script took ``items`` more of its nested stream: grant them (MORE)."""
        number = self._streams.get((engine, generation, slot, js_call))
        if number is not None:
            self.grants_out += [p.encode_key(number), p.encode_grant(items)]

    def abandon(self, engine: int, generation: int, slot: bytes, js_call: int) -> None:
        """The script left its nested stream early: forget it and cancel it (ABANDON)."""
        number = self._streams.pop((engine, generation, slot, js_call), None)
        if number is not None:
            self._pending.pop(number, None)
            self.abandoned_out.append(p.encode_key(number))

    def take_streams(self) -> list[PendingCall]:
        """Forget every nested stream still open (the broker running them was lost)."""
        lost = []
        for number in self._streams.values():
            call = self._pending.pop(number, None)
            if call is not None:
                lost.append(call)
        self._streams.clear()
        return lost

    def forget_unsent(self) -> None:
        """The broker is gone: frames not sent yet are moot (calls are sent again later)."""
        self.calls_out = []
        self.grants_out = []
        self.abandoned_out = []

    def clear(self) -> None:
        self._pending.clear()
        self._streams.clear()
        self.forget_unsent()

    def take_messages(self) -> list[list[bytes]]:
        """CALL, MORE and ABANDON messages for the broker, for what happened since."""
        messages = []
        for command, frames in ((p.CALL, self.calls_out), (p.MORE, self.grants_out),
                                (p.ABANDON, self.abandoned_out)):
            if frames:
                messages.append([p.TAG, command, *frames])
        self.forget_unsent()
        return messages
