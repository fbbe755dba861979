"""Management in process, over the fakes of tests/fakes.py and the memory store: listing, deleting a
task, health, statistics, retention and recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from spearlet.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from spearlet.core.models import Mode, Status, now_ms
from tests.fakes import Engine, Script, engine, stored_pending

pytestmark = pytest.mark.timeout(60)


# Listing, deleting, health, stats, retention


async def test_executions_are_listed_newest_first(eng: Engine) -> None:
    ids = [(await eng.invoker.invoke(eng.request())).record.execution_id for _ in range(3)]
    page = await eng.management.list_executions("fn", Status.UNKNOWN, 0, "")
    assert [r.execution_id for r in page.executions] == ids[::-1]
    with pytest.raises(InvalidArgument, match="limit"):
        await eng.management.list_executions("", Status.UNKNOWN, -1, "")


async def test_a_task_with_active_executions_is_deleted_only_with_force(eng: Engine) -> None:
    eng.runtime.script("", Script(hang=True))
    running = await eng.invoker.invoke(eng.request(Mode.ASYNC))
    with pytest.raises(FailedPrecondition, match="1 active executions"):
        await eng.management.delete_task("fn", force=False, cleanup_executions=False)
    assert await eng.management.delete_task("fn", force=True, cleanup_executions=False) == (
        True,
        0,
        "task 'fn' deleted",
    )
    final = await eng.final(running.record.execution_id)
    assert final.status is Status.CANCELLED and "task deleted" in final.error_message
    with pytest.raises(NotFound):
        await eng.management.delete_task("fn", force=False, cleanup_executions=True)


async def test_health_turns_degraded_then_unhealthy_as_the_pending_queue_fills(tmp_path: Path) -> None:
    async with engine(tmp_path, max_pending=5, max_concurrency=1) as eng:
        await eng.task()
        eng.runtime.script("", *[Script(hang=True)] * 7)
        statuses = []
        for _ in range(6):  # one runs, the rest wait
            await eng.invoker.invoke(eng.request(Mode.ASYNC))
            statuses.append((await eng.management.health()).status)
        assert statuses == ["healthy", "healthy", "healthy", "healthy", "degraded", "unhealthy"]
        health = await eng.management.health()
        assert (health.running, health.pending, health.total_executions, health.active_tasks) == (1, 5, 6, 1)
        assert health.message == "pending queue full (5)"
        with pytest.raises(ResourceExhausted):
            await eng.invoker.invoke(eng.request(Mode.ASYNC))
        await eng.management.delete_task("fn", force=True, cleanup_executions=False)


async def test_stats_cover_the_hours_asked_and_refuse_a_negative_range(eng: Engine) -> None:
    await stored_pending(eng, created_at=now_ms() - 2 * 3_600_000)
    await eng.invoker.invoke(eng.request())
    assert (await eng.management.stats(1)).total == 1
    assert (await eng.management.stats(0)).total == 2
    with pytest.raises(InvalidArgument, match="time_range_hours"):
        await eng.management.stats(-1)


async def test_the_retention_keeps_the_newest_finished_records(tmp_path: Path) -> None:
    async with engine(tmp_path, retention_max_records=1) as eng:
        await eng.task()
        ids = [(await eng.invoker.invoke(eng.request())).record.execution_id for _ in range(3)]
        assert await eng.management.expire_records() == 2
        assert [
            r.execution_id for r in (await eng.management.list_executions("", Status.UNKNOWN, 0, "")).executions
        ] == ids[2:]


# Recovery


async def test_recovery_runs_pending_work_retries_what_may_be_retried_and_fails_the_rest(eng: Engine) -> None:
    pending = await stored_pending(eng)
    retry = await stored_pending(eng, status=Status.RUNNING, attempts=1, max_retries=1)
    spent = await stored_pending(eng, status=Status.RUNNING, attempts=1)
    orphan = await stored_pending(eng, task_id="gone")
    assert await eng.management.recover() == (2, 2)
    assert (await eng.final(pending.execution_id)).status is Status.COMPLETED
    assert (await eng.final(retry.execution_id)).attempts == 2
    failed = await eng.final(spent.execution_id)
    assert (failed.status, failed.error_code) == (Status.FAILED, "NODE_RESTARTED")
    assert "during attempt 1 and no retries were left" in failed.error_message
    orphaned = await eng.final(orphan.execution_id)
    assert (orphaned.status, orphaned.error_code) == (Status.FAILED, "TASK_DELETED")
