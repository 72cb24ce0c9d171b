"""The public API is exactly what ``madrpc.__all__`` says (after httpx's test)."""

from __future__ import annotations

import inspect

import madrpc


def test_every_name_in_all_exists() -> None:
    assert [name for name in madrpc.__all__ if not hasattr(madrpc, name)] == []


def test_all_lists_no_name_twice() -> None:
    assert len(madrpc.__all__) == len(set(madrpc.__all__))


def test_every_public_class_and_function_is_listed_in_all() -> None:
    public = {
        name
        for name, member in vars(madrpc).items()
        if not name.startswith("_") and (inspect.isclass(member) or inspect.isfunction(member))
    }

    assert public - set(madrpc.__all__) == set()


def test_the_version_is_exported() -> None:
    assert "__version__" in madrpc.__all__ and isinstance(madrpc.__version__, str)
