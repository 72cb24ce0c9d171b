"""Build script. The package itself is described in setup.cfg; this file only adds the
compiled modules: the request path of the broker, the worker and the engines, compiled
with mypyc into C extensions (docs/performance.md, fifth round: a quarter to a third more
calls per second at 64 in flight, single calls up to ~20% quicker).

They are an optimisation, never a requirement: without a C compiler, or with
``MADRPC_PURE=1`` in the environment, the same modules install as plain Python and behave
the same. Set ``MADRPC_PURE=1`` for an editable install you are changing: a compiled module
takes precedence over its ``.py`` file, so an edit would only run after the next build
(``madrpc.native.stale_modules`` names the modules whose source changed since).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent / "madrpc"))
from native_modules import NATIVE_MODULES, PURE_ENV  # noqa: E402

sys.path.pop(0)


class OptionalBuildExt(build_ext):
    """Build the compiled modules if this machine can; install without them if not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure means: pure Python
            print(f"madrpc: not compiling ({exc}); installing plain Python modules",
                  file=sys.stderr)
            self.extensions = []


def native_extensions() -> list:
    if os.environ.get(PURE_ENV) == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("madrpc: mypyc is not available; installing plain Python modules",
              file=sys.stderr)
        return []
    paths = [f"madrpc/{name}.py" for name in NATIVE_MODULES]
    # The build environment lacks some dependencies (mini-racer, psutil): their types are
    # Any here, so a "type: ignore" that strict mypy needs in development is unused.
    options = ["--follow-imports=silent", "--no-warn-unused-ignores"]
    try:
        return list(mypycify([*options, *paths], opt_level="3", group_name="madrpc_native"))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a type error means: pure Python
        print(f"madrpc: mypyc could not compile ({exc}); installing plain Python modules",
              file=sys.stderr)
        return []


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
