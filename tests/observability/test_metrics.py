"""Metrics of a real node: a deleted task leaves no series, cached label children or history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from spearlet.config import Settings
from spearlet.core.models import ArtifactSpec, Mode, Status
from spearlet.engine.invoker import InvocationType, InvokeRequest
from spearlet.node import Node
from tests.helpers import open_path, script

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(Settings(data_dir=open_path(tmp_path) / "data", grpc_port=0, http_port=0, tasks="none"))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def series_of(node: Node, task_id: str) -> list[str]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{node.http_url}/metrics")).text
    return [line for line in text.splitlines() if f'task="{task_id}"' in line]


async def test_a_deleted_task_leaves_no_series_and_no_history(node: Node, tmp_path: Path) -> None:
    quick = script(tmp_path / "quick.sh", "#!/bin/sh\necho '{}'\n")
    slow = script(tmp_path / "slow.sh", "#!/bin/sh\nsleep 30\n")
    for name, path in (("quick", quick), ("slow", slow)):
        await node.tasks.register(name, ArtifactSpec("process", str(path)))
    for _ in range(2):
        done = await node.invoker.invoke(InvokeRequest(InvocationType.EXISTING_TASK, Mode.SYNC, task_id="quick"))
        assert done.record.status is Status.COMPLETED
    running = await node.invoker.invoke(InvokeRequest(InvocationType.EXISTING_TASK, Mode.ASYNC, task_id="slow"))
    while (await node.store.get_execution(running.record.execution_id)).status is not Status.RUNNING:  # type: ignore[union-attr]
        await asyncio.sleep(0.02)
    assert len(await series_of(node, "quick")) > 20  # histograms and counters of a task are many lines
    assert await series_of(node, "slow")  # its queue wait
    assert node.scheduler.recent_duration_ms("quick", "") is not None

    await node.management.delete_task("quick", force=False, cleanup_executions=False)
    await node.management.delete_task("slow", force=True, cleanup_executions=False)  # its end comes first

    assert await series_of(node, "quick") == [] and await series_of(node, "slow") == []
    assert not [key for key in node.metrics._children if key[1] in ("quick", "slow")]
    assert node.scheduler.recent_duration_ms("quick", "") is None
    stopped = await node.store.get_execution(running.record.execution_id)
    assert stopped is not None and stopped.status is Status.CANCELLED
