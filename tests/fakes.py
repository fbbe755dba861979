"""Fakes for in-process tests of the engine, and the engine wired over them.

A test of the invoker's branches (a cache hit, an existing id, a caller that leaves during the
write, a sync hand-off, a cancel of work another node holds, a stream that stops early) examines
neither processes nor Redis: a runtime that does what the test scripts and a dispatch that stands
for the other nodes let it run in milliseconds. Everything else is real: the scheduler, the
lifecycle, the task registry and its artifact fetcher, and a store (the memory store, held to the
same contract as SQLite and Redis by tests/store/test_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spearlet.artifacts import ArtifactFetcher
from spearlet.artifacts.cache import ArtifactCache
from spearlet.config import Settings
from spearlet.core.codes import ErrorCode
from spearlet.core.ids import new_execution_id
from spearlet.core.lifecycle import Lifecycle
from spearlet.core.models import ArtifactSpec, ExecutionRecord, Mode, Status, Task, now_ms
from spearlet.engine.invoker import InvocationType, Invoker, InvokeRequest
from spearlet.engine.management import Management
from spearlet.engine.registry import TaskRegistry
from spearlet.engine.scheduler import Scheduler
from spearlet.runtimes.base import Invocation, Outcome, Runtime, StopRequest
from spearlet.store.base import Store
from spearlet.store.memory import MemoryStore


@dataclass(frozen=True, slots=True)
class Script:
    """What one call does, in order: produce each of `chunks` as output, take `delay_s` (or, with
    `hang`, until it is stopped), then end as told. A stop ends it CANCELLED, as a runtime does."""

    status: Status = Status.COMPLETED
    output: bytes = b'"ok"'
    chunks: tuple[bytes, ...] = ()
    delay_s: float = 0.0
    hang: bool = False
    # Takes its whole delay and ends as told even when stopped: a stop that comes too late.
    unstoppable: bool = False
    error_code: str = ""
    error_message: str = ""


class FakeRuntime(Runtime):
    """Runs scripted calls (`script`); unscripted ones complete at once with output "ok"."""

    name = "fake"

    def __init__(self) -> None:
        self.scripts: dict[str, list[Script]] = {}
        self.calls: list[Invocation] = []
        self._started: dict[str, asyncio.Event] = {}

    def script(self, function_name: str, *calls: Script) -> None:
        """The next calls of `function_name`, one Script each."""
        self.scripts.setdefault(function_name, []).extend(calls)

    async def started(self, execution_id: str) -> None:
        """Return once the execution is running here."""
        await self._event(execution_id).wait()

    def _event(self, execution_id: str) -> asyncio.Event:
        return self._started.setdefault(execution_id, asyncio.Event())

    async def prepare(self, task: Task) -> None:
        pass

    async def invoke(self, task: Task, invocation: Invocation, stop: StopRequest) -> Outcome:
        self.calls.append(invocation)
        queued = self.scripts.get(invocation.function_name)
        call = queued.pop(0) if queued else Script()
        self._event(invocation.execution_id).set()
        for chunk in call.chunks:
            if invocation.on_output is not None:
                invocation.on_output(chunk)
            await asyncio.sleep(0)  # as a real function's output arrives: one piece at a time
        if call.unstoppable:
            await asyncio.sleep(call.delay_s)
        elif call.hang or call.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), None if call.hang else call.delay_s)
        if stop.requested and not call.unstoppable:
            reason = f": {stop.reason}" if stop.reason else ""
            return Outcome(Status.CANCELLED, error_code=ErrorCode.CANCELLED, error_message=f"cancelled{reason}")
        output = call.output if call.status is Status.COMPLETED else b""
        return Outcome(
            call.status,
            output=output,
            error_code=call.error_code,
            error_message=call.error_message,
            execution_time_ms=int(call.delay_s * 1000),
        )


class FakeDispatch:
    """The other nodes of a cluster, as the invoker sees them (invoker.Dispatch): async work stays
    stored and PENDING (nobody runs it unless the test does). A cancel of work held elsewhere is
    recorded, and the node holding the work ends it in the store as `on_cancel` says (None: it
    never answers)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.here: list[str] = []
        self.cancels: list[tuple[str, bool, str]] = []
        self.on_cancel: Status | None = Status.CANCELLED

    def run_here(self, record: ExecutionRecord) -> None:
        self.here.append(record.execution_id)

    async def cancel_elsewhere(self, execution_id: str, force: bool, reason: str) -> None:
        self.cancels.append((execution_id, force, reason))
        record = await self.store.get_execution(execution_id)
        if self.on_cancel is None or record is None or record.done:
            return
        if self.on_cancel is Status.CANCELLED:
            record.end(Status.CANCELLED, ErrorCode.CANCELLED, reason)
        else:  # it ended otherwise first
            record.status, record.completed_at = self.on_cancel, now_ms()
        await self.store.transition(record)


@dataclass
class Engine:
    """An invoker and management with their scheduler, lifecycle, task registry and store, over a
    FakeRuntime."""

    settings: Settings
    store: MemoryStore
    runtime: FakeRuntime
    lifecycle: Lifecycle
    scheduler: Scheduler
    tasks: TaskRegistry
    invoker: Invoker
    management: Management
    artifact: Path
    dispatch: FakeDispatch | None = field(default=None)

    async def task(self, name: str = "fn", **metadata: str) -> Task:
        """Register a task of the fake runtime (its artifact is a real file, fetched and verified)."""
        return await self.tasks.register(name, ArtifactSpec("fake", str(self.artifact), metadata=metadata))

    def request(
        self, mode: Mode = Mode.SYNC, task_id: str = "fn", function_name: str = "", **fields: Any
    ) -> InvokeRequest:
        return InvokeRequest(InvocationType.EXISTING_TASK, mode, task_id=task_id, function_name=function_name, **fields)

    def in_cluster(self) -> FakeDispatch:
        """Make the invoker hand async work to the other nodes, as a cluster node does."""
        self.dispatch = FakeDispatch(self.store)
        self.invoker.dispatch = self.dispatch
        return self.dispatch

    async def final(self, execution_id: str) -> ExecutionRecord:
        return await final(self.store, self.lifecycle, execution_id)


async def final(store: Store, lifecycle: Lifecycle, execution_id: str) -> ExecutionRecord:
    """The execution's final record, once it is stored (within 5 s)."""
    waiter = lifecycle.waiter(execution_id)  # before reading: its end cannot slip between
    stored = await store.get_execution(execution_id)
    if stored is None or not stored.done:
        await asyncio.wait_for(waiter, 5)
        stored = await store.get_execution(execution_id)
    lifecycle.drop_waiter(execution_id, waiter)
    assert stored is not None and stored.done
    return stored


async def stored_pending(eng: Engine, task_id: str = "fn", **fields: Any) -> ExecutionRecord:
    """A record in the store that this node does not hold (another node's, or one to recover)."""
    fields.setdefault("created_at", now_ms())
    record = ExecutionRecord(new_execution_id(), task_id, "", Mode.ASYNC, **fields)
    assert await eng.store.create_execution(record) is None
    return record


@contextlib.asynccontextmanager
async def engine(directory: Path, **settings: Any) -> AsyncIterator[Engine]:
    """An Engine in `directory`, with `settings` over the defaults; closed as a node closes it."""
    config = Settings(data_dir=directory / "data", **settings)
    store = MemoryStore()
    await store.open()
    runtime = FakeRuntime()
    lifecycle = Lifecycle()
    fetcher = ArtifactFetcher(ArtifactCache(directory / "artifacts"))
    tasks = TaskRegistry(store, fetcher, {"fake": runtime})
    scheduler = Scheduler(config, store, {"fake": runtime}, lifecycle)
    invoker = Invoker(config, store, tasks, scheduler, lifecycle)
    management = Management(config, store, tasks, scheduler, lifecycle)
    artifact = directory / "function.bin"
    artifact.write_bytes(b"a fake function")
    try:
        yield Engine(config, store, runtime, lifecycle, scheduler, tasks, invoker, management, artifact)
    finally:
        await invoker.close()
        await scheduler.close()
        await store.close()
