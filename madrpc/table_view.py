"""Views of tables: a read-only mapping over a table's dict, and text tables fitted to a width.

The broker's and the worker's tables (requests, workers) are mappings to read, with
their own methods to change them; lookups are on the per-request path, so they go to
the dict directly rather than through ``Mapping``'s generic methods (:class:`TableView`).

The rest lays figures out in a terminal's width (for ``madrpc top``, pure): each value comes
as its *forms*, fullest first (``239017``, ``239.02k``, ``239k``), and a cell or a field
shows the fullest form that fits, so a number is abbreviated and never cut; text (an id, a
name) is cut with an ellipsis, and never inside a number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "OPTIONAL", "Column", "Field", "TableView", "abbreviate", "bytes_forms", "count_forms",
    "ellipsize", "fit", "fit_fields", "layout", "ms_forms", "percent_forms", "rate_forms",
    "seconds_forms", "table_lines", "text_forms",
]

K = TypeVar("K")
V = TypeVar("V")


class TableView(Mapping[K, V]):
    """Read access to ``self._rows``; subclasses change it through their own methods."""

    def __init__(self, rows: dict[K, V]) -> None:
        self._rows = rows

    def __getitem__(self, key: K) -> V:
        return self._rows[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._rows.get(key, default)

    def values(self) -> ValuesView[V]:
        return self._rows.values()


# ------------------------------------------------------------------ forms of a value

Units = Sequence[tuple[float, str]]
COUNT_UNITS: Units = ((1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T"),
                      (1e15, "P"), (1e18, "E"))
BYTE_UNITS: Units = tuple((1024.0 ** i, suffix) for i, suffix in enumerate("BKMGTPE"))
SECOND_UNITS: Units = ((1e-6, "us"), (1e-3, "ms"), (1.0, "s"), (60.0, "m"), (3600.0, "h"),
                       (86400.0, "d"))
SHORT = 4
"""An abbreviation stops adding decimals once it is this short (1.2k, not 1k)."""
_TRAILING_NUMBER = re.compile(r"[:#@/._-]\d+$")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _strip(text: str) -> str:
    """``12.50`` → ``12.5``, ``12.00`` → ``12``."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(value: float, units: Units) -> list[str]:
    """``value`` in the largest unit it reaches, two decimals down to none (stopping at the
    first form ``SHORT`` long); then in the next unit if rounding reaches it or makes four
    digits (999.9k is 1000k, then 1M; 1023M, then 1G)."""
    size, i, forms = abs(value), 0, []
    while i + 1 < len(units) and size >= units[i + 1][0]:
        i += 1
    while True:
        factor, suffix = units[i]
        for decimals in (2, 1, 0):
            forms.append(_strip(f"{value / factor:.{decimals}f}") + suffix)
            if len(forms[-1]) <= SHORT:
                break
        whole = round(size / factor)
        if i + 1 == len(units) or (whole < 1000 and whole * factor < units[i + 1][0]):
            return list(dict.fromkeys(forms))
        i += 1


def count_forms(value: Any) -> list[str]:
    """A whole number: exact, then abbreviated (``239000``, ``239k``); ``-`` if missing."""
    number = _number(value)
    if number is None:
        return ["-"]
    return list(dict.fromkeys([f"{number:.0f}", *_scaled(number, COUNT_UNITS)]))


def rate_forms(value: Any) -> list[str]:
    """A rate: one decimal, none, then abbreviated (``4403.2``, ``4403``, ``4.4k``)."""
    number = _number(value)
    if number is None:
        return ["-"]
    return list(dict.fromkeys([f"{number:.1f}", f"{number:.0f}",
                               *_scaled(number, COUNT_UNITS)]))


def percent_forms(value: Any) -> list[str]:
    number = _number(value)
    if number is None:
        return ["-"]
    return list(dict.fromkeys([_strip(f"{number:.1f}") + "%", f"{number:.0f}%",
                               *(form + "%" for form in _scaled(number, COUNT_UNITS))]))


def bytes_forms(value: Any) -> list[str]:
    """Bytes in binary units: ``512M``, ``1.2G``."""
    number = _number(value)
    return ["-"] if number is None else _scaled(number, BYTE_UNITS)


def seconds_forms(value: Any, sub_second: bool = True) -> list[str]:
    """A duration in seconds: ``250us``, ``12ms``, ``1.3s``, ``2.5m``, ``3h``, ``12d``;
    without ``sub_second``, fractions of a second stay in seconds (``0.3s``)."""
    number = _number(value)
    if number is None:
        return ["-"]
    return ["0s"] if number == 0 else _scaled(number, SECOND_UNITS[0 if sub_second else 2:])


def ms_forms(value: Any) -> list[str]:
    """A duration in milliseconds (latencies), shown as :func:`seconds_forms` does."""
    number = _number(value)
    return seconds_forms(None if number is None else number / 1000)


def text_forms(text: str, shortest: int = 8, ellipsis: str = "…") -> list[str]:
    """``text`` whole, then cut with an ellipsis to each width down to ``shortest``."""
    return [text, *(ellipsize(text, n, ellipsis) for n in range(len(text) - 1, shortest - 1, -1))]


def abbreviate(value: Any) -> str:
    """The short form of a number: 1234 → ``1.2k``, 239000 → ``239k``, 12e6 → ``12M``."""
    number = _number(value)
    if number is None:
        return "-"
    return fit(_scaled(number, COUNT_UNITS), SHORT)


def fit(forms: Sequence[str], width: int) -> str:
    """The fullest form no wider than ``width``; ``#`` marks (never a cut number) if none."""
    for form in forms:
        if len(form) <= width:
            return form
    return "#" * max(0, width)


def _head(text: str, size: int) -> str:
    """The first ``size`` characters, backed off to before a number the cut would split."""
    head = text[:max(0, size)]
    if head and size < len(text) and head[-1].isdigit() and text[size].isdigit():
        head = head.rstrip("0123456789")
    return head


def ellipsize(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` cut to ``width`` with an ellipsis; a trailing number (a pid, a port) is kept
    after the ellipsis when it fits (``vm-build…:22963``), and no number is ever split."""
    if len(text) <= width:
        return text
    if width <= len(ellipsis):
        return ellipsis[:max(0, width)]
    room = width - len(ellipsis)
    tail = _TRAILING_NUMBER.search(text)
    if tail is not None and len(tail.group()) < room:
        return _head(text, room - len(tail.group())) + ellipsis + tail.group()
    return _head(text, room) + ellipsis


# ------------------------------------------------------------------ a line of fields


@dataclass(frozen=True)
class Field:
    """One item of a line (``requests 90328``): its forms, fullest first, never cut."""

    forms: Sequence[str]
    style: str = "normal"
    rank: int = 1
    """Fields of the highest rank are left out first, those of the lowest made full first."""


def fit_fields(fields: Sequence[Field], width: int) -> list[tuple[str, str]]:
    """``fields`` in a line of ``width``: the fullest forms that fit, two spaces apart if
    there is room (else one); fields that fit in no form at all are left out."""
    def size(texts: list[str], gap: int) -> int:
        return sum(map(len, texts)) + gap * max(0, len(texts) - 1)

    shown = list(fields)
    while shown and size([min(f.forms, key=len) for f in shown], 1) > width:
        del shown[max(reversed(range(len(shown))), key=lambda i: shown[i].rank)]
    texts = [min(f.forms, key=len) for f in shown]
    gap = 2 if size(texts, 2) <= width else 1
    for i in sorted(range(len(shown)), key=lambda i: shown[i].rank):
        for form in shown[i].forms:
            if size(texts[:i] + [form] + texts[i + 1:], gap) <= width:
                texts[i] = form
                break
    line: list[tuple[str, str]] = []
    for i, (text, item) in enumerate(zip(texts, shown, strict=True)):
        line += [(" " * gap, "normal")] if i else []
        line.append((text, item.style))
    return line


# ------------------------------------------------------------------ a table of columns

Row = Mapping[str, Any]
OPTIONAL = 10
"""Columns of this rank or higher appear only once the others have their full width."""


@dataclass(frozen=True)
class Column:
    """A column of a table: headings, widths, and the forms of its value in a row."""

    title: str
    short: str
    """The heading when the column is narrower than ``title``."""
    width: int
    """The narrowest it gets (the shortest forms of its figures fit)."""
    full: int
    """As wide as it is worth making it (text columns grow past it when room is left)."""
    forms: Callable[[Row], Sequence[str]]
    rank: int = 1
    """With no room for every column, the highest ranks are left out first."""
    text: bool = False
    """Left-aligned text, cut with an ellipsis when no form fits."""

    def least(self) -> int:
        return max(self.width, len(self.short))

    def cell(self, row: Row, width: int, ellipsis: str) -> str:
        forms = self.forms(row)
        if self.text:
            shown = next((f for f in forms if len(f) <= width), None)
            return (shown or ellipsize(forms[0], width, ellipsis)).ljust(width)
        return fit(forms, width).rjust(width)

    def heading(self, width: int) -> str:
        title = self.title if len(self.title) <= width else self.short
        return title.ljust(width) if self.text else title.rjust(width)


def layout(columns: Sequence[Column], rows: Sequence[Row], width: int) -> list[tuple[Column, int]]:
    """Which columns fit in ``width`` (one space apart) and how wide each is, in order:
    the core columns at their narrowest, then grown to full, then the optional ones, then
    text columns grown to their longest value."""
    widths: dict[int, int] = {}

    def room() -> int:
        return width - sum(widths.values()) - max(0, len(widths) - 1)

    def grow(i: int, target: int) -> None:
        widths[i] = max(widths[i], min(target, widths[i] + room()))

    def wanted(column: Column) -> int:
        if not column.text:
            return column.full
        longest = max((len(column.forms(row)[0]) for row in rows), default=0)
        return max(longest, len(column.title))

    order = sorted(range(len(columns)), key=lambda i: columns[i].rank)
    core = [i for i in order if columns[i].rank < OPTIONAL]
    for i in core:
        if columns[i].least() + (1 if widths else 0) <= room():
            widths[i] = columns[i].least()
    for i in [i for i in core if i in widths]:
        grow(i, min(columns[i].full, wanted(columns[i])))
    for i in order[len(core):]:
        for size in (max(min(columns[i].full, wanted(columns[i])), columns[i].least()),
                     columns[i].least()):
            if i not in widths and size + (1 if widths else 0) <= room():
                widths[i] = size
    for i in [i for i in core if i in widths and columns[i].text]:
        grow(i, wanted(columns[i]))
    return [(columns[i], widths[i]) for i in sorted(widths)]


def table_lines(columns: Sequence[Column], rows: Sequence[Row], width: int,
                ellipsis: str = "…") -> tuple[str, list[str]]:
    """The heading and one line per row, every line at most ``width`` wide."""
    shown = layout(columns, rows, width)
    heading = " ".join(column.heading(size) for column, size in shown)
    return heading, [" ".join(column.cell(row, size, ellipsis) for column, size in shown)
                     for row in rows]
