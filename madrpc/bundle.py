"""A script as a bundle of files: the entry file and every file it ``require``s.

A worker runs a bundle, whether it came from ``--script`` on its own disk or from the grid
(``madrpc deploy``). The bundle is collected from disk by following ``require('...')``
calls with a literal string from the entry file, as bundlers do, resolving them as
Node.js does (relative paths, ``.js``/``.json``/``.cjs`` extensions, ``index.js``,
``package.json`` ``main``, ``node_modules`` folders up to the bundle's root, which is the
entry file's folder). Nothing outside the root is read.

Pure core: :func:`resolve` works on any ``exists``/``read`` pair, :meth:`Bundle.links`
over the bundle's own files; :func:`collect` is the thin disk shell. A bundle's
:attr:`Bundle.version` is a hash of its entry and files, so the same code has the same
version on every machine.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from .errors import ScriptError

__all__ = [
    "MAX_BUNDLE_BYTES", "MAX_BUNDLE_FILES", "NODE_BUILTINS", "Bundle", "collect", "decode",
    "find_requires", "resolve",
]

MAX_BUNDLE_FILES = 2000
"""Files a bundle may hold (the entry and everything it requires)."""
MAX_BUNDLE_BYTES = 8 * 1024 * 1024
"""Bytes of source a bundle may hold in all (it travels in one message to every worker)."""
VERSION_CHARS = 12
"""Hex digits of the content hash that names a version."""
EXTENSIONS = ("", ".js", ".json", ".cjs")
"""What ``require('./x')`` tries after ``x`` itself, in order (Node.js's order)."""
NODE_BUILTINS = frozenset({
    "assert", "buffer", "child_process", "cluster", "crypto", "dgram", "dns", "events", "fs",
    "http", "http2", "https", "module", "net", "os", "path", "process", "querystring",
    "readline", "stream", "string_decoder", "timers", "tls", "url", "util", "v8", "vm",
    "worker_threads", "zlib",
})
"""Node.js's own modules: scripts have none of them (no file system or network here)."""

_REQUIRE = re.compile(r"""\brequire\s*\(\s*(?:'([^'\n]+)'|"([^"\n]+)"|`([^`$\n]+)`)\s*\)""")


def find_requires(source: str) -> list[str]:
    """The literal module names ``source`` passes to ``require``, in order, once each."""
    seen: dict[str, None] = {}
    for match in _REQUIRE.finditer(source):
        seen[next(group for group in match.groups() if group is not None)] = None
    return list(seen)


# ---------------------------------------------------------------- resolution (pure)

Exists = Callable[[str], bool]
Read = Callable[[str], "str | None"]


def resolve(spec: str, from_file: str, exists: Exists, read: Read) -> str | None:
    """The bundle path ``require(spec)`` in ``from_file`` loads, or None. Paths are
    POSIX and relative to the bundle's root; ``read`` is only asked for package.json."""
    if spec.startswith(("./", "../")) or spec in (".", ".."):
        target = _inside(posixpath.join(posixpath.dirname(from_file), spec))
        return None if target is None else _as_file(target, exists) or _as_dir(target, exists,
                                                                                 read)
    if spec.startswith("/") or spec.startswith("node:") or not spec.strip():
        return None
    folder = posixpath.dirname(from_file)
    while True:
        if posixpath.basename(folder) != "node_modules":
            target = _inside(posixpath.join(folder, "node_modules", spec))
            found = None if target is None else (
                _as_file(target, exists) or _as_dir(target, exists, read))
            if found is not None:
                return found
        if not folder:
            return None
        folder = posixpath.dirname(folder)


def _inside(path: str) -> str | None:
    """``path`` normalised, or None when it leaves the bundle's root."""
    path = posixpath.normpath(path)
    if path == "." or path.startswith("../") or path == ".." or path.startswith("/"):
        return None
    return path


def _as_file(path: str, exists: Exists) -> str | None:
    return next((path + ext for ext in EXTENSIONS if exists(path + ext)), None)


def _as_dir(path: str, exists: Exists, read: Read) -> str | None:
    manifest = posixpath.join(path, "package.json")
    if exists(manifest):
        main = _package_main(read(manifest))
        if main is not None:
            target = _inside(posixpath.join(path, main))
            if target is not None:
                found = _as_file(target, exists) or _as_index(target, exists)
                if found is not None:
                    return found
    return _as_index(path, exists)


def _as_index(path: str, exists: Exists) -> str | None:
    return next((f"{path}/index{ext}" for ext in (".js", ".json", ".cjs")
                 if exists(f"{path}/index{ext}")), None)


def _package_main(text: str | None) -> str | None:
    try:
        manifest = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return None
    main = manifest.get("main") if isinstance(manifest, dict) else None
    return main if isinstance(main, str) and main.strip() else None


# ---------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class Bundle:
    """An entry file and the files it needs, by path relative to the bundle's root."""

    entry: str
    files: Mapping[str, str]
    origin: str = field(default="", compare=False)
    """Where it was collected from (a folder on this machine), for messages; not hashed."""

    @classmethod
    def single(cls, path: str, source: str) -> Bundle:
        """A one-file bundle (a script given as text)."""
        name = posixpath.basename(path.replace(os.sep, "/")) or "script.js"
        return cls(name, {name: source}, origin=os.path.dirname(path))

    @cached_property
    def version(self) -> str:
        """Content hash of the entry and the files: the same code, the same version."""
        digest = hashlib.sha256(orjson.dumps({"entry": self.entry, "files": dict(self.files)},
                                             option=orjson.OPT_SORT_KEYS))
        return digest.hexdigest()[:VERSION_CHARS]

    @property
    def size(self) -> int:
        return sum(len(source.encode()) for source in self.files.values())

    def display(self, path: str) -> str:
        """How messages name a file of the bundle (on this machine's disk if it came from
        there)."""
        return os.path.join(self.origin, path) if self.origin else path

    def links(self) -> dict[str, dict[str, str]]:
        """For each JavaScript file, the bundle path each literal ``require`` loads
        (worked out once per bundle: a fresh context per request loads it again)."""
        return self._links

    @cached_property
    def _links(self) -> dict[str, dict[str, str]]:
        exists, read = self.files.__contains__, self.files.get
        out: dict[str, dict[str, str]] = {}
        for path, source in self.files.items():
            if path.endswith(".json"):
                continue
            found = {spec: target for spec in find_requires(source)
                     if (target := resolve(spec, path, exists, read)) is not None}
            if found:
                out[path] = found
        return out

    def encode(self) -> bytes:
        """The wire and disk form (``entry``, ``files``); :func:`decode` reads it back."""
        return orjson.dumps({"entry": self.entry, "files": dict(self.files)})


def decode(data: bytes | str | Any, origin: str = "") -> Bundle:
    """A bundle from :meth:`Bundle.encode`'s form (bytes, or the parsed object); checks
    shape and limits. ScriptError when it is not a valid bundle."""
    try:
        value = orjson.loads(data) if isinstance(data, (bytes, str)) else data
    except orjson.JSONDecodeError as exc:
        raise ScriptError(f"the bundle is not JSON: {exc}") from None
    entry = value.get("entry") if isinstance(value, dict) else None
    files = value.get("files") if isinstance(value, dict) else None
    if (not isinstance(entry, str) or not isinstance(files, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        raise ScriptError('a bundle is {"entry": path, "files": {path: source}}')
    for path in files:
        if _inside(path) != path:
            raise ScriptError(f"bundle path {path!r} is not a plain relative path")
    if entry not in files:
        raise ScriptError(f"the bundle's entry {entry!r} is not among its files")
    bundle = Bundle(entry, files, origin)
    _check_limits(len(files), bundle.size)
    return bundle


def _check_limits(count: int, size: int) -> None:
    if count > MAX_BUNDLE_FILES:
        raise ScriptError(f"the script needs more than {MAX_BUNDLE_FILES} files "
                          "(MAX_BUNDLE_FILES)")
    if size > MAX_BUNDLE_BYTES:
        raise ScriptError(f"the script's files hold more than {MAX_BUNDLE_BYTES} bytes "
                          "(MAX_BUNDLE_BYTES)")


# ---------------------------------------------------------------- from disk (the shell)


def collect(path: str) -> Bundle:
    """The bundle of a ``.js`` file or of a folder (its package.json ``main``, else
    ``index.js``): the entry and every file reached through literal requires."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        root = path
        entry = _folder_entry(root)
    elif os.path.isfile(path):
        root, entry = os.path.dirname(path), os.path.basename(path)
    else:
        raise ScriptError(f"{path}: no such file or folder")

    def exists(rel: str) -> bool:
        return os.path.isfile(os.path.join(root, rel))

    def read(rel: str) -> str | None:
        return _read_text(os.path.join(root, rel))

    files: dict[str, str] = {}
    pending = [entry]
    size = 0
    while pending:
        rel = pending.pop()
        if rel in files:
            continue
        source = read(rel)
        if source is None:
            raise ScriptError(f"{os.path.join(root, rel)}: cannot read the file")
        files[rel] = source
        size += len(source.encode())
        _check_limits(len(files), size)
        if rel.endswith(".json"):
            continue
        for spec in find_requires(source):
            target = resolve(spec, rel, exists, read)
            if target is None:
                continue   # reported when the code really requires it
            pending.append(target)
            pending.extend(_manifests(rel, target, exists))
    return Bundle(entry, files, origin=root)


def _folder_entry(root: str) -> str:
    manifest = os.path.join(root, "package.json")
    if os.path.isfile(manifest):
        main = _package_main(_read_text(manifest))
        if main is not None:
            target = _inside(main)
            found = target and _as_file(target, lambda rel: os.path.isfile(
                os.path.join(root, rel)))
            if found:
                return found
    if os.path.isfile(os.path.join(root, "index.js")):
        return "index.js"
    raise ScriptError(f"{root}: a script folder needs an index.js (or a package.json "
                      "whose main names the entry file)")


def _manifests(from_file: str, target: str, exists: Exists) -> list[str]:
    """The package.json files resolving to ``target`` may have consulted (so that the
    bundle resolves the same way): those of the folders between ``target`` and the
    requiring file's folder."""
    out = []
    stop = posixpath.dirname(from_file)
    folder = posixpath.dirname(target)
    while folder and folder != stop:
        manifest = posixpath.join(folder, "package.json")
        if exists(manifest):
            out.append(manifest)
        folder = posixpath.dirname(folder)
    return out


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None
