"""Back-off and heartbeat liveness, driven by a fake clock and a seeded random generator."""

from __future__ import annotations

import random

from madrpc.liveness import Backoff, Heartbeat

# ================================================================ Backoff


def test_the_first_delay_is_the_initial_delay() -> None:
    assert Backoff(initial_s=0.25, max_s=8.0).delay(0) == 0.25


def test_each_delay_is_the_previous_one_times_the_multiplier() -> None:
    backoff = Backoff(initial_s=0.25, max_s=100.0, multiplier=3.0)

    assert [backoff.delay(attempt) for attempt in range(4)] == [0.25, 0.75, 2.25, 6.75]


def test_delays_are_capped_at_the_maximum() -> None:
    backoff = Backoff(initial_s=0.25, max_s=8.0)

    assert [backoff.delay(attempt) for attempt in range(4, 9)] == [4.0, 8.0, 8.0, 8.0, 8.0]


def test_a_negative_attempt_gets_the_initial_delay() -> None:
    assert Backoff(initial_s=0.5, max_s=8.0).delay(-3) == 0.5


def test_a_very_late_attempt_still_gets_the_capped_delay() -> None:
    assert Backoff(initial_s=0.25, max_s=8.0).delay(5000) == 8.0


def test_jittered_delays_stay_between_zero_and_the_delay() -> None:
    backoff = Backoff(initial_s=0.25, max_s=8.0)
    rng = random.Random(7)

    for attempt in range(12):
        for _ in range(200):
            assert 0.0 <= backoff.jittered(attempt, rng) <= backoff.delay(attempt)


def test_jitter_spreads_delays_over_the_whole_range() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0)
    rng = random.Random(8)

    samples = [backoff.jittered(3, rng) for _ in range(1000)]

    assert min(samples) < 0.5 and max(samples) > 7.5


# ================================================================ Heartbeat


def test_a_peer_is_alive_until_liveness_intervals_of_silence() -> None:
    heartbeat = Heartbeat(interval_s=1.0, liveness=3, now=100.0)

    assert heartbeat.expired(102.999) is False


def test_a_peer_silent_for_liveness_intervals_has_expired() -> None:
    heartbeat = Heartbeat(interval_s=1.0, liveness=3, now=100.0)

    assert heartbeat.expired(103.0) is True


def test_hearing_from_the_peer_moves_its_expiry() -> None:
    heartbeat = Heartbeat(interval_s=1.0, liveness=3, now=100.0)
    heartbeat.heard(102.5)

    assert (heartbeat.expiry, heartbeat.expired(105.0)) == (105.5, False)


def test_no_heartbeat_is_due_before_one_interval() -> None:
    heartbeat = Heartbeat(interval_s=1.0, liveness=3, now=100.0)

    assert heartbeat.due(100.999) is False


def test_a_heartbeat_is_due_after_one_interval() -> None:
    heartbeat = Heartbeat(interval_s=1.0, liveness=3, now=100.0)

    assert heartbeat.due(101.0) is True


def test_a_due_heartbeat_schedules_the_next_one_an_interval_later() -> None:
    heartbeat = Heartbeat(interval_s=1.0, liveness=3, now=100.0)
    heartbeat.due(101.5)

    assert (heartbeat.due(102.4), heartbeat.due(102.5)) == (False, True)


def test_a_heartbeat_is_due_once_per_interval_however_often_it_is_asked() -> None:
    heartbeat = Heartbeat(interval_s=1.0, liveness=3, now=0.0)

    sent = sum(heartbeat.due(tick / 100) for tick in range(1, 1001))

    assert sent == 10

