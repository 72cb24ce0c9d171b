"""A read-only mapping over a dict a table keeps for itself, at dict speed.

The broker's and the worker's tables (requests, workers) are mappings to read, with
their own methods to change them; lookups are on the per-request path, so they go to
the dict directly rather than through ``Mapping``'s generic methods.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, ValuesView
from typing import TypeVar

__all__ = ["TableView"]

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
