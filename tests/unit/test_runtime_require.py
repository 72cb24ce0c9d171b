"""require() in scripts, with real V8: relative files, cycles, JSON, node_modules, and the
errors a user meets at load (file:line:column, a missing module's name, ES modules)."""

from __future__ import annotations

import pytest

from madrpc.bundle import Bundle
from madrpc.errors import ScriptError
from madrpc.runtime import Runtime


def load(files: dict[str, str], entry: str = "index.js") -> Runtime:
    return Runtime(Bundle(entry, files), "", lambda event: None)


def methods_of(files: dict[str, str]) -> list[str]:
    runtime = load(files)
    try:
        return runtime.methods
    finally:
        runtime.close()


def refusal(files: dict[str, str]) -> str:
    with pytest.raises(ScriptError) as caught:
        load(files)
    return str(caught.value)


def test_relative_requires_with_and_without_extension_and_index_files() -> None:
    files = {
        "index.js": "const a = require('./a'); const b = require('./sub/b.js');\n"
                    "const c = require('./sub');\n"
                    "if (a.x + b.y + c.z === 6) madrpc.register('ok', () => 1);",
        "a.js": "exports.x = 1;", "sub/b.js": "module.exports = {y: 2};",
        "sub/index.js": "module.exports.z = 3;",
    }

    assert methods_of(files) == ["ok"]


def test_a_cycle_gets_the_unfinished_exports_as_node_does() -> None:
    files = {
        "index.js": "const a = require('./a');\n"
                    "if (a.seenFromB === 'early' && a.b.done) madrpc.register('ok', () => 1);",
        "a.js": "exports.early = 'early'; exports.b = require('./b');",
        "b.js": "const a = require('./a'); exports.done = true;\n"
                "a.seenFromB = a.early;",
    }

    assert methods_of(files) == ["ok"]


def test_each_module_runs_once_and_json_files_are_parsed() -> None:
    files = {
        "index.js": "require('./count'); require('./count');\n"
                    "const data = require('./data.json');\n"
                    "if (globalThis.runs === 1 && data.n === 5) madrpc.register('ok', () => 1);",
        "count.js": "globalThis.runs = (globalThis.runs || 0) + 1;",
        "data.json": '{"n": 5}',
    }

    assert methods_of(files) == ["ok"]


def test_a_package_from_node_modules_with_a_main() -> None:
    files = {
        "index.js": "const pad = require('pad');\n"
                    "if (pad('x', 3) === '..x') madrpc.register('ok', () => 1);",
        "node_modules/pad/package.json": '{"name": "pad", "main": "lib/pad.js"}',
        "node_modules/pad/lib/pad.js": "module.exports = (s, n) => s.padStart(n, '.');",
    }

    assert methods_of(files) == ["ok"]


def test_module_scope_is_private_and_this_is_exports() -> None:
    files = {
        "index.js": "var hidden = 1; require('./a');\n"
                    "if (typeof globalThis.hidden === 'undefined' && this === module.exports)\n"
                    "  madrpc.register('ok', () => 1);",
        "a.js": "var hidden = 2;",
    }

    assert methods_of(files) == ["ok"]


def test_a_missing_module_fails_at_load_naming_it_and_the_requiring_line() -> None:
    message = refusal({"index.js": "const x = 1;\nconst lib = require('./nope');\n"})

    assert message.startswith("index.js:2:13: Error: Cannot find module './nope' "
                              "required from index.js")


def test_node_builtins_are_missing_on_purpose_and_say_so() -> None:
    message = refusal({"index.js": "const fs = require('fs');"})

    assert "Cannot find module 'fs'" in message
    assert "no file system or network" in message


def test_a_syntax_error_in_a_required_file_names_that_file_line_and_column() -> None:
    message = refusal({"index.js": "require('./lib');", "lib.js": "const a = 1;\nlet b = ;\n"})

    assert message.splitlines()[0] == "lib.js:2:9: SyntaxError: Unexpected token ';'"
    assert message.splitlines()[1:] == ["let b = ;", "        ^"]


def test_a_syntax_error_on_the_first_line_has_the_users_column() -> None:
    message = refusal({"index.js": "let b = ;"})

    assert message.splitlines() == ["index.js:1:9: SyntaxError: Unexpected token ';'",
                                    "let b = ;", "        ^"]


def test_a_throw_at_load_points_at_the_users_line_not_inside_json_parse() -> None:
    message = refusal({"index.js": "madrpc.register('a', () => 1);\nconst x = 1;\n"
                                   "JSON.parse('{bad json');\n"})

    assert message.splitlines()[0].startswith("index.js:3:6: SyntaxError:")


def test_es_module_syntax_fails_with_one_line_saying_how_to_bundle() -> None:
    message = refusal({"index.js": "import x from './a.js';\n"})

    first = message.splitlines()[0]
    assert first.startswith("index.js:1:1: SyntaxError: Cannot use import statement")
    assert "esbuild" in first and "--format=cjs" in first


def test_a_broken_json_file_names_it() -> None:
    message = refusal({"index.js": "require('./d.json');", "d.json": "{nope"})

    assert "d.json" in message and "SyntaxError" in message


def test_a_computed_relative_require_still_finds_bundled_files() -> None:
    files = {
        "index.js": "require('./a'); const name = './' + 'a';\n"
                    "if (require(name).x === 1) madrpc.register('ok', () => 1);",
        "a.js": "exports.x = 1;",
    }

    assert methods_of(files) == ["ok"]


def test_the_runtime_knows_the_module_prefix_length() -> None:
    from importlib import resources

    from madrpc.script_errors import MODULE_PREFIX

    source = (resources.files("madrpc") / "js" / "bootstrap.js").read_text()
    assert f"const MODULE_PREFIX_LENGTH = {len(MODULE_PREFIX)};" in source


def test_a_register_twice_on_line_one_names_the_users_columns() -> None:
    message = refusal({"index.js": "madrpc.register('a', () => 1); madrpc.register('a', () => 2);"})

    assert "already registered at index.js:1:8 (again at index.js:1:39)" in message
