"""``madrpc top``: a curses monitor of a running grid, in the manner of htop.

A background thread polls the broker's ``_metrics``; the screen loop only reads keys and
redraws, so the monitor stays responsive while the broker is down ("broker unreachable,
retrying") and picks up again when it returns. What is drawn comes from
:mod:`madrpc.top_view`.
"""

from __future__ import annotations

import contextlib
import curses
import locale
import logging
import threading
import time
from typing import Any

from .client import Client
from .errors import MadrpcError
from .top_view import ViewState, plain, render

__all__ = ["SnapshotFetcher", "once", "run"]

log = logging.getLogger(__name__)

KEY_POLL_MS = 100
"""How often the screen loop looks for key presses."""
_KEYS = {
    curses.KEY_UP: "up", curses.KEY_DOWN: "down", curses.KEY_NPAGE: "pagedown",
    curses.KEY_PPAGE: "pageup", curses.KEY_HOME: "home",
}


class SnapshotFetcher:
    """Polls ``_metrics`` every ``interval_s`` on its own thread; keeps the latest one."""

    def __init__(self, endpoint: str, interval_s: float, **client_options: Any) -> None:
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.client_options = client_options
        """Passed to each :class:`~madrpc.client.Client` (e.g. CURVE keys)."""
        self.snapshot: dict[str, Any] | None = None
        self.status: str | None = "connecting ..."
        self.version = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="madrpc-top", daemon=True)
        self._failing_since: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 5)

    def _run(self) -> None:
        timeout = max(1.0, self.interval_s)
        client = Client(self.endpoint, timeout=timeout, **self.client_options)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.snapshot = client.call("_metrics", idempotency_key=None)
                    self.status = None
                    self._failing_since = None
                except MadrpcError as exc:
                    if self._failing_since is None:
                        self._failing_since = started
                    waited = time.monotonic() - self._failing_since
                    self.status = (f"broker unreachable, retrying ({waited:.0f} s): "
                                   f"{getattr(exc, 'message', exc)}")
                    client.close()
                    client = Client(self.endpoint, timeout=timeout, **self.client_options)
                self.version += 1
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        finally:
            client.close()


def once(endpoint: str, width: int = 160, timeout_s: float = 5.0, **client_options: Any) -> str:
    """One plain-text snapshot (``madrpc top --once``); raises MadrpcError if unreachable."""
    with Client(endpoint, timeout=timeout_s, **client_options) as client:
        snapshot = client.call("_metrics", idempotency_key=None)
    tall = 10_000   # everything, no scrolling
    workers = render(snapshot, ViewState(unicode=False), width, tall, endpoint,
                     clock=time.strftime("%H:%M:%S"))
    methods = render(snapshot, ViewState(methods=True, unicode=False), width, tall, endpoint)
    header = 5   # title, three summary lines, a blank line: the same on both screens
    text = plain(workers[:-1]).rstrip() + "\n\n" + plain(methods[header:-1]).rstrip()
    return text + "\n"


def run(endpoint: str, interval_s: float = 1.0, **client_options: Any) -> int:
    """The interactive monitor; returns when the user presses q."""
    locale.setlocale(locale.LC_ALL, "")
    fetcher = SnapshotFetcher(endpoint, interval_s, **client_options)
    fetcher.start()
    try:
        curses.wrapper(_screen_loop, fetcher)
    finally:
        fetcher.stop()
    return 0


def _styles() -> dict[str, int]:
    styles = {
        "normal": curses.A_NORMAL, "bold": curses.A_BOLD, "dim": curses.A_DIM,
        "title": curses.A_BOLD | curses.A_REVERSE,
        "heading": curses.A_BOLD | curses.A_UNDERLINE,
        "footer": curses.A_REVERSE, "spark": curses.A_BOLD, "ok": curses.A_NORMAL,
        "warn": curses.A_BOLD, "bad": curses.A_BOLD | curses.A_STANDOUT,
    }
    if curses.has_colors():
        curses.start_color()
        curses.use_default_colors()
        for number, colour in ((1, curses.COLOR_GREEN), (2, curses.COLOR_YELLOW),
                               (3, curses.COLOR_RED), (4, curses.COLOR_CYAN)):
            curses.init_pair(number, colour, -1)
        styles.update(ok=curses.color_pair(1), warn=curses.color_pair(2) | curses.A_BOLD,
                      bad=curses.color_pair(3) | curses.A_BOLD,
                      spark=curses.color_pair(4) | curses.A_BOLD)
    return styles


def _screen_loop(screen: Any, fetcher: SnapshotFetcher) -> None:
    curses.curs_set(0)
    screen.timeout(KEY_POLL_MS)
    styles = _styles()
    view = ViewState(unicode="UTF" in locale.getpreferredencoding(False).upper())
    drawn = (-1, "")
    while True:
        key = screen.getch()
        if key in (ord("q"), ord("Q")):
            return
        changed = key == curses.KEY_RESIZE
        if key in _KEYS:
            changed |= view.handle_key(_KEYS[key])
        elif 0 <= key < 256:
            changed |= view.handle_key(chr(key).lower())
        clock = time.strftime("%H:%M:%S")
        if changed or drawn != (fetcher.version, clock):
            drawn = (fetcher.version, clock)
            _draw(screen, fetcher, view, styles, clock)


def _draw(screen: Any, fetcher: SnapshotFetcher, view: ViewState, styles: dict[str, int],
          clock: str) -> None:
    height, width = screen.getmaxyx()
    lines = render(fetcher.snapshot, view, width, height, fetcher.endpoint, fetcher.status,
                   clock)
    screen.erase()
    for y, line in enumerate(lines[:height]):
        x = 0
        for text, style in line:
            if x >= width:
                break
            with contextlib.suppress(curses.error):   # the bottom-right cell refuses
                screen.addnstr(y, x, text, width - x - (1 if y == height - 1 else 0),
                               styles.get(style, curses.A_NORMAL))
            x += len(text)
    screen.refresh()
