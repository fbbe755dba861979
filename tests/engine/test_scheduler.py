"""The real Scheduler with a real SqliteStore and ProcessRuntime: running, limits, fairness,
backpressure, cancelling, retries, estimates, races and shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from spearlet.config import Settings
from spearlet.core.errors import ResourceExhausted, StoreUnavailable
from spearlet.core.ids import new_execution_id
from spearlet.core.lifecycle import Event, Lifecycle
from spearlet.core.models import ExecutionRecord, Mode, OutputKind, Status, Task, now_ms
from spearlet.engine import scheduler as scheduler_module
from spearlet.engine.scheduler import BACKOFF_BASE_S, BACKOFF_CAP_S, Scheduler, backoff_s
from spearlet.runtimes.base import Invocation, Outcome, StopRequest
from spearlet.runtimes.process import ProcessRuntime
from spearlet.store.sqlite import STAGE_S, SqliteStore
from tests.fakes import engine
from tests.helpers import script

pytestmark = pytest.mark.timeout(60)

# A script that sleeps, appending "<execution id> start|end <epoch seconds>" lines to {log}.
TIMED_SLEEP = """#!/bin/sh
echo "$SPEAR_EXECUTION_ID start $(date +%s.%N)" >> {log}
sleep {seconds}
echo "$SPEAR_EXECUTION_ID end $(date +%s.%N)" >> {log}
"""


@dataclass
class Harness:
    """One scheduler over the shared store, with helpers to make tasks and submit executions."""

    scheduler: Scheduler
    lifecycle: Lifecycle
    store: SqliteStore
    dir: Path
    finished: list[ExecutionRecord] = field(default_factory=list)

    def task(self, name: str, body: str, **metadata: Any) -> Task:
        path = script(self.dir / f"{name}.sh", body)
        return Task(
            task_id=name,
            name=name,
            artifact_type="process",
            location=str(path),
            local_path=str(path),
            metadata={k: str(v) for k, v in metadata.items()},
        )

    async def submit(self, task: Task, **fields: Any) -> tuple[ExecutionRecord, asyncio.Future[ExecutionRecord]]:
        record = ExecutionRecord(
            new_execution_id(), task.task_id, "", Mode.ASYNC, created_at=now_ms(), timeout_ms=10_000, **fields
        )
        assert await self.store.create_execution(record) is None
        waiter = self.lifecycle.waiter(record.execution_id)
        self.scheduler.submit(record, task)
        return record, waiter

    async def stored(self, record: ExecutionRecord) -> ExecutionRecord:
        got = await self.store.get_execution(record.execution_id)
        assert got is not None
        return got


@pytest.fixture
async def make(tmp_path: Path, store: SqliteStore) -> AsyncIterator[Callable[..., Harness]]:
    """make(runtime=None, **settings) -> a Harness; every scheduler made is closed at the end of the test."""
    made: list[Harness] = []

    def factory(runtime: ProcessRuntime | None = None, **settings: Any) -> Harness:
        config = Settings(data_dir=tmp_path, node_id="test-node", **settings)
        lifecycle = Lifecycle()
        scheduler = Scheduler(config, store, {"process": runtime or ProcessRuntime()}, lifecycle)
        harness = Harness(scheduler, lifecycle, store, tmp_path)
        lifecycle.subscribe(lambda event, record: harness.finished.append(record) if event is Event.FINISHED else None)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.scheduler.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def gather_within(waiters: list[asyncio.Future[ExecutionRecord]], timeout: float) -> list[ExecutionRecord]:
    return await asyncio.wait_for(asyncio.gather(*waiters), timeout)


def intervals(log: Path) -> list[tuple[float, float]]:
    """(start, end) of each execution that wrote to `log`."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for line in log.read_text().splitlines():
        execution_id, what, stamp = line.split()
        (starts if what == "start" else ends)[execution_id] = float(stamp)
    assert starts.keys() == ends.keys()
    return [(starts[k], ends[k]) for k in starts]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans running at one instant."""
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def our_processes(marker: str) -> list[psutil.Process]:
    """Live processes anywhere whose command line contains `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def live_children() -> Iterator[psutil.Process]:
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                yield child
        except psutil.NoSuchProcess:
            continue


# Running


async def test_submitted_execution_runs_and_ends_completed_with_output_and_a_stored_record(
    make: Callable[..., Harness],
) -> None:
    h = make()
    task = h.task("hello", '#!/bin/sh\ninput=$(cat)\necho "{\\"task\\": \\"$SPEAR_TASK_ID\\", \\"input\\": $input}"\n')

    record, waiter = await h.submit(task, params={"name": "Ada"})
    final = await asyncio.wait_for(waiter, 10)

    assert final.status is Status.COMPLETED, final.error_message
    assert json.loads(final.output) == {"task": "hello", "input": {"name": "Ada"}}
    assert final.output_kind is OutputKind.JSON
    assert final.attempts == 1 and final.metrics["attempts"] == "1"
    assert final.node == "test-node"
    assert final.started_at >= record.created_at and final.completed_at >= final.started_at
    stored = await h.stored(record)
    assert stored.status is Status.COMPLETED
    assert stored.output == final.output
    assert stored.attempts == 1
    assert not h.scheduler.is_active(record.execution_id)
    assert h.scheduler.running_count == 0 and h.scheduler.pending_count == 0


async def test_failing_execution_ends_failed_with_its_error_code_and_logs(make: Callable[..., Harness]) -> None:
    h = make()
    task = h.task("broken", "#!/bin/sh\necho 'went wrong' >&2\nexit 3\n")

    record, waiter = await h.submit(task)
    final = await asyncio.wait_for(waiter, 10)

    assert final.status is Status.FAILED
    assert final.error_code == "NONZERO_EXIT"
    assert "went wrong" in final.error_message and "went wrong" in final.logs
    assert (await h.stored(record)).status is Status.FAILED


# Concurrency limits


async def test_node_max_concurrency_is_never_exceeded(make: Callable[..., Harness]) -> None:
    h = make(max_concurrency=2)
    log = h.dir / "spans.log"
    task = h.task("sleepy", TIMED_SLEEP.format(log=log, seconds=0.3))
    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.append(h.scheduler.running_count)
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    started = time.monotonic()
    waiters = [(await h.submit(task))[1] for _ in range(6)]
    finals = await gather_within(waiters, 15)
    wall = time.monotonic() - started
    sampler.cancel()

    assert all(f.status is Status.COMPLETED for f in finals)
    assert wall >= 3 * 0.3
    assert max(seen) == 2 and all(n <= 2 for n in seen)
    spans = intervals(log)
    assert len(spans) == 6
    assert max_overlap(spans) == 2  # the limit is used, never exceeded


async def test_task_max_concurrency_serialises_that_task_while_another_task_runs_in_parallel(
    make: Callable[..., Harness],
) -> None:
    h = make(max_concurrency=8)
    serial_log, parallel_log = h.dir / "serial.log", h.dir / "parallel.log"
    serial = h.task("serial", TIMED_SLEEP.format(log=serial_log, seconds=0.3), max_concurrency=1)
    parallel = h.task("parallel", TIMED_SLEEP.format(log=parallel_log, seconds=0.3))

    waiters = []
    for _ in range(3):
        waiters.append((await h.submit(serial))[1])
        waiters.append((await h.submit(parallel))[1])
    finals = await gather_within(waiters, 15)

    assert all(f.status is Status.COMPLETED for f in finals)
    serial_spans, parallel_spans = intervals(serial_log), intervals(parallel_log)
    assert max_overlap(serial_spans) == 1
    assert max_overlap(parallel_spans) == 3
    # The other task ran beside the serial one, not after it.
    assert max(e for _, e in parallel_spans) < max(e for _, e in serial_spans)


# Backpressure


async def test_ensure_room_refuses_once_max_pending_executions_wait(make: Callable[..., Harness]) -> None:
    h = make(max_concurrency=1, max_pending=3)
    blocker = h.task("blocker", f"#!/bin/sh\ntouch {h.dir}/blocker.started\nexec sleep 30\n")
    quick = h.task("quick", "#!/bin/sh\ntrue\n")
    blocking, blocking_waiter = await h.submit(blocker)
    await wait_until(lambda: (h.dir / "blocker.started").exists())
    assert h.scheduler.pending_count == 0  # running, not pending

    queued = []
    for _ in range(3):
        h.scheduler.ensure_room()
        queued.append(await h.submit(quick))
    assert h.scheduler.pending_count == 3

    with pytest.raises(ResourceExhausted):
        h.scheduler.ensure_room()

    first, first_waiter = queued[0]
    assert h.scheduler.request_stop(first.execution_id, False, "make room")
    await asyncio.wait_for(first_waiter, 5)
    h.scheduler.ensure_room()  # one left the queue: room again

    assert h.scheduler.request_stop(blocking.execution_id, True, "done")
    finals = await gather_within([blocking_waiter, *(w for _, w in queued[1:])], 10)
    assert [f.status for f in finals] == [Status.CANCELLED, Status.COMPLETED, Status.COMPLETED]


# Fairness


async def test_a_flood_on_one_task_does_not_starve_another(make: Callable[..., Harness]) -> None:
    h = make(max_concurrency=1)
    flood = h.task("flood", "#!/bin/sh\nsleep 0.05\n")
    other = h.task("other", "#!/bin/sh\nsleep 0.05\n")
    order: list[str] = []
    h.lifecycle.subscribe(lambda event, record: order.append(record.task_id) if event is Event.FINISHED else None)

    waiters = [(await h.submit(flood))[1] for _ in range(20)]
    waiters.append((await h.submit(other))[1])
    finals = await gather_within(waiters, 30)

    assert all(f.status is Status.COMPLETED for f in finals)
    assert len(order) == 21
    floods_before_other = order.index("other")
    assert floods_before_other < 15, order
    assert floods_before_other <= 2  # round-robin: its turn comes right after the current one


# Cancelling


async def test_request_stop_on_a_queued_execution_cancels_it_without_it_ever_running(
    make: Callable[..., Harness],
) -> None:
    h = make(max_concurrency=1)
    marker = h.dir / "queued.ran"
    blocker = h.task("blocker", f"#!/bin/sh\ntouch {h.dir}/blocker.started\nexec sleep 30\n")
    queued_task = h.task("queued", f"#!/bin/sh\ntouch {marker}\n")
    blocking, blocking_waiter = await h.submit(blocker)
    await wait_until(lambda: (h.dir / "blocker.started").exists())
    queued, queued_waiter = await h.submit(queued_task)
    assert h.scheduler.is_active(queued.execution_id)

    assert h.scheduler.request_stop(queued.execution_id, False, "not needed")
    final = await asyncio.wait_for(queued_waiter, 5)

    assert final.status is Status.CANCELLED
    assert final.error_code == "CANCELLED"
    assert "not needed" in final.error_message
    assert final.attempts == 0 and final.started_at == 0
    stored = await h.stored(queued)
    assert stored.status is Status.CANCELLED and stored.attempts == 0
    assert not h.scheduler.is_active(queued.execution_id)
    assert not h.scheduler.request_stop(queued.execution_id, False, "again")  # no longer held

    # Free the slot: the cancelled execution must not run after all.
    assert h.scheduler.request_stop(blocking.execution_id, True, "done")
    assert (await asyncio.wait_for(blocking_waiter, 5)).status is Status.CANCELLED
    await asyncio.sleep(0.3)
    assert not marker.exists()
    assert h.scheduler.running_count == 0 and h.scheduler.pending_count == 0


async def test_request_stop_on_a_running_execution_terminates_it_gracefully_and_quickly(
    make: Callable[..., Harness],
) -> None:
    h = make()
    started, got_term = h.dir / "started", h.dir / "got_term"
    task = h.task(
        "long",
        f"#!/bin/sh\ntrap 'touch {got_term}; exit 143' TERM\ntouch {started}\nsleep 30 &\nwait $!\n",
    )
    record, waiter = await h.submit(task)
    await wait_until(started.exists)

    began = time.monotonic()
    assert h.scheduler.request_stop(record.execution_id, False, "user asked")
    final = await asyncio.wait_for(waiter, 5)
    took = time.monotonic() - began

    assert final.status is Status.CANCELLED
    assert final.error_code == "CANCELLED"
    assert "user asked" in final.error_message
    assert took < 1.5
    assert got_term.exists()  # force=False: SIGTERM first, and the function saw it
    assert (await h.stored(record)).status is Status.CANCELLED
    assert not h.scheduler.is_active(record.execution_id)


async def test_request_stop_of_an_unknown_execution_returns_false(make: Callable[..., Harness]) -> None:
    h = make()
    assert not h.scheduler.request_stop(new_execution_id(), True, "")


# Retries


async def test_failed_attempts_are_retried_until_one_succeeds(make: Callable[..., Harness]) -> None:
    h = make()
    counter = h.dir / "counter"
    task = h.task("flaky", f"#!/bin/sh\necho x >> {counter}\nn=$(wc -l < {counter})\n[ $n -ge 3 ]\n")

    record, waiter = await h.submit(task, max_retries=3)
    final = await asyncio.wait_for(waiter, 15)

    assert final.status is Status.COMPLETED, final.error_message
    assert final.attempts == 3
    assert final.metrics["attempts"] == "3"
    assert len(counter.read_text().splitlines()) == 3
    stored = await h.stored(record)
    assert stored.status is Status.COMPLETED
    assert stored.attempts == 3 and stored.metrics["attempts"] == "3"


async def test_retries_stop_when_max_retries_are_used_up(make: Callable[..., Harness]) -> None:
    h = make()
    counter = h.dir / "counter"
    task = h.task("hopeless", f"#!/bin/sh\necho x >> {counter}\nexit 1\n")

    record, waiter = await h.submit(task, max_retries=2)
    final = await asyncio.wait_for(waiter, 15)

    assert final.status is Status.FAILED
    assert final.error_code == "NONZERO_EXIT"
    assert final.attempts == 3  # the first one and two retries
    assert len(counter.read_text().splitlines()) == 3
    assert (await h.stored(record)).attempts == 3


async def test_not_retryable_error_codes_are_not_retried(make: Callable[..., Harness]) -> None:
    h = make(output_limit_bytes=10)
    counter = h.dir / "counter"
    task = h.task("chatty", f"#!/bin/sh\necho x >> {counter}\nprintf '%0100d' 0\n")

    record, waiter = await h.submit(task, max_retries=3)
    final = await asyncio.wait_for(waiter, 15)

    assert final.status is Status.FAILED
    assert final.error_code == "OUTPUT_TOO_LARGE"
    assert final.attempts == 1
    assert len(counter.read_text().splitlines()) == 1
    stored = await h.stored(record)
    assert stored.status is Status.FAILED and stored.attempts == 1


async def test_request_stop_between_attempts_cancels_the_retry(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spearlet.engine.scheduler.backoff_s", lambda attempt: 5.0)
    h = make()
    counter = h.dir / "counter"
    task = h.task("flaky", f"#!/bin/sh\necho x >> {counter}\nexit 1\n")
    record, waiter = await h.submit(task, max_retries=10)
    await wait_until(lambda: record.status is Status.FAILED)  # the first attempt failed: backing off

    began = time.monotonic()
    assert h.scheduler.request_stop(record.execution_id, False, "enough")
    final = await asyncio.wait_for(waiter, 5)

    assert time.monotonic() - began < 1  # not after the 5 s backoff
    assert final.status is Status.CANCELLED
    assert final.error_code == "CANCELLED"
    assert "between attempts" in final.error_message
    assert final.attempts == 1
    await asyncio.sleep(0.2)
    assert len(counter.read_text().splitlines()) == 1
    stored = await h.stored(record)
    assert (stored.status, stored.attempts) == (Status.CANCELLED, 1)


async def test_a_staged_sync_record_retried_after_the_staging_delay_ends_completed_and_reads_running_between(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spearlet.engine.scheduler.backoff_s", lambda attempt: STAGE_S * 5)  # spans the staging delay
    h = make()
    counter = h.dir / "counter"
    task = h.task("flaky", f"#!/bin/sh\necho x >> {counter}\nn=$(wc -l < {counter})\n[ $n -ge 2 ]\n")
    record = ExecutionRecord(new_execution_id(), task.task_id, "", Mode.SYNC, created_at=now_ms(), max_retries=1)
    h.store.queue_insert(record)  # as the invoker stores a sync call with an id of its own
    waiter = h.lifecycle.waiter(record.execution_id)
    h.scheduler.submit(record, task)
    await wait_until(lambda: record.status is Status.FAILED)  # the first attempt failed: backing off

    between = await h.stored(record)
    assert between.status is Status.RUNNING  # waiting to retry is not an end
    await asyncio.sleep(STAGE_S * 2)  # written by now, still not as an end
    assert (await h.stored(record)).status is Status.RUNNING
    final = await asyncio.wait_for(waiter, 10)

    assert (final.status, final.attempts) == (Status.COMPLETED, 2), final.error_message
    stored = await h.stored(record)
    assert (stored.status, stored.attempts) == (Status.COMPLETED, 2)


def test_backoff_stays_within_full_jitter_bounds_and_varies() -> None:
    for attempt in range(1, 12):
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        samples = [backoff_s(attempt) for _ in range(300)]
        assert all(0 <= s <= ceiling for s in samples), (attempt, max(samples), ceiling)
        assert len(set(samples)) > 1
        assert max(samples) > ceiling / 2  # full jitter: spread over the range, not bunched at 0
    assert max(backoff_s(40) for _ in range(300)) <= BACKOFF_CAP_S


# Estimates


async def test_recent_duration_is_none_before_any_completion_and_close_to_the_real_duration_after(
    make: Callable[..., Harness],
) -> None:
    h = make()
    task = h.task("timed", "#!/bin/sh\nsleep 0.2\n")
    failing = h.task("failing", "#!/bin/sh\nsleep 0.05\nexit 1\n")
    assert h.scheduler.recent_duration_ms("timed", "") is None

    _, failed_waiter = await h.submit(failing)
    assert (await asyncio.wait_for(failed_waiter, 10)).status is Status.FAILED
    assert h.scheduler.recent_duration_ms("failing", "") is None  # only completions count

    began = time.monotonic()
    _, waiter = await h.submit(task)
    final = await asyncio.wait_for(waiter, 10)
    wall_ms = (time.monotonic() - began) * 1000

    assert final.status is Status.COMPLETED
    estimate = h.scheduler.recent_duration_ms("timed", "")
    assert estimate is not None
    assert 200 <= estimate <= wall_ms
    assert estimate == final.execution_time_ms
    assert h.scheduler.recent_duration_ms("timed", "other-function") is None


# Races


async def test_cancel_racing_completion_leaves_one_terminal_state_equal_to_what_lifecycle_reported(
    make: Callable[..., Harness],
) -> None:
    h = make(max_concurrency=4)
    task = h.task("blink", "#!/bin/sh\nsleep 0.01\n")
    loop = asyncio.get_running_loop()
    # One stop per execution, 1 ms apart around the moment it ends (about 10-15 ms after STARTED).
    delays = iter([0.004 + i * 0.001 for i in range(20)])

    def stop_soon(event: Event, record: ExecutionRecord) -> None:
        if event is Event.STARTED:
            loop.call_later(next(delays), h.scheduler.request_stop, record.execution_id, False, "race")

    h.lifecycle.subscribe(stop_soon)
    submitted = [await h.submit(task) for _ in range(20)]
    reported = await gather_within([w for _, w in submitted], 20)
    await asyncio.sleep(0.1)  # any late stop requests have landed

    for (record, _), final in zip(submitted, reported, strict=True):
        assert final.execution_id == record.execution_id
        assert final.status in (Status.COMPLETED, Status.CANCELLED)
        assert final.error_code == ("CANCELLED" if final.status is Status.CANCELLED else "")
        stored = await h.stored(record)
        assert (stored.status, stored.error_code, stored.output, stored.completed_at) == (
            final.status,
            final.error_code,
            final.output,
            final.completed_at,
        )
        finished = [r for r in h.finished if r.execution_id == record.execution_id]
        assert len(finished) == 1  # FINISHED is published exactly once
    assert h.scheduler.running_count == 0 and h.scheduler.pending_count == 0


class StopAsItEnds(ProcessRuntime):
    """The real process runtime, with a stop requested in the instant between the function's end
    and the scheduler recording it."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler: Scheduler | None = None
        self.accepted: list[bool] = []

    async def invoke(self, task: Task, invocation: Invocation, stop: StopRequest) -> Outcome:
        outcome = await super().invoke(task, invocation, stop)
        assert self.scheduler is not None
        self.accepted.append(self.scheduler.request_stop(invocation.execution_id, False, "too late"))
        return outcome


async def test_stop_requested_as_the_function_ends_keeps_its_result_in_store_and_lifecycle_alike(
    make: Callable[..., Harness],
) -> None:
    runtime = StopAsItEnds()
    h = make(runtime=runtime)
    runtime.scheduler = h.scheduler
    ok = h.task("ok", "#!/bin/sh\necho done\n")
    flaky = h.task("flaky", "#!/bin/sh\nexit 1\n")

    (ok_record, ok_waiter), (flaky_record, flaky_waiter) = await h.submit(ok), await h.submit(flaky, max_retries=3)
    ok_final, flaky_final = await gather_within([ok_waiter, flaky_waiter], 10)

    assert runtime.accepted == [True, True]  # both were still held by the scheduler
    assert (ok_final.status, ok_final.output) == (Status.COMPLETED, b"done\n")
    assert (flaky_final.status, flaky_final.attempts) == (Status.FAILED, 1)  # stopped: no retry
    for record, final in ((ok_record, ok_final), (flaky_record, flaky_final)):
        stored = await h.stored(record)
        assert (stored.status, stored.error_code, stored.attempts) == (final.status, final.error_code, final.attempts)
        assert [r.execution_id for r in h.finished].count(record.execution_id) == 1


# Shutdown


async def test_close_cancels_running_work_leaving_the_record_running_and_no_process_behind(
    make: Callable[..., Harness],
) -> None:
    h = make(max_concurrency=1)
    started, queued_ran = h.dir / "started", h.dir / "queued.ran"
    sleep_arg = "29.4242"  # marks the function's own child process
    running_task = h.task("long", f"#!/bin/sh\ntouch {started}\nsleep {sleep_arg}\n")
    queued_task = h.task("later", f"#!/bin/sh\ntouch {queued_ran}\n")
    running, running_waiter = await h.submit(running_task)
    queued, queued_waiter = await h.submit(queued_task)
    await wait_until(started.exists)
    await wait_until(lambda: bool(our_processes(sleep_arg)))  # the script has exec'd its sleep

    began = time.monotonic()
    await asyncio.wait_for(h.scheduler.close(), 10)

    assert time.monotonic() - began < 5
    assert (await h.stored(running)).status is Status.RUNNING  # for recovery at the next start
    assert (await h.stored(queued)).status is Status.PENDING
    assert h.scheduler.running_count == 0
    assert not running_waiter.done() and not queued_waiter.done()
    running_waiter.cancel()
    queued_waiter.cancel()
    assert not our_processes(sleep_arg)
    assert not list(live_children())
    await asyncio.sleep(0.2)
    assert not queued_ran.exists()  # a closed scheduler starts nothing


# A store that takes no writes for a while


async def test_an_end_the_store_cannot_take_is_held_answered_and_written_once_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "HELD_RETRY_S", 0.01)
    async with engine(tmp_path) as eng:
        await eng.task()
        refusals = 2  # the end's first write, and its first retry
        write = eng.store.transition

        async def unreachable_at_first(record: ExecutionRecord) -> bool:
            nonlocal refusals
            if record.done and refusals:
                refusals -= 1
                raise StoreUnavailable("the store cannot be reached")
            return await write(record)

        monkeypatch.setattr(eng.store, "transition", unreachable_at_first)
        result = await eng.invoker.invoke(eng.request())
        execution_id = result.record.execution_id
        assert result.record.status is Status.COMPLETED  # the caller is answered all the same
        assert eng.scheduler.held(execution_id) is not None
        assert (await eng.invoker.get(execution_id)).status is Status.COMPLETED  # status queries too
        deadline = time.monotonic() + 5
        while eng.scheduler.held(execution_id) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stored = await eng.store.get_execution(execution_id)
        assert refusals == 0 and stored is not None and stored.status is Status.COMPLETED
