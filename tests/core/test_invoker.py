"""The Invoker inside a real node (SQLite store, Python workers), for what only an in-process
caller can arrange: a caller that goes away at an exact moment."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spearlet.config import Settings
from spearlet.core.errors import ResourceExhausted
from spearlet.core.invoker import InvocationType, InvokeRequest
from spearlet.core.lifecycle import Event
from spearlet.core.models import ArtifactSpec, ExecutionRecord, Mode, Status
from spearlet.node import Node

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def final(node: Node, execution_id: str) -> ExecutionRecord | None:
    for _ in range(500):
        record = await node.store.get_execution(execution_id)
        if record is not None and record.done:
            return record
        await asyncio.sleep(0.01)
    return await node.store.get_execution(execution_id)


def request(mode: Mode, **fields: Any) -> InvokeRequest:
    return InvokeRequest(InvocationType.EXISTING_TASK, mode, task_id="greet", function_name="noop", **fields)


async def leave_during_the_write(node: Node, req: InvokeRequest) -> None:
    """Invoke, and cancel the caller once its record is on its way to the store."""
    caller = asyncio.ensure_future(node.invoker.invoke(req))
    await asyncio.sleep(0)  # the caller runs up to its wait for the write
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


@pytest.mark.parametrize("mode", [Mode.ASYNC, Mode.SYNC], ids=["async", "sync"])
async def test_work_stored_after_its_caller_went_away_runs_at_once(node: Node, mode: Mode) -> None:
    await leave_during_the_write(node, request(mode, execution_id="0190c3c4-59d0-7d1b-8f47-3c2a51f0a111"))
    record = await final(node, "0190c3c4-59d0-7d1b-8f47-3c2a51f0a111")
    assert record is not None and record.status is Status.COMPLETED


async def test_an_idempotent_retry_after_a_caller_went_away_finds_work_that_runs(node: Node) -> None:
    await leave_during_the_write(node, request(Mode.ASYNC, metadata={"idempotency_key": "retry-me"}))
    again = await node.invoker.invoke(request(Mode.ASYNC, metadata={"idempotency_key": "retry-me"}))
    record = await final(node, again.record.execution_id)
    assert record is not None and record.status is Status.COMPLETED


async def test_an_answer_from_the_result_cache_stored_after_its_caller_went_away_is_announced(node: Node) -> None:
    greet = await node.tasks.find("greet")
    assert greet is not None
    spec = ArtifactSpec("python", greet.location, metadata={**greet.metadata, "cache_ttl_s": "60"})
    await node.tasks.register("cached", spec, "")
    first = await node.invoker.invoke(InvokeRequest(InvocationType.EXISTING_TASK, Mode.SYNC, task_id="cached"))
    assert first.record.status is Status.COMPLETED
    heard: list[tuple[Event, str]] = []
    node.lifecycle.subscribe(lambda event, record: heard.append((event, record.execution_id)))
    await leave_during_the_write(node, InvokeRequest(InvocationType.EXISTING_TASK, Mode.SYNC, task_id="cached"))
    hits = [execution_id for event, execution_id in heard if event is Event.FINISHED]
    assert len(hits) == 1  # callbacks and metrics hear of it, as of any answer from the cache
    record = await node.store.get_execution(hits[0])
    assert record is not None and record.metrics.get("cache_hit") == "true"


async def test_concurrent_accepts_never_exceed_max_pending(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0, max_pending=20, max_concurrency=1)
    node = Node(settings)
    await node.start()
    try:
        # One slot, taken by a long call: every accepted execution waits, counted as pending.
        sleep = InvokeRequest(InvocationType.EXISTING_TASK, Mode.ASYNC, task_id="sleep", params={"seconds": 30})
        many = [dataclasses.replace(sleep) for _ in range(200)]
        outcomes = await asyncio.gather(*(node.invoker.invoke(r) for r in many), return_exceptions=True)
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert len(accepted) + len(refused) == 200
        assert len(accepted) <= settings.max_pending + settings.max_concurrency
        assert node.scheduler.pending_count <= settings.max_pending
    finally:
        await node.stop()
