"""The one small protocol every runtime speaks."""

from __future__ import annotations

import abc
import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spearlet.core.models import Status, Task
from spearlet.runtimes.pool import Pool


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """The node's limits for one call (its settings of the same names), before a task's settings
    adjust them: what runtimes are given instead of the node's whole Settings."""

    memory_limit_mb: int = 512
    cpu_limit_s: int = 0
    output_limit_bytes: int = 4_000_000
    log_limit_bytes: int = 64 << 10
    file_limit_mb: int = 1024
    open_files: int = 1024
    max_processes: int = 256


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_ms: int
    memory_bytes: int
    cpu_seconds: int
    output_bytes: int
    log_bytes: int
    file_bytes: int
    open_files: int
    processes: int = 0  # RLIMIT_NPROC of the function user (0: none)

    @classmethod
    def for_task(cls, node: NodeLimits, task: Task, timeout_ms: int) -> Limits:
        """The node's limits, as the task's settings adjust them."""
        own = task.settings
        return cls(
            timeout_ms=timeout_ms,
            memory_bytes=_either(own.memory_limit_mb, node.memory_limit_mb) << 20,
            cpu_seconds=_either(own.cpu_limit_s, node.cpu_limit_s),
            output_bytes=node.output_limit_bytes,
            log_bytes=node.log_limit_bytes,
            file_bytes=_either(own.file_limit_mb, node.file_limit_mb) << 20,
            open_files=node.open_files,
            processes=_either(own.max_processes, node.max_processes),
        )


def _either(own: int | None, default: int) -> int:
    return default if own is None else own


@dataclass(slots=True)
class Invocation:
    execution_id: str
    function_name: str
    params: dict[str, Any]
    environment: dict[str, str]
    limits: Limits
    force_new_instance: bool = False
    # Called with each piece of output as it is produced (stdout lines, a generator's yields).
    on_output: Callable[[bytes], None] | None = None
    # A runtime with shared instances (`reports_instance`) calls it with the instance it runs the
    # call on, before the call reaches it.
    on_instance: Callable[[str], None] | None = None


@dataclass(slots=True)
class Outcome:
    status: Status
    output: bytes = b""
    error_code: str = ""  # an ErrorCode, or "" when it completed
    error_message: str = ""
    logs: str = ""
    execution_time_ms: int = 0
    memory_used_bytes: int = 0
    instance_id: str = ""
    metrics: dict[str, str] = field(default_factory=dict)


def in_callers_terms(text: str, task: Task) -> str:
    """`text` (an error message, a log) with the node's path of the task's artifact replaced by the
    location the caller gave, and the directory holding it dropped: callers learn nothing of the
    node's layout, and read what they know."""
    if not text or not task.local_path:
        return text
    holder = os.path.dirname(task.local_path)
    return text.replace(task.local_path, task.location).replace(holder + "/", "")


def log_tail(logs: str, lines: int = 20) -> str:
    """The last `lines` lines of a log, for the message of a failure."""
    return "\n".join(logs.rstrip("\n").splitlines()[-lines:])


class LineSplitter:
    """Feeds complete lines (with their newline) of a byte stream to `emit`; `flush` the rest
    (to `emit`, or to the given function: the end may be on another thread than the feeding)."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        self._partial += data
        end = self._partial.rfind(b"\n")
        if end < 0:
            return
        complete, self._partial = bytes(self._partial[: end + 1]), self._partial[end + 1 :]
        for line in complete.splitlines(keepends=True):
            self._emit(line)

    def flush(self, emit: Callable[[bytes], None] | None = None) -> None:
        if self._partial:
            (emit or self._emit)(bytes(self._partial))
            self._partial = bytearray()


class StopRequest:
    """Asks a running invocation to stop: the runtime watches it beside its own deadline."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []
        self.force = False
        self.reason = ""

    def request(self, force: bool, reason: str = "") -> None:
        self.force = self.force or force
        self.reason = self.reason or reason
        self._event.set()
        for callback in list(self._callbacks):
            callback()

    def on_request(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when a stop is requested (now, if it was already); returns the
        unregistering function. Cheaper than a task waiting on `wait()` for every call."""
        if self.requested:
            callback()
            return lambda: None
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class Runtime(abc.ABC):
    """Knows nothing of records or queues."""

    name: str
    # The task settings (core.task_settings) this runtime reads: a task of it has their values
    # checked at registration; those of other runtimes it ignores.
    owned_settings: ClassVar[frozenset[str]] = frozenset()
    # Its warm instances, for the metrics (None: it keeps none).
    pool: Pool | None = None
    # True: it runs calls on instances it keeps, and names the one of each call through
    # Invocation.on_instance. False: each call has an instance of its own, named after it.
    reports_instance: ClassVar[bool] = False

    @abc.abstractmethod
    async def prepare(self, task: Task) -> None:
        """Check at registration that the task can run here; raise InvalidArgument otherwise."""

    @abc.abstractmethod
    async def invoke(self, task: Task, invocation: Invocation, stop: StopRequest) -> Outcome:
        """Run one call to its end, honouring the limits and `stop`. Never raises for a
        failure of the function itself: that is an Outcome with status FAILED."""

    async def warm(self, task: Task) -> None:  # noqa: B027 - most runtimes keep nothing warm
        """Get a registered task ready to serve (at node start, after registration)."""

    async def forget(self, task_id: str) -> None:  # noqa: B027
        """The task was replaced or deleted: drop what is kept for it."""

    async def keep_only(self, digests: set[str]) -> None:  # noqa: B027
        """Tasks use only the artifacts with these digests now: drop what is kept for others."""

    async def close(self) -> None:  # noqa: B027
        """Release what the runtime holds (warm instances, compiled modules)."""

    async def destroy_instance(self, instance_id: str, reason: str) -> bool:
        """Stop a kept instance (its call in progress ends CANCELLED); False when it keeps none
        of that id."""
        return False
