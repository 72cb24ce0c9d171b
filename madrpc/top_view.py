"""What ``madrpc top`` shows, as pure functions: a ``_metrics`` snapshot in, lines out.

Each screen line is a list of ``(text, style)`` segments; the curses shell maps styles to
colours, and :func:`plain` joins them for ``--once`` and tests. Nothing here touches a
terminal, a socket or a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SORT_KEYS", "ViewState", "plain", "render", "sparkline", "worker_health"]

Segment = tuple[str, str]
Line = list[Segment]

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_ASCII = "_.-=+*#@"
SORT_KEYS: dict[str, tuple[str, Callable[[dict[str, Any]], Any], bool]] = {
    # key: (label, sort key, descending)
    "r": ("req/s", lambda w: w.get("req_per_s") or 0.0, True),
    "l": ("p99 latency", lambda w: w.get("p99_ms") or 0.0, True),
    "e": ("errors", lambda w: w.get("errors") or 0, True),
    "c": ("cpu", lambda w: w.get("cpu_percent") or 0.0, True),
    "n": ("name", lambda w: str(w.get("id")), False),
}


@dataclass
class ViewState:
    """What the user chose: sort order, view, scroll position."""

    sort: str = "r"
    methods: bool = False
    scroll: int = 0
    unicode: bool = True

    def handle_key(self, key: str) -> bool:
        """Apply a key press; False for keys that mean nothing here."""
        if key in SORT_KEYS:
            self.sort, self.scroll = key, 0
        elif key == "m":
            self.methods, self.scroll = not self.methods, 0
        elif key == "down":
            self.scroll += 1
        elif key == "up":
            self.scroll = max(0, self.scroll - 1)
        elif key == "pagedown":
            self.scroll += 10
        elif key == "pageup":
            self.scroll = max(0, self.scroll - 10)
        elif key == "home":
            self.scroll = 0
        else:
            return False
        return True


def sparkline(values: list[int], width: int, unicode: bool = True) -> str:
    """The last ``width`` values as a bar per value, scaled to the largest."""
    if width <= 0:
        return ""
    values = values[-width:]
    if not values:
        return ""
    blocks = SPARK_BLOCKS if unicode else SPARK_ASCII
    top = max(values)
    if top <= 0:
        return blocks[0] * len(values)
    return "".join(blocks[min(len(blocks) - 1, int(v / top * (len(blocks) - 1) + 0.5))]
                   for v in values)


def render(
    snapshot: dict[str, Any] | None, view: ViewState, width: int, height: int,
    endpoint: str, status: str | None = None, clock: str = "",
) -> list[Line]:
    """The whole screen. ``status`` (e.g. "broker unreachable, retrying") overrides the
    header's state; ``snapshot`` may be stale or None."""
    lines: list[Line] = []
    header = f"madrpc top  {endpoint}"
    if snapshot is not None:
        broker = snapshot.get("broker", {})
        header += (f"  up {_duration(broker.get('uptime_s'))}  workers "
                   f"{broker.get('workers', 0)} ({broker.get('contexts', 0)} contexts)")
    lines.append([(_fit(header, width - len(clock) - 1), "title"), (" " + clock, "title")])
    if status is not None:
        lines.append([(_fit(status, width), "bad")])
    if snapshot is None:
        lines.append([(_fit("waiting for the first snapshot ...", width), "dim")])
        return _screen(lines, [], view, height, width)
    lines += _summary(snapshot, view, width)
    lines.append([])
    if view.methods:
        table = _methods_table(snapshot.get("methods", {}), width)
    else:
        table = _workers_table(snapshot.get("workers", []), view, width)
    return _screen(lines, table, view, height, width)


def _screen(top: list[Line], table: list[Line], view: ViewState, height: int,
            width: int) -> list[Line]:
    """Header lines, then as much of the table as fits (scrolled), then the footer."""
    footer: Line = [(_fit(_footer(view), width), "footer")]
    if not table:
        return (top + [footer])[:height]
    room = max(0, height - len(top) - 2)   # the table's header line and the footer
    head, rows = table[0], table[1:]
    view.scroll = max(0, min(view.scroll, max(0, len(rows) - room)))
    shown = rows[view.scroll:view.scroll + room]
    more = len(rows) - view.scroll - len(shown)
    if more > 0 and shown:
        shown[-1] = [(_fit(f"... {more + 1} more (arrows / PgDn to scroll)", width), "dim")]
    lines = top + [head] + shown
    lines += [[] for _ in range(max(0, height - len(lines) - 1))]
    return (lines + [footer])[:height]


def _summary(snapshot: dict[str, Any], view: ViewState, width: int) -> list[Line]:
    broker = snapshot.get("broker", {})
    rate = broker.get("req_per_s") or 0.0
    history = snapshot.get("rate_history") or []
    label = f"req/s {rate:9.1f}  "
    spark = sparkline(history, max(0, min(60, width - len(label) - 2)), view.unicode)
    errors = broker.get("errors", 0)
    dropped = broker.get("dropped_frames", 0)
    latency = broker.get("latency", {})
    line2 = (f"in flight {broker.get('in_flight', 0)}  queued {broker.get('queue_depth', 0)}"
             f"  clients {broker.get('clients_seen', 0)}  requests {broker.get('requests', 0)}"
             f"  requeued {broker.get('requeued', 0)}")
    line3 = (f"latency p50 {_ms(latency.get('p50_ms'))}  p95 {_ms(latency.get('p95_ms'))}  "
             f"p99 {_ms(latency.get('p99_ms'))}   broker cpu {_pct(broker.get('cpu_percent'))}"
             f"  rss {_mib(broker.get('rss_bytes'))}")
    errors_text, dropped_text = f"  errors {errors}", f"  dropped {dropped}"
    room = max(0, width - len(errors_text) - len(dropped_text))
    return [
        [(label, "bold"), (spark, "spark")],
        [(_fit(line2, room), "normal"),
         (errors_text, "bad" if errors else "normal"),
         (dropped_text, "warn" if dropped else "normal")],
        [(_fit(line3, width), "normal")],
    ]


WORKER_COLUMNS: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = [
    # title, width, getter
    ("WORKER", 22, lambda w: str(w.get("id"))),
    ("PID", 7, lambda w: str(w.get("pid", ""))),
    ("CTX", 4, lambda w: str(w.get("contexts", 0))),
    ("BUSY", 5, lambda w: str(w.get("busy", 0))),
    ("INFL", 5, lambda w: str(w.get("in_flight", 0))),
    ("REQ/S", 8, lambda w: f"{w.get('req_per_s') or 0.0:.1f}"),
    ("REQS", 9, lambda w: str(w.get("requests", 0))),
    ("ERR", 6, lambda w: str(w.get("errors", 0))),
    ("P50ms", 8, lambda w: _ms(w.get("p50_ms"))),
    ("P99ms", 8, lambda w: _ms(w.get("p99_ms"))),
    ("CPU%", 6, lambda w: _pct(w.get("cpu_percent"))),
    ("RSS", 8, lambda w: _mib(w.get("rss_bytes"))),
    ("HB s", 6, lambda w: f"{w.get('heartbeat_age_s') or 0.0:.1f}"),
    ("CIRCUIT", 10, lambda w: str((w.get("circuit") or {}).get("state", "-"))),
]

METHOD_COLUMNS: list[tuple[str, int, Callable[[str, dict[str, Any]], str]]] = [
    ("METHOD", 26, lambda name, m: name),
    ("WORKERS", 8, lambda name, m: str(m.get("workers", 0))),
    ("QUEUED", 7, lambda name, m: str(m.get("queued", 0))),
    ("REQS", 10, lambda name, m: str(m.get("requests", 0))),
    ("ERR", 7, lambda name, m: str(m.get("errors", 0))),
    ("P50ms", 9, lambda name, m: _ms(m.get("p50_ms"))),
    ("P95ms", 9, lambda name, m: _ms(m.get("p95_ms"))),
    ("P99ms", 9, lambda name, m: _ms(m.get("p99_ms"))),
    ("MEANms", 9, lambda name, m: _ms(m.get("mean_ms"))),
]


def worker_health(worker: dict[str, Any]) -> str:
    """'bad' (circuit open, or silent), 'warn' (missed heartbeats, errors), else 'ok'."""
    circuit = (worker.get("circuit") or {}).get("state", "closed")
    missed = worker.get("missed_heartbeats") or 0
    if circuit != "closed" or missed >= 2:
        return "bad"
    if missed >= 1 or (worker.get("errors") or 0) > 0:
        return "warn"
    return "ok"


def _workers_table(workers: list[dict[str, Any]], view: ViewState, width: int) -> list[Line]:
    label, key, descending = SORT_KEYS.get(view.sort, SORT_KEYS["r"])
    ordered = sorted(workers, key=key, reverse=descending)
    head = "".join(title.rjust(size) if i else title.ljust(size)
                   for i, (title, size, _) in enumerate(WORKER_COLUMNS))
    lines: list[Line] = [[(_fit(head, width), "heading")]]
    for worker in ordered:
        cells = "".join(_cell(getter(worker), size, i) for i, (_, size, getter)
                        in enumerate(WORKER_COLUMNS))
        lines.append([(_fit(cells, width), worker_health(worker))])
    if not workers:
        lines.append([("no workers registered", "dim")])
    return lines


def _methods_table(methods: dict[str, Any], width: int) -> list[Line]:
    head = "".join(title.rjust(size) if i else title.ljust(size)
                   for i, (title, size, _) in enumerate(METHOD_COLUMNS))
    lines: list[Line] = [[(_fit(head, width), "heading")]]
    for name in sorted(methods, key=lambda n: -(methods[n].get("requests") or 0)):
        stats = methods[name]
        cells = "".join(_cell(getter(name, stats), size, i) for i, (_, size, getter)
                        in enumerate(METHOD_COLUMNS))
        style = "warn" if (stats.get("errors") or 0) else "ok"
        lines.append([(_fit(cells, width), style)])
    if not methods:
        lines.append([("no methods yet", "dim")])
    return lines


def _footer(view: ViewState) -> str:
    label = SORT_KEYS.get(view.sort, SORT_KEYS["r"])[0]
    table = "methods" if view.methods else f"workers by {label}"
    return (f"[{table}]  r req/s  l latency  e errors  c cpu  n name  "
            f"m {'workers' if view.methods else 'methods'}  arrows scroll  q quit")


def plain(lines: list[Line]) -> str:
    """The screen as text, one line per line, styles dropped."""
    return "\n".join("".join(text for text, _ in line).rstrip() for line in lines)


def _cell(text: str, size: int, index: int) -> str:
    text = text if len(text) < size else text[: size - 2] + "~"
    return text.ljust(size) if index == 0 else text.rjust(size)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _ms(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _pct(value: Any) -> str:
    return f"{value:.0f}%" if isinstance(value, (int, float)) else "-"


def _mib(value: Any) -> str:
    return f"{value / 1048576:.0f}M" if isinstance(value, (int, float)) else "-"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
