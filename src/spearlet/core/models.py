"""Tasks and execution records: the data every layer agrees on.

Numbers of the enums equal the wire enums of api/grpc/spearlet.proto, so conversion is a cast.
"""

from __future__ import annotations

import time
from dataclasses import InitVar, dataclass, field
from enum import IntEnum
from typing import Any

from spearlet.core.codes import ErrorCode
from spearlet.core.task_settings import TaskSettings


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Mode(IntEnum):
    UNKNOWN = 0
    SYNC = 1
    ASYNC = 2
    STREAM = 3


class Status(IntEnum):
    UNKNOWN = 0
    PENDING = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5
    TIMEOUT = 6

    @property
    def terminal(self) -> bool:
        return self >= Status.COMPLETED


TERMINAL = frozenset(s for s in Status if s.terminal)

# Status moves only forward (README, "Executions"). RUNNING -> RUNNING is a new attempt.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(),
    Status.RUNNING: frozenset({Status.PENDING, Status.RUNNING}),
    **{s: frozenset({Status.PENDING, Status.RUNNING}) for s in TERMINAL},
}


class OutputKind(IntEnum):
    """How a function's output is packed on the wire (README, "Runtimes": a process's output)."""

    NONE = 0
    JSON = 1
    TEXT = 2
    BYTES = 3


@dataclass(slots=True)
class ArtifactSpec:
    """What a client says about a task's code; the node turns it into a Task."""

    artifact_type: str
    location: str
    artifact_id: str = ""
    version: str = ""
    checksum: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Task:
    task_id: str
    name: str
    artifact_type: str
    location: str
    description: str = ""
    artifact_id: str = ""
    version: str = ""
    checksum: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # Where the node keeps the verified artifact, and its sha256 hex digest.
    local_path: str = ""
    digest: str = ""
    created_at: int = 0
    updated_at: int = 0
    # The metadata's settings as parsed at registration; parsed from the metadata when left out.
    parsed: InitVar[TaskSettings | None] = None

    def __post_init__(self, parsed: TaskSettings | None) -> None:
        # An attribute, not a field: stores keep the metadata it comes from, not this.
        self.settings = parsed if parsed is not None else TaskSettings.parse(self.metadata)


@dataclass(slots=True)
class ExecutionRecord:
    """One execution's whole life: what was asked, how it went, what came out."""

    execution_id: str
    task_id: str
    function_name: str
    mode: Mode
    status: Status = Status.PENDING
    params: dict[str, Any] = field(default_factory=dict)
    timeout_ms: int = 0
    max_retries: int = 0
    environment: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    # Same task, function, artifact and parameters give the same key (the result cache's).
    cache_key: str = ""
    # Not stored: a recovered execution may run on any instance.
    force_new_instance: bool = False
    node: str = ""
    # Where it ran: a Python worker's id, or for a run-once runtime (process, wasm) the
    # execution's own instance (core/ids.py own_instance_id). Set before STARTED is published.
    instance_id: str = ""
    attempts: int = 0
    created_at: int = 0
    started_at: int = 0
    completed_at: int = 0
    execution_time_ms: int = 0
    memory_used_bytes: int = 0
    output: bytes = b""
    output_kind: OutputKind = OutputKind.NONE
    error_code: str = ""  # an ErrorCode, or "" (as stored)
    error_message: str = ""
    logs: str = ""
    metrics: dict[str, str] = field(default_factory=dict)
    # The caller's grouping of executions (SPEAR's InvokeRequest.invocation_id); "" when none.
    invocation_id: str = ""

    @property
    def done(self) -> bool:
        return self.status.terminal

    def end(self, status: Status, code: ErrorCode, message: str) -> None:
        """Mark the record ended without a result (cancelled, failed by the node); not stored yet."""
        self.status, self.error_code, self.error_message = status, code, message
        self.completed_at = now_ms()

    @property
    def queue_wait_ms(self) -> int:
        return max(0, self.started_at - self.created_at) if self.started_at else 0
