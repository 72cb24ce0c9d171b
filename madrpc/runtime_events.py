"""What a V8 isolate reports to :class:`madrpc.runtime.Runtime`'s owner, and the value
type numbers of mini-racer's native library the runtime relies on."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["MINI_RACER_TYPES", "Event", "EventKind"]

MINI_RACER_TYPES: dict[str, int] = {
    "str_utf8": 5, "array": 6, "object": 10, "undefined": 11, "function": 100,
    "shared_array_buffer": 101,
    "execute_exception": 200, "parse_exception": 201, "oom_exception": 202,
    "timeout_exception": 203, "terminated_exception": 204,
}
"""The value type numbers of mini-racer's native library this runtime relies on (its
private ``_MiniRacerTypes``, by name). A unit test pins them against the installed
mini-racer, so an upgrade that renumbers them fails in seconds, not in production."""


class EventKind(IntEnum):
    """What the isolate reports through ``on_event``."""

    DONE = 0          # a step or flush finished; data is its outbox
    ERROR = 1         # the step threw (a runtime bug or a broken payload)
    TERMINATED = 2    # the step was terminated (watchdog)
    OUT_OF_MEMORY = 3  # the step hit the hard memory limit
    NOTIFY = 4        # code outside a step produced output: call flush()


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    data: bytes = b""
