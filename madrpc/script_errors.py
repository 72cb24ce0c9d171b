"""How a script that fails to load is reported: ``file:line:column: Error: message``,
then the line and a caret, at the user's line (not the runtime's, not a JSON text's).

Pure: V8's messages and the bundle's sources in, one clear message out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .bundle import Bundle

__all__ = [
    "ESM_HINT", "MODULE_PREFIX", "MODULE_SUFFIX", "describe_load_error", "describe_script_error",
]

MODULE_PREFIX = "(function (exports, require, module, __filename, __dirname) {"
"""Put before each JavaScript file of a bundle (on its first line, so line numbers hold;
columns on the first line are shifted by its length, which messages take back)."""
MODULE_SUFFIX = "\n})\n//# sourceURL="
ESM_HINT = ("ES module syntax (import/export) is not supported: use require() and "
            "module.exports, or bundle to CommonJS first, e.g. "
            "`npx esbuild index.js --bundle --format=cjs --outfile=bundle.js`")


_LOCATION = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?P<message>.*)$")


def describe_script_error(message: str, path: str, source: str = "",
                          first_line_offset: int = 0) -> str:
    """Turn V8's ``file:line: Error\nsource\n   ^^^`` into ``file:line:column: Error``.

    An error at the end of input is reported at the end of the script's last line (not
    on the ``sourceURL`` comment the runtime appends). ``first_line_offset`` characters
    were put before the script's first line (the module wrapper): they are taken back out
    of the column and the quoted line. ES module syntax gets a line on what to do.
    """
    lines = message.splitlines()
    if not lines:
        return f"{path}: script failed to load"
    match = _LOCATION.match(lines[0])
    if match is None:
        return f"{path}: {lines[0]}"
    line = int(match["line"])
    code = lines[1] if len(lines) >= 2 else ""
    caret = lines[2] if len(lines) >= 3 else ""
    source_lines = source.rstrip("\n").split("\n") if source else []
    if source_lines and line > len(source_lines):
        line = len(source_lines)
        code = source_lines[-1]
        caret = " " * len(code) + "^"
    elif line == 1 and first_line_offset and len(code) >= first_line_offset:
        code, caret = code[first_line_offset:], caret[first_line_offset:]
    column = f":{caret.index('^') + 1}" if "^" in caret else ""
    text = f"{Path(path)}:{line}{column}: {match['message']}"
    if _is_module_syntax(match["message"]):
        text = f"{text}: {ESM_HINT}"
    return f"{text}\n{code}\n{caret}" if caret else text


def _is_module_syntax(message: str) -> bool:
    return ("Cannot use import statement" in message or "Unexpected token 'export'" in message
            or "import.meta" in message)


def describe_load_error(report: dict[str, Any], bundle: Bundle) -> str:
    """``file:line:column: Error: message`` (and the line, with a caret) for what a
    bundle's code threw while loading, at the first place in its files the stack names."""
    error = str(report.get("error") or "script failed to load")
    file, line, column = report.get("file"), report.get("line"), report.get("column")
    if not isinstance(file, str) or file not in bundle.files or not isinstance(line, int):
        return f"{bundle.display(bundle.entry)}: {error}"
    column = column if isinstance(column, int) else 1
    code_lines = bundle.files[file].split("\n")
    code = code_lines[line - 1] if 0 < line <= len(code_lines) else ""
    if line == 1:
        column = max(1, column - len(MODULE_PREFIX))
    text = f"{bundle.display(file)}:{line}:{column}: {error}"
    if not code:
        return text
    return f"{text}\n{code}\n{' ' * (column - 1)}^"
