"""Code shipped through the grid: the script versions the broker keeps and hands out.

``madrpc deploy`` sends a bundle (see :mod:`madrpc.bundle`) with the admin method
``_deploy``; the broker keeps it as the current version and the one before it as the
previous (``{"rollback": true}`` swaps back), in memory and, with a state directory, on
disk so that a restarted broker still has them. It never runs the code: the deploy
command loads it in V8 before sending, and each worker loads it again (keeping its old
engines when that fails). Workers started without a script ask for the current version
(FETCH) and are sent every new one (SCRIPT) while registered; they roll their engines
over, so running requests finish on the version they started on.

:class:`ScriptStore` is the versions and their files; :class:`Deployments` decides who
is sent what. Pure but for the store's file writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from . import protocol as p
from .broker_outbox import Outbox
from .broker_workers import WorkerTable
from .bundle import decode
from .errors import ScriptError

__all__ = ["MAX_WAITING_WORKERS", "Deployments", "ScriptStore", "StoredScript"]

log = logging.getLogger(__name__)

MAX_WAITING_WORKERS = 10_000
"""Workers remembered as waiting for a first version (they are sent it when it comes);
beyond, the oldest are forgotten and find it by asking again."""
_FILES = ("current.json", "previous.json")


@dataclass(frozen=True)
class StoredScript:
    """One deployed version: its id (content hash), its bundle as sent, and when."""

    version: str
    data: bytes
    files: int
    deployed_at: float

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "files": self.files, "bytes": len(self.data),
                "deployed_at": self.deployed_at}


def _stored(data: bytes, deployed_at: float) -> StoredScript:
    bundle = decode(data)
    return StoredScript(bundle.version, bundle.encode(), len(bundle.files), deployed_at)


class ScriptStore:
    """The current and the previous version; with ``state_dir``, also on disk."""

    def __init__(self, state_dir: str | None) -> None:
        self.state_dir = state_dir
        self.current: StoredScript | None = None
        self.previous: StoredScript | None = None
        if state_dir is not None:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self.current, self.previous = (self._read(name) for name in _FILES)
            if self.current is not None:
                log.info("serving script version %s from %s", self.current.version, state_dir)

    def deploy(self, bundle: Any, now_wall: float) -> StoredScript:
        """Make ``bundle`` (the parsed ``{"entry", "files"}``) current; ScriptError if it
        is not a valid bundle. Deploying the current version again changes nothing."""
        stored = _stored(orjson.dumps(bundle), now_wall)
        if self.current is not None and stored.version == self.current.version:
            return self.current
        self.current, self.previous = stored, self.current
        self._save()
        return stored

    def rollback(self) -> StoredScript:
        """Go back one version (the current one becomes the previous)."""
        if self.previous is None:
            raise ScriptError("there is no previous version to roll back to")
        self.current, self.previous = self.previous, self.current
        self._save()
        return self.current

    def describe(self) -> dict[str, Any]:
        return {"current": self.current.summary() if self.current else None,
                "previous": self.previous.summary() if self.previous else None}

    def _read(self, name: str) -> StoredScript | None:
        assert self.state_dir is not None
        path = os.path.join(self.state_dir, name)
        try:
            with open(path, "rb") as handle:
                record = orjson.loads(handle.read())
            return _stored(orjson.dumps(record["bundle"]), float(record["deployed_at"]))
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError,
                ScriptError) as exc:
            log.error("ignoring %s: not a stored script version (%s)", path, exc)
            return None

    def _save(self) -> None:
        if self.state_dir is None:
            return
        for name, stored in zip(_FILES, (self.current, self.previous), strict=True):
            path = os.path.join(self.state_dir, name)
            if stored is None:
                if os.path.exists(path):
                    os.remove(path)
                continue
            temporary = f"{path}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(b'{"deployed_at":%r,"bundle":' % stored.deployed_at)
                handle.write(stored.data)
                handle.write(b"}")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)


class Deployments:
    """Which workers run the grid's script, and sending them the current version."""

    def __init__(self, store: ScriptStore, workers: WorkerTable, outbox: Outbox) -> None:
        self.store = store
        self.workers = workers
        self.outbox = outbox
        self._waiting: OrderedDict[bytes, None] = OrderedDict()
        """Peers that asked (FETCH) while there was no version yet."""

    @property
    def version(self) -> str | None:
        return self.store.current.version if self.store.current else None

    def on_fetch(self, identity: bytes, has_version: str) -> None:
        """A worker without a script asks for the current version (it runs
        ``has_version``, or nothing yet)."""
        current = self.store.current
        if current is None:
            self._waiting[identity] = None
            self._waiting.move_to_end(identity)
            while len(self._waiting) > MAX_WAITING_WORKERS:
                self._waiting.popitem(last=False)
            self.outbox.control(identity, [p.TAG, p.SCRIPT])
        elif current.version != has_version:
            self._send(identity, current)
        else:   # it has it (and it did not load there): say nothing is newer
            self.outbox.control(identity, [p.TAG, p.SCRIPT, current.version.encode()])

    def on_registered(self, identity: bytes, info: dict[str, Any]) -> None:
        """A worker registered: one that runs the grid's script but an older version
        (say, this broker restarted with a newer one) is sent the current one."""
        self._waiting.pop(identity, None)
        current = self.store.current
        if info.get("deployed") and current is not None \
                and info.get("script_version") != current.version:
            self._send(identity, current)

    def deploy(self, params: Any, now_wall: float | None = None) -> dict[str, Any]:
        """``_deploy`` params: ``{"bundle": {...}}`` or ``{"rollback": true}``. Sends the
        new current version to every worker that runs the grid's script; ScriptError
        when the params are wrong."""
        if not isinstance(params, dict):
            raise ScriptError('_deploy takes {"bundle": {"entry": ..., "files": {...}}} or '
                              '{"rollback": true}')
        before = self.version
        if params.get("rollback") is True:
            stored = self.store.rollback()
        elif "bundle" in params:
            stored = self.store.deploy(params["bundle"], now_wall or time.time())
        else:
            raise ScriptError('_deploy takes {"bundle": {...}} or {"rollback": true}')
        sent = 0
        if stored.version != before:
            log.info("script version %s is now current (was %s)", stored.version, before)
            for worker in list(self.workers.values()):
                if worker.info.get("deployed"):
                    self._send(worker.identity, stored)
                    sent += 1
            for identity in list(self._waiting):
                self._send(identity, stored)
                sent += 1
            self._waiting.clear()
        return {"version": stored.version, "previous": before, "workers": sent,
                "files": stored.files, "bytes": len(stored.data)}

    def _send(self, identity: bytes, stored: StoredScript) -> None:
        self.outbox.control(identity, [p.TAG, p.SCRIPT, stored.version.encode(), stored.data])
