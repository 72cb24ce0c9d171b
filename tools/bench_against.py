"""Goal 5 of issue 13 ("nothing else gets slower") as one command: sections of
tools/bench.py run on a build from before a change and on this one, alternating, and
printed side by side.

    pip install --no-deps --target /tmp/before <a checkout of the commit before>  # ~2 min
    python tools/bench_against.py /tmp/before            # goal 5's sections, 2 rounds each
    python tools/bench_against.py /tmp/before --rounds 3 --only rpc -- --duration 5

``BEFORE`` is a directory from which ``import madrpc`` gets the old build (what ``pip
install --target`` makes, or a source tree). This checkout's ``tools/bench.py`` measures
both, so the two differ only in the code under test. Each run is a child process
started from a scratch working directory: ``python -m`` puts the working directory
first on the module path, so a run started inside a source tree would import that
tree's interpreted modules instead of the build (a compiled grid ran ~25% fewer calls
per second that way). The child's ``PYTHONPATH`` is ``BEFORE`` for the old build, and
this process's own for the new one (what this interpreter imports). Arguments after ``--`` go to
bench.py itself.

For every row, both figures bench.py prints (its ``measured`` and ``baseline`` cells)
are compared: the median of the rounds of each build, their range, and after/before.
Whether lower or higher is better is read from the unit (a rate, ``/s``, is better
higher; a time is better lower). The machine is noisy: read a change against the range
of the rounds, not as a verdict.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
BENCH = TOOLS / "bench.py"
GOAL5_SECTIONS = ("nested", "stream", "metrics", "fanout", "fresh")
"""What goal 5 names: nested calls, streaming and the cost of metrics, plus the JS
fan-out and fresh contexts."""
DEFAULT_ROUNDS = 2
BUILDS = ("before", "after")
_FIGURE = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*([^\d]*?)\s*$")
_WHICH_BUILD = ("import madrpc, madrpc.native_modules as n; "
                "print(madrpc.__file__); print(n.summary())")


def last_figure(cell: str) -> tuple[float, str] | None:
    """The last number in a cell and the unit after it: ``"1 context 0.225 s"`` ->
    ``(0.225, "s")``, ``"on 32,263 req/s"`` -> ``(32263.0, "req/s")``."""
    match = _FIGURE.search(cell.replace("*", ""))
    if match is None:
        return None
    return float(match.group(1).replace(",", "")), match.group(2)


def higher_is_better(unit: str) -> bool:
    return "/s" in unit


def table_rows(output: str) -> dict[str, tuple[str, str]]:
    """``case -> (measured, baseline)`` for every data row of bench.py's tables."""
    rows: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("case", "goal") or not cells[0].strip("-"):
            continue
        rows[cells[0]] = (cells[1], cells[2])
    return rows


@dataclass
class Figures:
    """One figure of one row across the rounds of both builds."""

    unit: str
    values: dict[str, list[float]] = field(default_factory=lambda: {b: [] for b in BUILDS})

    def row(self, label: str) -> str:
        before, after = self.values["before"], self.values["after"]
        both = f"| {label} | {_spread(before, self.unit)} | {_spread(after, self.unit)} |"
        if not before or not after:
            return f"{both} – | – |"
        ratio = statistics.median(after) / statistics.median(before)
        better = "higher" if higher_is_better(self.unit) else "lower"
        return f"{both} **{ratio:.2f}x** | {better} |"


def _spread(values: list[float], unit: str) -> str:
    if not values:
        return "–"
    low, high = min(values), max(values)
    middle = statistics.median(values)
    return f"{_number(middle)} {unit} ({_number(low)}–{_number(high)})"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


class Comparison:
    """Rows of both builds' runs, collected round by round."""

    def __init__(self) -> None:
        self.figures: dict[str, Figures] = {}
        self.order: list[str] = []

    def add(self, build: str, output: str) -> None:
        for case, cells in table_rows(output).items():
            for column, cell in zip(("measured", "baseline"), cells, strict=True):
                figure = last_figure(cell)
                if figure is None:
                    continue
                label = f"{case} [{column}]"
                if label not in self.figures:
                    self.figures[label] = Figures(figure[1])
                    self.order.append(label)
                self.figures[label].values[build].append(figure[0])

    def table(self) -> str:
        lines = ["| case [figure] | before | after | after/before | better |",
                 "|---|---|---|---|---|"]
        lines += [self.figures[label].row(label) for label in self.order]
        return "\n".join(lines)


def build_env(build_path: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = build_path
    return env


def run_bench(build_path: str, workdir: Path, bench_args: list[str]) -> str:
    done = subprocess.run([sys.executable, str(BENCH), *bench_args], cwd=workdir,
                          env=build_env(build_path), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def which_build(build_path: str, workdir: Path) -> str:
    done = subprocess.run([sys.executable, "-c", _WHICH_BUILD], cwd=workdir,
                          env=build_env(build_path), capture_output=True, text=True,
                          check=True)
    location, summary = done.stdout.splitlines()[:2]
    return f"{Path(location).parent} ({summary})"


def split_at_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    """This tool's arguments, and those after ``--`` (bench.py's)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Arguments after -- go to bench.py.")
    parser.add_argument("before", help="a directory from which `import madrpc` gets the "
                                       "build to compare against")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="runs of bench.py per build, alternating (default 2)")
    parser.add_argument("--only", action="append",
                        help="bench.py sections (default: goal 5's, "
                             + ", ".join(GOAL5_SECTIONS) + ")")
    own, bench_extra = split_at_dashes(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(own)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))   # clean up
    before = str(Path(args.before).resolve())
    sections = args.only or list(GOAL5_SECTIONS)
    bench_args = [arg for name in sections for arg in ("--only", name)] + bench_extra
    paths = {"before": before, "after": os.environ.get("PYTHONPATH", "")}
    workdir = Path(tempfile.mkdtemp(prefix="madrpc-bench-against-"))
    try:
        for build in BUILDS:
            print(f"# {build}: {which_build(paths[build], workdir)}", flush=True)
        comparison = Comparison()
        for round_index in range(args.rounds):
            order = BUILDS if round_index % 2 == 0 else BUILDS[::-1]
            for build in order:
                print(f"# round {round_index + 1}: {build}", file=sys.stderr, flush=True)
                comparison.add(build, run_bench(paths[build], workdir, bench_args))
        print(comparison.table())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
