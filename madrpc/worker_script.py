"""Where a worker's code comes from: a file or folder on its disk (``--script``, watched
with ``--watch``), or the grid (started without ``--script``: the version the broker
hands out, see :mod:`madrpc.broker_scripts`).

Either way the code arrives as a :class:`~madrpc.bundle.Bundle`; this part says when
there is a new one, and the worker rolls its engines over to it.
"""

from __future__ import annotations

import logging
import os

from .bundle import Bundle, collect, decode
from .errors import ScriptError, WorkerStartError

__all__ = ["WATCH_INTERVAL_S", "WorkerScript"]

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5
"""How often --watch looks at the script's files."""


class WorkerScript:
    """The worker's code: its source, the newest version handed to engines, and why the
    last version that failed did."""

    def __init__(self, path: str | None, watch: bool = False) -> None:
        self.path = os.path.abspath(path) if path is not None else None
        self.watch = watch and path is not None
        self.latest = ""
        """The version of the newest bundle handed to the engines ("" before any)."""
        self.error: str | None = None
        """Why the newest version from the grid failed to load, if it did."""
        self._waiting_said = False

    @property
    def deployed(self) -> bool:
        """True when the code comes from the grid (no ``--script``)."""
        return self.path is None

    @property
    def name(self) -> str:
        """How messages name the code."""
        return self.path if self.path is not None else "the grid's script"

    def load_local(self) -> Bundle:
        """The ``--script`` file or folder and everything it requires."""
        assert self.path is not None
        try:
            bundle = collect(self.path)
        except ScriptError as exc:
            raise WorkerStartError(str(exc)) from None
        self.latest = bundle.version
        return bundle

    def changed_on_disk(self) -> Bundle | None:
        """With --watch: the script's bundle when any of its files changed since the
        version the engines got (None when nothing did, or it cannot be read right now,
        say half written)."""
        if not self.watch or self.path is None:
            return None
        try:
            bundle = collect(self.path)
        except ScriptError as exc:
            log.debug("cannot read %s right now: %s", self.path, exc)
            return None
        if bundle.version == self.latest:
            return None
        self.latest = bundle.version
        return bundle

    def from_grid(self, frames: list[bytes], broker: str) -> Bundle | None:
        """A SCRIPT message's bundle, when it is a version the engines do not have yet
        (None when the grid has none, for one we have, or for a malformed one)."""
        if not frames:
            if not self.latest and not self._waiting_said:
                self._waiting_said = True
                log.info("no script is deployed to the grid at %s yet: waiting for one "
                         "(madrpc deploy PATH)", broker)
            return None
        version = frames[0].decode(errors="replace")
        if version == self.latest or len(frames) < 2:
            return None
        try:
            bundle = decode(frames[1])
        except ScriptError as exc:
            log.error("the broker sent a script we cannot read: %s", exc)
            return None
        self.latest = bundle.version
        self.error = None
        log.info("script version %s from the grid: %d files, starting engines with it",
                 bundle.version, len(bundle.files))
        return bundle

    def failed(self, message: str) -> None:
        """The newest version did not load (the engines keep the one they had)."""
        self.error = message
