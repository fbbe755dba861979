"""What this node saw in the last minutes, in time steps: finishes by status, p50/p95 execution time
and the queue length. The dashboard's overview charts (GET /api/v1/timeseries) read it.

Prometheus keeps totals for a scraper to difference; a browser has no scraper, so the node keeps
the recent steps itself. Each step holds a bounded sample of durations (reservoir sampling): the
percentiles are exact up to SAMPLES finishes in a step and an estimate beyond, at a fixed cost per
finish whatever the load.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord, Status

STEP_S = 10
KEEP_S = 3600
SAMPLES = 256


@dataclass(slots=True)
class _Step:
    index: int  # seconds since the epoch // step
    accepted: int = 0
    finished: dict[Status, int] = field(default_factory=dict)
    ran: int = 0  # finishes that had started, each offered to `durations`
    durations: list[int] = field(default_factory=list)
    queue_max: int = 0  # the largest queue length seen in the step, starting from the one before it
    queue_end: int = 0  # the queue length at its last event


class RecentExecutions:
    """A lifecycle listener (Lifecycle.subscribe(recent.on_event)); `queue_length` is read at each
    event, since the scheduler's queue changes only when executions are accepted, start or end."""

    def __init__(
        self,
        queue_length: Callable[[], int],
        step_s: int = STEP_S,
        keep_s: int = KEEP_S,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.step_s = step_s
        self.keep_s = keep_s
        self._queue_length = queue_length
        self._clock = clock
        self._rng = rng or random.Random()
        self._steps: deque[_Step] = deque(maxlen=keep_s // step_s)

    def on_event(self, event: Event, record: ExecutionRecord) -> None:
        step = self._current()
        step.queue_end = self._queue_length()
        step.queue_max = max(step.queue_max, step.queue_end)
        if event is Event.ACCEPTED:
            step.accepted += 1
        elif event is Event.FINISHED:
            step.finished[record.status] = step.finished.get(record.status, 0) + 1
            if record.started_at:
                self._sample(step, record.execution_time_ms)

    def _sample(self, step: _Step, duration_ms: int) -> None:
        step.ran += 1
        if len(step.durations) < SAMPLES:
            step.durations.append(duration_ms)
            return
        slot = self._rng.randrange(step.ran)  # reservoir: each finish kept with chance SAMPLES/ran
        if slot < SAMPLES:
            step.durations[slot] = duration_ms

    def _current(self) -> _Step:
        index = int(self._clock()) // self.step_s
        if not self._steps or self._steps[-1].index != index:
            carried = self._steps[-1].queue_end if self._steps else 0
            self._steps.append(_Step(index, queue_max=carried, queue_end=carried))
        return self._steps[-1]

    def series(self, window_s: int) -> list[dict[str, Any]]:
        """One point per step of the last `window_s` seconds, oldest first, the current (partial)
        step last. A step without events had the queue length the step before it ended with."""
        now_index = int(self._clock()) // self.step_s
        first = now_index - max(1, min(window_s, self.keep_s) // self.step_s) + 1
        by_index = {s.index: s for s in self._steps}
        earlier = [s for s in self._steps if s.index < first]
        queue = earlier[-1].queue_end if earlier else 0
        points = []
        for index in range(first, now_index + 1):
            step = by_index.get(index) or _Step(index, queue_max=queue, queue_end=queue)
            points.append(_point(step, self.step_s))
            queue = step.queue_end
        return points


def _point(step: _Step, step_s: int) -> dict[str, Any]:
    durations = sorted(step.durations)
    return {
        "t_ms": step.index * step_s * 1000,
        "accepted": step.accepted,
        "completed": step.finished.get(Status.COMPLETED, 0),
        "failed": step.finished.get(Status.FAILED, 0) + step.finished.get(Status.TIMEOUT, 0),
        "cancelled": step.finished.get(Status.CANCELLED, 0),
        "p50_ms": _rank(durations, 0.50),
        "p95_ms": _rank(durations, 0.95),
        "queue_length": step.queue_max,
    }


def _rank(ordered: list[int], q: float) -> int | None:
    """Nearest-rank percentile; None for a step where nothing that ran finished."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
