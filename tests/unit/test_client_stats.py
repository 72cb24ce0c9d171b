"""A client's stats (madrpc.client_stats), read off its call book. Pure: a fake clock."""

from __future__ import annotations

import random

from madrpc.client_core import CallBook
from madrpc.client_stats import ClientStats, stats_of
from madrpc.config import ClientConfig


def make_book() -> CallBook:
    return CallBook(ClientConfig(retry_interval_s=1.0, timeout_s=30.0), random.Random(1))


def test_a_new_client_has_nothing_in_flight_and_has_never_heard_its_broker() -> None:
    assert stats_of(make_book(), 5.0) == ClientStats(
        in_flight=0, retries=0, reconnects=0, broker_answered=False, last_heard_s=None)


def test_stats_count_calls_in_flight_resends_and_reconnections() -> None:
    book = make_book()
    for value in range(3):
        book.encode(book.new_call("noop", [value], None, 0.0), 0.0)
    due = book.due_for_resend(1.5)   # past the retry interval: every call goes again
    book.on_reconnect()
    book.last_heard = 2.0

    stats = stats_of(book, 4.5)

    assert len(due) == 3
    assert stats == ClientStats(in_flight=3, retries=3, reconnects=1, broker_answered=True,
                                last_heard_s=2.5)
