"""The JavaScript every V8 context evaluates before the user's script (the sources of
``js/``, put together for :class:`madrpc.runtime.Runtime`)."""

from __future__ import annotations

from importlib import resources

import orjson

__all__ = ["bootstrap_source", "loader_source"]


def loader_source() -> str:
    """js/modules.js, which compiles and links the files of a script's bundle."""
    source = (resources.files("madrpc") / "js" / "modules.js").read_text(encoding="utf-8")
    return source + "\n//# sourceURL=madrpc-modules.js\n"


def bootstrap_source() -> str:
    """js/webapi.js's loader, given this context's own crypto seed and the implementation as
    a string (compiled when a script first uses it), then js/bootstrap.js."""
    from os import urandom
    js = resources.files("madrpc") / "js"
    loader, api = (js / "webapi.js").read_text(encoding="utf-8").split("\n//@@\n")
    bootstrap = (js / "bootstrap.js").read_text(encoding="utf-8")
    webapi = f"({loader})('{urandom(32).hex()}', {orjson.dumps(api).decode()});"
    return f"{webapi}\n{bootstrap}\n//# sourceURL=madrpc-runtime.js\n"
