"""Poll timeouts in milliseconds (madrpc.sockets.poll_timeout_ms): a loop waiting for a
timer never polls with zero timeout before the timer is due."""

from __future__ import annotations

import pytest

from madrpc.sockets import poll_timeout_ms


@pytest.mark.parametrize(("seconds", "ms"), [
    (0.0004, 1), (0.0009999, 1), (0.001, 1), (0.0011, 2), (0.05, 50), (1.25, 1250),
])
def test_a_wait_shorter_than_a_millisecond_is_rounded_up_not_to_a_busy_poll(
    seconds: float, ms: int,
) -> None:
    assert poll_timeout_ms(seconds) == ms


@pytest.mark.parametrize("seconds", [0.0, -0.0001, -3.0])
def test_a_timer_already_due_polls_without_waiting(seconds: float) -> None:
    assert poll_timeout_ms(seconds) == 0
