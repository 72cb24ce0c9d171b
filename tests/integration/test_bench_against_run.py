"""tools/bench_against.py for real: bench.py's ``fresh`` section on two builds (this
checkout, and the same package reached through another directory), side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import madrpc

pytestmark = pytest.mark.timeout(180)
TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_against.py"


def scratch_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir())
            if name.startswith("madrpc-bench-against-")}


def test_two_builds_are_measured_in_turn_and_compared_row_by_row(tmp_path: Path) -> None:
    before = tmp_path / "before"
    before.mkdir()
    (before / "madrpc").symlink_to(Path(madrpc.__file__).parent)
    scratch = scratch_dirs()
    tool = subprocess.Popen(
        [sys.executable, str(TOOL), str(before), "--rounds", "2", "--only", "fresh",
         "--", "--runs", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = tool.communicate(timeout=150)
    finally:
        if tool.poll() is None:
            os.killpg(tool.pid, signal.SIGKILL)
            tool.wait()
    assert tool.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"# before: {before / 'madrpc'} (")
    assert lines[1].startswith(f"# after: {Path(madrpc.__file__).parent} (")
    assert err.count("# round 1: before") == 1 and err.count("# round 2: after") == 1
    assert err.index("round 1: before") < err.index("round 1: after")   # alternating
    assert err.index("round 2: after") < err.index("round 2: before")
    rows = [line for line in lines if line.startswith("| trivial call")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| trivial call, one at a time, --fresh-context [measured]",
        "| trivial call, one at a time, --fresh-context [baseline]"]
    for row in rows:   # both builds' medians and ranges, and their ratio
        cells = row.split(" | ")
        assert cells[1].count("ms") == 1 and cells[2].count("ms") == 1
        assert cells[3].startswith("**") and cells[3].endswith("x**")
        assert cells[4] == "lower |"
    assert scratch_dirs() == scratch   # its working directory went
