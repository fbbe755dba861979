"""RecentExecutions: the overview's time steps, fed lifecycle events on a clock the test moves."""

from __future__ import annotations

import random

import pytest

from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord, Mode, Status
from spearlet.observability.recent import SAMPLES, RecentExecutions

pytestmark = pytest.mark.timeout(30)
T0 = 1_000_000.0  # seconds since the epoch, on a step boundary


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def record(status: Status, execution_time_ms: int = 0, started: bool = True) -> ExecutionRecord:
    return ExecutionRecord(
        "e", "t", "", Mode.ASYNC, status=status, execution_time_ms=execution_time_ms, started_at=1 if started else 0
    )


def recent_with(queue: list[int]) -> tuple[RecentExecutions, Clock]:
    clock = Clock()
    return RecentExecutions(lambda: queue[0], step_s=10, keep_s=600, clock=clock, rng=random.Random(1)), clock


def test_a_step_counts_finishes_by_status_and_its_percentiles_are_exact_for_few_finishes() -> None:
    recent, clock = recent_with([0])
    for ms in range(1, 101):  # 1..100 ms
        recent.on_event(Event.ACCEPTED, record(Status.PENDING))
        recent.on_event(Event.FINISHED, record(Status.COMPLETED, ms))
    recent.on_event(Event.FINISHED, record(Status.FAILED, 5000))
    recent.on_event(Event.FINISHED, record(Status.TIMEOUT, 6000))
    recent.on_event(Event.FINISHED, record(Status.CANCELLED, started=False))  # never ran: no duration
    clock.now += 3

    [point] = recent.series(10)

    assert point["t_ms"] == T0 * 1000
    assert (point["accepted"], point["completed"], point["failed"], point["cancelled"]) == (100, 100, 2, 1)
    # 102 durations: 1..100, 5000 and 6000; nearest rank 51 and 97.
    assert point["p50_ms"] == 51 and point["p95_ms"] == 97


def test_steps_without_events_are_zero_with_no_percentile_and_the_window_ends_now() -> None:
    recent, clock = recent_with([0])
    recent.on_event(Event.FINISHED, record(Status.COMPLETED, 7))
    clock.now += 35  # three steps later

    points = recent.series(60)

    assert [p["t_ms"] for p in points] == [(T0 + 10 * i) * 1000 for i in range(-2, 4)]
    assert [p["completed"] for p in points] == [0, 0, 1, 0, 0, 0]
    assert [p["p50_ms"] for p in points] == [None, None, 7, None, None, None]


def test_the_queue_length_is_the_longest_seen_in_a_step_and_carries_over_quiet_steps() -> None:
    queue = [0]
    recent, clock = recent_with(queue)
    for length in (3, 9, 4):
        queue[0] = length
        recent.on_event(Event.ACCEPTED, record(Status.PENDING))
    clock.now += 20  # a quiet step, then the current one

    points = recent.series(30)

    assert [p["queue_length"] for p in points] == [9, 4, 4]


def test_many_finishes_in_a_step_keep_a_bounded_sample_whose_percentiles_stay_close() -> None:
    recent, _ = recent_with([0])
    for ms in range(10_000):
        recent.on_event(Event.FINISHED, record(Status.COMPLETED, ms))

    [point] = recent.series(10)

    assert point["completed"] == 10_000
    assert len(recent._steps[-1].durations) == SAMPLES
    assert abs(point["p50_ms"] - 5000) < 1000 and abs(point["p95_ms"] - 9500) < 500


def test_steps_older_than_kept_are_dropped_and_a_window_is_capped_at_what_is_kept() -> None:
    recent, clock = recent_with([0])
    recent.on_event(Event.FINISHED, record(Status.COMPLETED, 1))
    clock.now += 700  # past keep_s (600)
    recent.on_event(Event.FINISHED, record(Status.COMPLETED, 2))

    points = recent.series(3600)

    assert len(points) == 60
    assert sum(p["completed"] for p in points) == 1
