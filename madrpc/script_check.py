"""Load a script bundle in V8 the way a worker would, in a process of its own: what
``madrpc deploy`` does before it sends a version, so that a version that cannot load is
refused on the user's terminal (file:line:column) and never reaches the grid.

``python -m madrpc.script_check FILE`` reads an encoded bundle and prints one JSON line:
``{"methods": [...]}`` or ``{"error": "file:line:column: ..."}``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

import orjson

from .bundle import Bundle
from .bundle import decode as decode_bundle
from .errors import ScriptError

__all__ = ["CHECK_MEMORY_MB", "CHECK_TIMEOUT_S", "check_bundle", "main"]

CHECK_TIMEOUT_S = 30.0
"""How long loading a version may take before the deploy gives up on it."""
CHECK_MEMORY_MB = 256
"""Heap limit while loading it (the workers' default --max-memory)."""


def check_bundle(bundle: Bundle, timeout_s: float = CHECK_TIMEOUT_S) -> list[str]:
    """The functions ``bundle`` registers; ScriptError saying why it does not load."""
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        handle.write(bundle.encode())
        handle.flush()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "madrpc.script_check", handle.name, bundle.origin],
                capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False,
            )
        except subprocess.TimeoutExpired:
            raise ScriptError(f"{bundle.display(bundle.entry)}: still loading after "
                              f"{timeout_s:.0f} s (an endless loop at load time?)") from None
    try:
        outcome = orjson.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError):
        detail = done.stderr.decode(errors="replace").strip()[-500:]
        raise ScriptError(f"{bundle.display(bundle.entry)}: the check crashed "
                          f"(status {done.returncode}) {detail}") from None
    if "error" in outcome:
        raise ScriptError(str(outcome["error"]))
    methods = [str(name) for name in outcome.get("methods", [])]
    if not methods:
        raise ScriptError(f"{bundle.display(bundle.entry)} registers no functions: call "
                          "madrpc.register(name, fn)")
    return methods


def main(argv: list[str] | None = None) -> int:
    from .runtime import Runtime, init_engine

    args = sys.argv[1:] if argv is None else argv
    try:
        with open(args[0], "rb") as handle:
            bundle = decode_bundle(handle.read(), args[1] if len(args) > 1 else "")
        init_engine([f"--max-old-space-size={2 * CHECK_MEMORY_MB}"])
        runtime = Runtime(bundle, "", lambda event: None,
                          max_memory_bytes=CHECK_MEMORY_MB * 1024 * 1024)
        outcome: dict[str, object] = {"methods": runtime.methods}
        runtime.close()
    except ScriptError as exc:
        outcome = {"error": str(exc)}
    sys.stdout.write(orjson.dumps(outcome).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
