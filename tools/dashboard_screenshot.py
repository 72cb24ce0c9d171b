"""Take docs/images/dashboard.png: the web dashboard of a grid under load, at 1280x800.

    python tools/dashboard_screenshot.py                 # about 20 seconds
    python tools/dashboard_screenshot.py --load-s 30 --out /tmp/dashboard.png

Starts a broker (ipc endpoints in a temporary folder), two workers of
examples/simple-test/scripts/simple.js and ``madrpc gateway`` on a free port, opens the
dashboard in headless Chromium (Playwright with /usr/bin/chromium), drives calls for
``--load-s`` seconds, takes the screenshot and stops everything: every process it started
is killed by its process group, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from madrpc import Client

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "simple-test" / "scripts" / "simple.js"
OUT = ROOT / "docs" / "images" / "dashboard.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


class Processes:
    """``madrpc`` commands started in sessions of their own, all killed by :meth:`stop`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.folder / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "madrpc.cli", *args],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self.started.append((name, proc))
        return proc

    def check(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                log = (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} exited with status {proc.returncode}:\n{log}")

    def stop(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for _, proc in self.started:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signum)
            deadline = time.monotonic() + 5
            for _, proc in self.started:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def grid(folder: Path) -> Iterator[tuple[str, str]]:
    """A broker, two workers and a gateway; yields (frontend, dashboard URL)."""
    processes = Processes(folder)
    frontend, backend = f"ipc://{folder}/front", f"ipc://{folder}/back"
    port = free_port()
    try:
        processes.start("broker", "broker", "--frontend", frontend, "--backend", backend)
        for n in (1, 2):
            processes.start(f"worker{n}", "worker", "--broker", backend, "--script",
                            str(SCRIPT), "--contexts", "2")
        processes.start("gateway", "gateway", "--broker", frontend,
                        "--listen", f"127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}/"
        with Client(frontend, timeout=5) as client:
            def ready() -> bool:
                processes.check()
                return len(client.call("_metrics")["workers"]) == 2 and healthy(url)

            wait_until(ready, "two workers and the gateway")
        yield frontend, url
    finally:
        processes.stop()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def drive(frontend: str, load_s: float, stop: threading.Event) -> None:
    """Calls until ``stop``, more at once as time goes for ``load_s`` seconds (a rising
    chart), with a few other methods beside the main one."""
    started = time.monotonic()
    with Client(frontend, timeout=30) as client:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            window = 2 + int(14 * min(1.0, elapsed / load_s))
            client.map("slow_square", [[i, 3] for i in range(window * 4)], max_in_flight=window)
            client.map("add", [[i, i] for i in range(window * 8)], max_in_flight=window)
            client.call("greet", {"name": "dashboard"})
            if int(elapsed) % 3 == 0:
                client.call("sum_of_squares", [8])


def screenshot(url: str, frontend: str, load_s: float, out: Path, profile: Path) -> None:
    from playwright.sync_api import sync_playwright

    stop = threading.Event()
    load = threading.Thread(target=drive, args=(frontend, load_s, stop), daemon=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1280, "height": 800})
        try:
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#status[data-state=live]")
            load.start()
            time.sleep(load_s)   # the screenshot is taken under load
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            stop.set()
            load.join(30)
            context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the PNG")
    parser.add_argument("--load-s", type=float, default=10.0, help="seconds of load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mdr-shot-") as temp:
        folder = Path(temp)
        with grid(folder) as (frontend, url):
            screenshot(url, frontend, args.load_s, args.out.resolve(), folder / "chromium")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
