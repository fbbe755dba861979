"""What the store answers to queries: pages of tasks and records, per-task summaries, statistics.

Values every layer agrees on, like the records themselves: the store makes them, the engine and
the transports read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spearlet.core.models import ExecutionRecord, Status, Task


@dataclass(slots=True)
class TaskPage:
    tasks: list[Task]
    has_more: bool
    next_start_after: str


@dataclass(slots=True)
class ExecutionPage:
    executions: list[ExecutionRecord]
    has_more: bool
    next_start_after: str


@dataclass(slots=True)
class TaskSummary:
    execution_count: int = 0
    last_status: Status = Status.UNKNOWN


@dataclass(slots=True)
class Stats:
    """Aggregates over executions created since a point in time."""

    by_status: dict[Status, int] = field(default_factory=dict)
    average_execution_time_ms: float = 0.0
    by_function: dict[str, int] = field(default_factory=dict)
    by_task: dict[str, int] = field(default_factory=dict)
    total: int = 0
