"""FunctionApi, the API both transports serve, inside a real node (SQLite store, real processes):
what GetStats counts and how a cancel of an unknown execution answers."""

from __future__ import annotations

import asyncio

import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.node import Node
from tests.helpers import existing, params

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node(embedded_node: Node) -> Node:
    return embedded_node


async def run_a_mix(node: Node) -> None:
    """2 completed, 1 failed, 2 timed out, 4 cancelled."""
    api = node.api
    for _ in range(2):
        assert (await api.invoke(existing("hello"))).result.status == pb.EXECUTION_STATUS_COMPLETED
    assert (await api.invoke(existing("fail"))).result.status == pb.EXECUTION_STATUS_FAILED
    for _ in range(2):
        timed_out = await api.invoke(
            existing("sleep", parameters=params(seconds=5), context=pb.ExecutionContext(timeout_ms=50))
        )
        assert timed_out.result.status == pb.EXECUTION_STATUS_TIMEOUT
    accepted = [
        await api.invoke(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=30)))
        for _ in range(4)
    ]
    cancels = await asyncio.gather(
        *(api.cancel(pb.CancelExecutionRequest(execution_id=a.execution_id, force=True)) for a in accepted)
    )
    assert [c.final_status for c in cancels] == [pb.EXECUTION_STATUS_CANCELLED] * 4


async def test_stats_count_timeouts_as_failed_and_cancels_as_neither(node: Node) -> None:
    await run_a_mix(node)
    stats = await node.api.stats(pb.GetStatsRequest(include_execution_stats=True, time_range_hours=1))
    e = stats.execution_stats
    assert (e.completed_executions, e.failed_executions, e.running_executions, e.pending_executions) == (2, 3, 0, 0)
    assert e.success_rate_percent == pytest.approx(40.0)  # 2 / (2 + 3): the 4 cancels count in neither
    assert dict(e.executions_by_function) == {"hello": 2, "fail": 1, "sleep": 6}
    assert stats.service_stats.total_executions == 9


async def test_most_active_tasks_carry_the_counts_and_last_status_that_list_tasks_reports(node: Node) -> None:
    await run_a_mix(node)
    stats = await node.api.stats(pb.GetStatsRequest(include_task_stats=True))
    listed = {t.task_id: t for t in (await node.api.list_tasks(pb.ListTasksRequest())).tasks}
    busiest = stats.task_stats.most_active_tasks
    assert [t.task_id for t in busiest] == ["sleep", "hello", "fail"]
    assert [(t.execution_count, t.last_status) for t in busiest] == [
        (6, pb.EXECUTION_STATUS_CANCELLED),
        (2, pb.EXECUTION_STATUS_COMPLETED),
        (1, pb.EXECUTION_STATUS_FAILED),
    ]
    for task in busiest:
        assert task == listed[task.task_id]
    assert stats.task_stats.active_tasks == 3


async def test_cancel_of_an_unknown_execution_answers_not_found_without_an_error(node: Node) -> None:
    response = await node.api.cancel(pb.CancelExecutionRequest(execution_id="0190c3c4-59d0-7d1b-8f47-3c2a51f0a999"))
    assert response.success is False
    assert response.final_status == pb.EXECUTION_STATUS_UNKNOWN
    assert "not found" in response.message
