"""Script bundles: finding requires, Node.js's resolution, collecting from disk, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from madrpc import bundle as b
from madrpc.errors import ScriptError


def files_resolver(files: dict[str, str]) -> tuple[b.Exists, b.Read]:
    return files.__contains__, files.get


def resolve(spec: str, from_file: str, files: dict[str, str]) -> str | None:
    return b.resolve(spec, from_file, *files_resolver(files))


def test_find_requires_takes_literal_names_once_each_in_order() -> None:
    source = """const a = require('./a'); const b = require("b/x");
    require(`./c`); require('./a'); require(name); require(`./${x}`); requires('no');"""

    assert b.find_requires(source) == ["./a", "b/x", "./c"]


@pytest.mark.parametrize(("spec", "found"), [
    ("./lib", "lib.js"),
    ("./lib.js", "lib.js"),
    ("./data", "data.json"),
    ("./dir", "dir/index.js"),
    ("./pkgdir", "pkgdir/main.js"),
    ("../escape", None),
    ("/abs", None),
    ("fs", None),
    ("node:fs", None),
])
def test_relative_and_builtin_names_resolve_as_node_does(spec: str, found: str | None) -> None:
    files = {"index.js": "", "lib.js": "", "data.json": "{}", "dir/index.js": "",
             "pkgdir/package.json": '{"main": "main.js"}', "pkgdir/main.js": ""}

    assert resolve(spec, "index.js", files) == found


def test_bare_names_are_found_in_node_modules_walking_up_to_the_root() -> None:
    files = {"src/deep/a.js": "", "node_modules/pkg/package.json": '{"main": "lib/m"}',
             "node_modules/pkg/lib/m.js": "", "node_modules/@s/p/index.js": "",
             "node_modules/pkg/util.js": ""}

    assert resolve("pkg", "src/deep/a.js", files) == "node_modules/pkg/lib/m.js"
    assert resolve("@s/p", "src/deep/a.js", files) == "node_modules/@s/p/index.js"
    assert resolve("pkg/util", "src/deep/a.js", files) == "node_modules/pkg/util.js"
    assert resolve("missing", "src/deep/a.js", files) is None


def test_a_nearer_node_modules_wins() -> None:
    files = {"a/b.js": "", "a/node_modules/x/index.js": "", "node_modules/x/index.js": ""}

    assert resolve("x", "a/b.js", files) == "a/node_modules/x/index.js"


def test_collect_follows_requires_from_a_folder_and_takes_only_what_is_needed(
    tmp_path: Path,
) -> None:
    (tmp_path / "index.js").write_text("require('./lib'); require('pkg');")
    (tmp_path / "lib.js").write_text("module.exports = require('./data.json');")
    (tmp_path / "data.json").write_text('{"a": 1}')
    (tmp_path / "unused.js").write_text("never required")
    package = tmp_path / "node_modules" / "pkg"
    package.mkdir(parents=True)
    (package / "package.json").write_text('{"main": "main.js"}')
    (package / "main.js").write_text("exports.x = 1;")

    bundle = b.collect(str(tmp_path))

    assert bundle.entry == "index.js"
    assert sorted(bundle.files) == ["data.json", "index.js", "lib.js",
                                    "node_modules/pkg/main.js",
                                    "node_modules/pkg/package.json"]
    assert bundle.links()["index.js"] == {"./lib": "lib.js", "pkg": "node_modules/pkg/main.js"}
    assert bundle.display("lib.js") == str(tmp_path / "lib.js")


def test_a_folder_needs_an_index_or_a_package_main(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="index.js"):
        b.collect(str(tmp_path))
    (tmp_path / "package.json").write_text('{"main": "start.js"}')
    (tmp_path / "start.js").write_text("")

    assert b.collect(str(tmp_path)).entry == "start.js"


def test_the_version_is_a_hash_of_the_code_not_of_where_it_lies(tmp_path: Path) -> None:
    one = b.Bundle("index.js", {"index.js": "x", "a.js": "y"}, origin="/here")
    same = b.Bundle("index.js", {"a.js": "y", "index.js": "x"}, origin="/elsewhere")
    other = b.Bundle("index.js", {"index.js": "x", "a.js": "z"})

    assert one.version == same.version != other.version
    assert len(one.version) == b.VERSION_CHARS


def test_decode_round_trips_and_refuses_what_is_not_a_bundle() -> None:
    bundle = b.Bundle("index.js", {"index.js": "x", "lib/a.js": "y"})

    assert b.decode(bundle.encode()) == bundle
    for bad, message in [
        (b"nope", "not JSON"),
        (b'{"entry": 1, "files": {}}', "a bundle is"),
        (b'{"entry": "a.js", "files": {"b.js": ""}}', "entry"),
        (b'{"entry": "../a.js", "files": {"../a.js": ""}}', "plain relative path"),
        (b'{"entry": "/a.js", "files": {"/a.js": ""}}', "plain relative path"),
        (b'{"entry": "a.js", "files": {"a.js": 3}}', "a bundle is"),
    ]:
        with pytest.raises(ScriptError, match=message):
            b.decode(bad)


def test_limits_hold_for_files_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(b, "MAX_BUNDLE_FILES", 2)
    with pytest.raises(ScriptError, match="MAX_BUNDLE_FILES"):
        b.decode(b.Bundle("a", {"a": "", "b": "", "c": ""}).encode())
    monkeypatch.setattr(b, "MAX_BUNDLE_BYTES", 10)
    with pytest.raises(ScriptError, match="MAX_BUNDLE_BYTES"):
        b.decode(b.Bundle("a", {"a": "x" * 11}).encode())
