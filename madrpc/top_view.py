"""What ``madrpc top`` shows, as pure functions: a ``_metrics`` snapshot in, lines out.

Each screen line is a list of ``(text, style)`` segments; the curses shell maps styles to
colours, and :func:`plain` joins them for ``--once`` and tests. Nothing here touches a
terminal, a socket or a clock. Every line fits the width it is given, from 80 columns up:
figures are abbreviated to fit (239k, 1.2G, 12ms), never cut (see :mod:`madrpc.table_view`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .table_view import (
    OPTIONAL,
    Column,
    Field,
    bytes_forms,
    count_forms,
    ellipsize,
    fit,
    fit_fields,
    ms_forms,
    percent_forms,
    rate_forms,
    seconds_forms,
    table_lines,
    text_forms,
)

__all__ = [
    "METHOD_COLUMNS", "METHOD_SORTS", "WORKER_COLUMNS", "WORKER_SORTS", "Sort", "ViewState",
    "plain", "render", "sparkline", "worker_health", "worker_state",
]

Segment = tuple[str, str]
Line = list[Segment]
Row = Mapping[str, Any]

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_ASCII = "_.-=+*#@"
VERSION_CHARS = 7
"""A script version (a content hash) is shown by its first characters, as git does."""


class Sort(NamedTuple):
    """A sort order of one view's table."""

    label: str
    """As the footer names the current order: "[workers by p99 latency]"."""
    hints: tuple[str, ...]
    """As the footer names the key, fullest first: "l latency" or "l p99"."""
    key: Callable[[Row], Any]
    descending: bool


def _figure(name: str) -> Callable[[Row], float]:
    def figure(row: Row) -> float:
        value = row.get(name)
        return float(value) if isinstance(value, (int, float)) else 0.0
    return figure


WORKER_SORTS: dict[str, Sort] = {
    "r": Sort("req/s", ("req/s",), _figure("req_per_s"), True),
    "l": Sort("p99 latency", ("latency", "p99"), _figure("p99_ms"), True),
    "e": Sort("errors", ("errors", "err"), _figure("errors"), True),
    "c": Sort("cpu", ("cpu",), _figure("cpu_percent"), True),
    "n": Sort("name", ("name",), lambda w: str(w.get("id")), False),
}
METHOD_SORTS: dict[str, Sort] = {
    "r": Sort("requests", ("requests", "reqs"), _figure("requests"), True),
    "l": Sort("p99 latency", ("latency", "p99"), _figure("p99_ms"), True),
    "e": Sort("errors", ("errors", "err"), _figure("errors"), True),
    "n": Sort("name", ("name",), lambda m: str(m.get("name")), False),
}
"""Each view sorts its own table: the methods view has no CPU, and req/s is requests."""


@dataclass
class ViewState:
    """What the user chose: the view, each view's sort order, the scroll position."""

    sort: str = "r"
    """The workers view's sort key."""
    method_sort: str = "r"
    """The methods view's sort key."""
    methods: bool = False
    scroll: int = 0
    unicode: bool = True

    def sorts(self) -> dict[str, Sort]:
        """The sort keys of the current view (the ones its footer offers)."""
        return METHOD_SORTS if self.methods else WORKER_SORTS

    def current_sort(self) -> Sort:
        sorts = self.sorts()
        return sorts.get(self.method_sort if self.methods else self.sort, sorts["r"])

    def handle_key(self, key: str) -> bool:
        """Apply a key press; False for keys that mean nothing in the current view."""
        if key in self.sorts():
            if self.methods:
                self.method_sort = key
            else:
                self.sort = key
            self.scroll = 0
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

    def ellipsis(self) -> str:
        return "…" if self.unicode else "~"


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
    lines: list[Line] = [_title(snapshot, view, endpoint, width, clock)]
    if status is not None:
        lines.append([(ellipsize(status, width, view.ellipsis()), "bad")])
    if snapshot is None:
        waiting = ellipsize("waiting for the first snapshot ...", width, view.ellipsis())
        lines.append([(waiting, "dim")])
        return _screen(lines, [], view, height, width)
    lines += _summary(snapshot, view, width)
    lines.append([])
    if view.methods:
        table = _methods_table(snapshot.get("methods") or {}, view, width)
    else:
        table = _workers_table(snapshot.get("workers") or [], view, width)
    return _screen(lines, table, view, height, width)


def _screen(top: list[Line], table: list[Line], view: ViewState, height: int,
            width: int) -> list[Line]:
    """Header lines, then as much of the table as fits (scrolled), then the footer."""
    footer = _footer(view, width)
    if not table:
        return (top + [footer])[:height]
    room = max(0, height - len(top) - 2)   # the table's header line and the footer
    head, rows = table[0], table[1:]
    view.scroll = max(0, min(view.scroll, max(0, len(rows) - room)))
    shown = rows[view.scroll:view.scroll + room]
    more = len(rows) - view.scroll - len(shown)
    if more > 0 and shown:
        text = f"... {more + 1} more (arrows / PgDn to scroll)"
        shown[-1] = [(ellipsize(text, width, view.ellipsis()), "dim")]
    lines = top + [head] + shown
    lines += [[] for _ in range(max(0, height - len(lines) - 1))]
    return (lines + [footer])[:height]


def _title(snapshot: dict[str, Any] | None, view: ViewState, endpoint: str, width: int,
           clock: str) -> Line:
    """``madrpc top``, the endpoint, uptime, workers, the grid's script version; the clock
    at the right. The rest is shortened (and then left out) before the endpoint is cut."""
    clock = f" {clock}" if clock and width >= 30 else ""
    room = width - len(clock)
    fields = [Field(["madrpc top"], rank=0),
              Field(text_forms(endpoint, 12, view.ellipsis()), rank=1)]
    if snapshot is not None:
        broker = snapshot.get("broker") or {}
        workers = fit(count_forms(broker.get("workers", 0)), 5)
        contexts = fit(count_forms(broker.get("contexts", 0)), 5)
        fields += [
            Field([f"up {_duration(broker.get('uptime_s'))}"], rank=3),
            Field([f"workers {workers} ({contexts} contexts)",
                   f"workers {workers} ({contexts} ctx)", f"workers {workers}"], rank=2),
        ]
        version = snapshot.get("script_version") or broker.get("script_version")
        if version:
            short = str(version)[:VERSION_CHARS]
            fields.append(Field([f"version {short}", f"ver {short}"], rank=4))
    text = "".join(part for part, _ in fit_fields(fields, room))
    return [(text.ljust(room), "title"), (clock, "title")] if clock else [(text, "title")]


def _labelled(labels: Sequence[str], values: Sequence[str]) -> list[str]:
    """Each value with each label, exact values first: "requests 90328", "reqs 90328" ..."""
    return [f"{label} {value}" for value in values for label in labels]


def _summary(snapshot: dict[str, Any], view: ViewState, width: int) -> list[Line]:
    broker = snapshot.get("broker") or {}
    rate = fit(rate_forms(broker.get("req_per_s") or 0.0), 9)
    label = f"req/s {rate:>9}  " if width >= 17 else f"req/s {rate}"
    history = snapshot.get("rate_history") or []
    spark = sparkline(history, max(0, min(60, width - len(label) - 2)), view.unicode)
    errors, dropped = broker.get("errors") or 0, broker.get("dropped_frames") or 0
    latency = broker.get("latency") or {}

    def field(labels: Sequence[str], forms: list[str], rank: int, style: str = "normal",
              ) -> Field:
        return Field(_labelled(labels, forms), style, rank)

    totals = [
        field(("in flight", "infl"), count_forms(broker.get("in_flight", 0)), 1),
        field(("queued",), count_forms(broker.get("queue_depth", 0)), 2),
        field(("clients",), count_forms(broker.get("clients_seen", 0)), 5),
        field(("requests", "reqs"), count_forms(broker.get("requests", 0)), 1),
        field(("requeued",), count_forms(broker.get("requeued", 0)), 4),
        field(("errors", "err"), count_forms(errors), 0, "bad" if errors else "normal"),
        field(("dropped", "drop"), count_forms(dropped), 3, "warn" if dropped else "normal"),
    ]
    process = [
        field(("latency p50", "p50"), ms_forms(latency.get("p50_ms")), 1),
        field(("p95",), ms_forms(latency.get("p95_ms")), 2),
        field(("p99",), ms_forms(latency.get("p99_ms")), 1),
        field(("broker cpu", "cpu"), percent_forms(broker.get("cpu_percent")), 3),
        field(("rss",), bytes_forms(broker.get("rss_bytes")), 3),
    ]
    return [[(label, "bold"), (spark, "spark")], fit_fields(totals, width),
            fit_fields(process, width)]


def _count(name: str) -> Callable[[Row], list[str]]:
    return lambda row: count_forms(row.get(name) or 0)


def _forms(name: str, forms: Callable[[Any], list[str]]) -> Callable[[Row], list[str]]:
    return lambda row: forms(row.get(name))


def worker_state(worker: Row) -> str:
    """draining, paused, lost (two heartbeats missed), late (one), busy or idle."""
    missed = worker.get("missed_heartbeats") or 0
    if worker.get("draining"):
        return "draining"
    if worker.get("paused"):
        return "paused"
    if missed >= 2:
        return "lost"
    if missed >= 1:
        return "late"
    return "busy" if worker.get("busy") or worker.get("in_flight") else "idle"


def _state_forms(worker: Row) -> list[str]:
    state = worker_state(worker)
    return [state, {"draining": "drain", "paused": "pause"}.get(state, state)]


def _circuit_forms(worker: Row) -> list[str]:
    state = str((worker.get("circuit") or {}).get("state", "-"))
    return [state.replace("_", "-"), "half"] if state == "half_open" else [state]


def _version_forms(worker: Row) -> list[str]:
    version = worker.get("script_version")
    return [str(version)[:VERSION_CHARS] if version else "-"]


WORKER_COLUMNS: list[Column] = [
    # title, short title, narrowest, full, forms, rank (the highest are left out first)
    Column("WORKER", "WORKER", 10, 24, lambda w: [str(w.get("id"))], 0, text=True),
    Column("PID", "PID", 5, 8, _forms("pid", count_forms), OPTIONAL + 2),
    Column("CTX", "CTX", 3, 4, _count("contexts"), OPTIONAL + 3),
    Column("BUSY", "BUSY", 4, 5, _count("busy"), OPTIONAL + 3),
    Column("INFL", "INFL", 4, 5, _count("in_flight"), 3),
    Column("REQ/S", "REQ/S", 5, 8, _forms("req_per_s", rate_forms), 1),
    Column("REQS", "REQS", 4, 9, _count("requests"), 2),
    Column("ERR", "ERR", 4, 6, _count("errors"), 2),
    Column("P50", "P50", 5, 8, _forms("p50_ms", ms_forms), OPTIONAL + 1),
    Column("P99", "P99", 5, 8, _forms("p99_ms", ms_forms), 3),
    Column("CPU%", "CPU%", 4, 6, _forms("cpu_percent", percent_forms), 4),
    Column("RSS", "RSS", 4, 6, _forms("rss_bytes", bytes_forms), 4),
    Column("HB AGE", "HB", 4, 6, lambda w: seconds_forms(w.get("heartbeat_age_s"), False), 5),
    Column("STATE", "STATE", 5, 8, _state_forms, 2, text=True),
    Column("CIRCUIT", "CIRCUIT", 7, 9, _circuit_forms, 4, text=True),
    Column("VERSION", "VERSION", VERSION_CHARS, VERSION_CHARS, _version_forms, 5, text=True),
]
"""Those below OPTIONAL all fit at 80 columns; wider screens add the rest, fuller figures
and longer ids. VERSION appears when the broker reports workers' script versions."""

METHOD_COLUMNS: list[Column] = [
    Column("METHOD", "METHOD", 10, 30, lambda m: [str(m.get("name"))], 0, text=True),
    Column("WORKERS", "WKRS", 4, 7, _count("workers"), 3),
    Column("QUEUED", "QUEUE", 5, 7, _count("queued"), 2),
    Column("REQS", "REQS", 5, 10, _count("requests"), 1),
    Column("ERR", "ERR", 4, 7, _count("errors"), 1),
    Column("P50", "P50", 5, 9, _forms("p50_ms", ms_forms), 3),
    Column("P95", "P95", 5, 9, _forms("p95_ms", ms_forms), 4),
    Column("P99", "P99", 5, 9, _forms("p99_ms", ms_forms), 2),
    Column("MEAN", "MEAN", 5, 9, _forms("mean_ms", ms_forms), 4),
]


def worker_health(worker: Row) -> str:
    """'bad' (circuit open, or silent), 'warn' (missed heartbeats, errors), else 'ok'."""
    circuit = (worker.get("circuit") or {}).get("state", "closed")
    missed = worker.get("missed_heartbeats") or 0
    if circuit != "closed" or missed >= 2:
        return "bad"
    if missed >= 1 or (worker.get("errors") or 0) > 0:
        return "warn"
    return "ok"


def _sorted(rows: Sequence[Row], sort: Sort, name: str) -> list[Row]:
    """By ``sort``; ties by name."""
    by_name = sorted(rows, key=lambda row: str(row.get(name)))
    return sorted(by_name, key=sort.key, reverse=sort.descending)


def _table(columns: list[Column], rows: list[Row], view: ViewState, width: int,
           style: Callable[[Row], str], empty: str) -> list[Line]:
    heading, cells = table_lines(columns, rows, width, view.ellipsis())
    lines: list[Line] = [[(heading, "heading")]]
    lines += [[(text, style(row))] for text, row in zip(cells, rows, strict=True)]
    return lines if rows else lines + [[(ellipsize(empty, width, view.ellipsis()), "dim")]]


def _workers_table(workers: list[Row], view: ViewState, width: int) -> list[Line]:
    columns = WORKER_COLUMNS
    if not any(w.get("script_version") for w in workers):
        columns = [c for c in columns if c.title != "VERSION"]
    ordered = _sorted(workers, view.current_sort(), "id")
    return _table(columns, ordered, view, width, worker_health, "no workers registered")


def _methods_table(methods: dict[str, Any], view: ViewState, width: int) -> list[Line]:
    rows = [{**(stats or {}), "name": name} for name, stats in methods.items()]
    ordered = _sorted(rows, view.current_sort(), "name")
    return _table(METHOD_COLUMNS, ordered, view, width,
                  lambda m: "warn" if m.get("errors") else "ok", "no methods yet")


def _footer(view: ViewState, width: int) -> Line:
    """The current view and order, and the keys that work in this view."""
    view_name, other = ("methods", "workers") if view.methods else ("workers", "methods")
    sort = view.current_sort()
    fields = [Field([f"[{view_name} by {sort.label}]", f"[{view_name} by {sort.hints[-1]}]",
                     f"[{view_name}]"], rank=1)]
    fields += [Field([f"{key} {hint}" for hint in each.hints], rank=2)
               for key, each in view.sorts().items()]
    scroll = ("↑↓ scroll", "↑↓") if view.unicode else ("arrows scroll", "arrows")
    fields += [Field([f"m {other}"], rank=0), Field(scroll, rank=3), Field(["q quit"], rank=0)]
    text = "".join(part for part, _ in fit_fields(fields, width))
    return [(text.ljust(width), "footer")]


def plain(lines: list[Line]) -> str:
    """The screen as text, one line per line, styles dropped."""
    return "\n".join("".join(text for text, _ in line).rstrip() for line in lines)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
