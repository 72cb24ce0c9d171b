"""Which modules the build compiles with mypyc (``setup.py``), and whether they run compiled.

These are the modules on the path of every request: the broker's loop and state machine,
the worker's, the engine's core and link, and the envelope codecs they share. Compiled,
the same code serves a quarter to a third more calls per second under load, and a single
call up to ~20% quicker (docs/performance.md, fifth round).
Everything else (clients, CLI, gateway, dashboards, V8's runtime) stays Python.

Classes built once per request or message (``LocalRequest``, the broker's ``Request``,
``Call``, ``RequestMeta``, ``StepEntry``, ``Reply``, ``StepInput``, ``Message``,
``Output``) are dataclasses that write their own ``__init__``: mypyc compiles that one,
while the ``__init__`` that ``@dataclass`` generates at import time runs interpreted,
about four times slower (264 against 57 ns for three fields), and so does a
``NamedTuple``'s ``__new__``.

Pure data and the standard library only: ``setup.py`` imports this file by path, before
any of MaDRPC's dependencies are installed.
"""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

__all__ = [
    "NATIVE_MODULES", "PACKAGE", "PURE_ENV", "REQUIRE_ENV", "STALE_TOLERANCE_S",
    "compiled_modules", "stale_modules", "summary",
]

NATIVE_MODULES: tuple[str, ...] = (
    "broker", "broker_backend", "broker_clients", "broker_core", "broker_delivery",
    "broker_dispatch", "broker_figures", "broker_frontend", "broker_outbox",
    "broker_requests", "broker_state", "broker_tables", "broker_workers", "engine_channel",
    "engine_core", "engine_payload", "engine_pool", "engine_protocol", "jsonrpc", "jsonrpc_large",
    "liveness", "metrics", "policy", "protocol", "sockets", "table_view", "worker",
    "worker_base", "worker_calls", "worker_credit", "worker_figures", "worker_handover",
    "worker_link", "worker_requests", "worker_state", "worker_tables",
)
"""Modules of the ``madrpc`` package that ``setup.py`` compiles (names without ``.py``).
Never one that runs as ``python -m`` (``engine``): runpy needs its code object."""
PURE_ENV = "MADRPC_PURE"
"""``MADRPC_PURE=1`` at install time: install every module as plain Python."""
REQUIRE_ENV = "MADRPC_REQUIRE_NATIVE"
"""``MADRPC_REQUIRE_NATIVE=1`` when testing: the build must have compiled the request path
(CI sets it, so a change mypyc cannot compile fails there instead of silently installing
plain Python)."""
STALE_TOLERANCE_S = 2.0
"""A source file this much newer than its compiled module counts as changed since."""

PACKAGE = Path(__file__).resolve().parent
"""Where the installed ``madrpc`` package is."""


def _compiled_file(package: Path, name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = package / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def compiled_modules(package: Path = PACKAGE) -> list[str]:
    """The modules of :data:`NATIVE_MODULES` installed compiled (they take precedence
    over their ``.py`` files)."""
    return [name for name in NATIVE_MODULES if _compiled_file(package, name) is not None]


def stale_modules(package: Path = PACKAGE) -> list[str]:
    """Compiled modules whose ``.py`` file changed after they were built: in a source
    checkout (a ``setup.py`` beside the package), the edit is not what runs. Empty for
    an installed wheel, whose files all carry the installation's time."""
    if not (package.parent / "setup.py").exists():
        return []
    stale = []
    for name in NATIVE_MODULES:
        compiled = _compiled_file(package, name)
        source = package / f"{name}.py"
        if compiled is not None and source.exists() and \
                os.stat(source).st_mtime > os.stat(compiled).st_mtime + STALE_TOLERANCE_S:
            stale.append(name)
    return stale


def summary(package: Path = PACKAGE) -> str:
    """How the request path runs, for logs and ``--version``."""
    compiled = len(compiled_modules(package))
    if compiled == 0:
        return "request path in plain Python"
    return f"request path compiled: {compiled} of {len(NATIVE_MODULES)} modules"
