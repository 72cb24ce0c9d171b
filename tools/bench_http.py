"""HTTP through ``madrpc gateway`` against the ZeroMQ path, on the same grid in the same run.

    python tools/bench_http.py                 # 1 and 64 keep-alive connections, 5 s each
    python tools/bench.py --only http          # the same, as a section of the bench

HTTP load comes from Debian's ``wrk`` (keep-alive, one POST body repeated); the ZeroMQ
path is the bench's own DEALER load with as many requests in flight as wrk has
connections. Grid: a broker and one worker with 2 contexts running tools/bench.js.
Everything shares the machine's cores with wrk itself, so read the ratios.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import BENCH_SCRIPT, free_port, grid, load, process

BODY = '{"jsonrpc":"2.0","method":"noop","params":[1],"id":1}'
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
CONNECTIONS = (1, 64)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration_s: float) -> dict[str, float]:
    """req/s and latency percentiles (ms) of ``wrk`` POSTing BODY to ``url``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        out = subprocess.run(
            ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration_s:g}s",
             "--latency", "-s", script.name, url],
            check=True, capture_output=True, text=True).stdout
    finally:
        Path(script.name).unlink()
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    figures = {"req_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for percentile in ("50", "99"):
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        figures[f"p{percentile}_ms"] = float(match.group(1)) * _UNITS[match.group(2)]
    return figures


def wait_healthy(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the gateway at {url} did not become healthy")


def bench_http(duration_s: float) -> list[str]:
    if shutil.which("wrk") is None:
        return ["| HTTP gateway | skipped: `wrk` is not installed (apt-get install wrk) | | |"]
    rows = []
    with grid(BENCH_SCRIPT, workers=1, contexts=2) as front:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        with process(sys.executable, "-m", "madrpc.cli", "gateway", "--broker", front,
                     "--listen", f"127.0.0.1:{port}", "--log-level", "warning"):
            wait_healthy(url)
            wrk(url, 1, 1)   # warm up
            for connections in CONNECTIONS:
                over_http = wrk(url, connections, duration_s)
                over_zeromq = load(front, connections, duration_s)
                rows.append(
                    f"| trivial call, {connections:>2} keep-alive connection(s) vs {connections}"
                    f" in flight | HTTP {over_http['req_s']:7.0f} req/s, p50 "
                    f"{over_http['p50_ms']:.2f} ms, p99 {over_http['p99_ms']:.2f} ms | ZeroMQ "
                    f"{over_zeromq['req_s']:7.0f} req/s, p50 {over_zeromq['p50_ms']:.2f} ms, "
                    f"p99 {over_zeromq['p99_ms']:.2f} ms | HTTP/ZeroMQ "
                    f"**{over_http['req_s'] / over_zeromq['req_s']:.0%}** |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    args = parser.parse_args()
    print("| case | HTTP (wrk) | ZeroMQ (DEALER) | ratio |\n|---|---|---|---|")
    for row in bench_http(args.duration):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
