"""Estimate pi with 50 Monte Carlo jobs fanned out from Python with Client.map.

    python examples/monte-carlo-pi/estimate_pi.py                 # embedded local grid
    python examples/monte-carlo-pi/estimate_pi.py tcp://127.0.0.1:5555   # a running grid
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from madrpc import Client, LocalGrid

SCRIPT = Path(__file__).parent / "scripts" / "pi.js"
JOBS = 50
SAMPLES_PER_JOB = 1_000_000


def estimate(client: Client) -> float:
    params = [{"samples": SAMPLES_PER_JOB, "seed": seed} for seed in range(JOBS)]
    done = 0

    def progress(completed: int) -> None:   # called as jobs finish
        nonlocal done
        done += completed
        print(f"\r{done}/{JOBS} jobs done", end="", file=sys.stderr, flush=True)

    results = client.map("monte_carlo_sample", params, progress=progress)
    print(file=sys.stderr)
    inside = sum(r["inside"] for r in results)
    total = sum(r["total"] for r in results)
    return 4 * inside / total


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    if argv:
        with Client(argv[0], timeout=300) as client:
            pi = estimate(client)
    else:
        with LocalGrid(str(SCRIPT)) as grid:
            pi = estimate(grid.client(timeout_s=300))
    elapsed = time.perf_counter() - start
    print(f"pi ~ {pi:.6f} (error {abs(pi - math.pi):.6f}) from {JOBS} x {SAMPLES_PER_JOB:,} "
          f"samples in {elapsed:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
