"""Which modules the build compiles, and how the package tells whether they run compiled
or changed since they were built (madrpc.native_modules)."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

from madrpc import native_modules as native
from madrpc.native_modules import NATIVE_MODULES, compiled_modules, stale_modules, summary

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def fake_checkout(root: Path, compiled: list[str], checkout: bool = True) -> Path:
    """A package directory with every module's source and ``compiled`` ones built."""
    package = root / "madrpc"
    package.mkdir(parents=True)
    if checkout:
        (root / "setup.py").write_text("")
    for name in NATIVE_MODULES:
        (package / f"{name}.py").write_text("")
    for name in compiled:
        (package / f"{name}{SUFFIX}").write_bytes(b"")
    return package


def age(path: Path, seconds: float) -> None:
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_every_module_the_build_compiles_exists() -> None:
    package = Path(native.__file__).parent
    missing = [name for name in NATIVE_MODULES if not (package / f"{name}.py").exists()]
    assert missing == []
    assert len(set(NATIVE_MODULES)) == len(NATIVE_MODULES)


def test_no_compiled_module_is_one_that_runs_as_a_script() -> None:
    """``python -m madrpc.engine`` (the worker starts its engines so) fails with "No code
    object available" when the module is compiled."""
    package = Path(native.__file__).parent
    scripts = [name for name in NATIVE_MODULES
               if '__name__ == "__main__"' in (package / f"{name}.py").read_text()]
    assert scripts == []
    assert '__name__ == "__main__"' in (package / "engine.py").read_text()


def test_compiled_modules_are_those_with_an_extension_beside_them(tmp_path: Path) -> None:
    package = fake_checkout(tmp_path, ["broker", "worker"])
    assert compiled_modules(package) == ["broker", "worker"]
    assert summary(package) == f"request path compiled: 2 of {len(NATIVE_MODULES)} modules"
    assert summary(fake_checkout(tmp_path / "pure", [])) == "request path in plain Python"


def test_a_source_changed_after_its_build_is_stale_in_a_checkout(tmp_path: Path) -> None:
    package = fake_checkout(tmp_path, ["broker", "worker"])
    age(package / f"broker{SUFFIX}", 60)                       # edited a minute after
    age(package / f"worker{SUFFIX}", native.STALE_TOLERANCE_S / 2)   # same build
    assert stale_modules(package) == ["broker"]


def test_an_installed_wheel_is_never_stale(tmp_path: Path) -> None:
    package = fake_checkout(tmp_path, ["broker"], checkout=False)
    age(package / f"broker{SUFFIX}", 60)
    assert stale_modules(package) == []


def test_the_installed_request_path_is_compiled_whole_and_current() -> None:
    """A partial build would mix compiled and plain modules; a stale one would run code
    that is not in the checkout. With MADRPC_REQUIRE_NATIVE=1 (CI) the build must have
    compiled: a change mypyc cannot compile fails here, not silently in production."""
    compiled = compiled_modules()
    assert compiled in ([], list(NATIVE_MODULES))
    assert stale_modules() == []
    if os.environ.get(native.REQUIRE_ENV) == "1" and not compiled:
        pytest.fail("the request path is not compiled: see the build's output "
                    "(pip install -v -e .) for why mypyc did not compile it")


PER_REQUEST_CLASSES = [
    ("worker_tables", "LocalRequest"), ("worker_tables", "StepInput"),
    ("broker_tables", "Request"), ("jsonrpc", "Call"), ("protocol", "RequestMeta"),
    ("engine_payload", "StepEntry"), ("engine_payload", "Reply"), ("protocol", "Message"),
    ("engine_protocol", "Output"),
]


@pytest.mark.parametrize(("module", "name"), PER_REQUEST_CLASSES)
def test_classes_built_per_request_write_their_own_init(module: str, name: str) -> None:
    """Compiled, such an ``__init__`` is C; the one ``@dataclass`` would generate is
    Python source compiled from a string at import time, and runs interpreted."""
    cls = getattr(importlib.import_module(f"madrpc.{module}"), name)
    code = getattr(cls.__dict__["__init__"], "__code__", None)   # none when compiled
    assert code is None or code.co_filename.endswith(f"{module}.py")
