"""spearlet.client.AsyncClient against a real node process: the same methods as coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from spearlet.client import (
    AsyncClient,
    EventKind,
    ExecutionNotFound,
    FunctionFailed,
    InvalidArgument,
    Options,
    Overloaded,
    Status,
    TaskNotFound,
    Unauthenticated,
    Unavailable,
)
from tests.client.conftest import TOKEN, Guarded, max_overlap, timed_inputs
from tests.helpers import NodeProcess, metric, open_path, script

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def client(tasks: NodeProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(tasks.grpc_target) as c:
        yield c


async def test_invoke_returns_plain_values_and_raises_function_failed(client: AsyncClient) -> None:
    assert await client.invoke("hello", name="Ada") == {"greeting": "Hello, Ada!"}
    assert await client.invoke("binary") == b"\xff\x00\x01"
    assert await client.invoke("echo", None, {"options": 1}, b=b"\x00") == {"options": 1, "b": "AA=="}
    with pytest.raises(FunctionFailed) as failed:
        await client.invoke("fail")
    assert failed.value.error_code == "NONZERO_EXIT" and failed.value.logs
    with pytest.raises(FunctionFailed, match="TIMEOUT"):
        await client.invoke("sleep", options=Options(timeout=0.3), seconds=10)


async def test_request_errors_are_typed(client: AsyncClient, guarded: Guarded) -> None:
    with pytest.raises(TaskNotFound) as unknown:
        await client.invoke("no-such-task")
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(ExecutionNotFound):
        await client.execution("nope").result()
    with pytest.raises(ExecutionNotFound):
        await client.execution("nope").cancel()
    with pytest.raises(InvalidArgument, match="NaN"):
        await client.invoke("echo", x=float("nan"))
    async with AsyncClient(guarded.target, tls_ca=guarded.certs.ca) as no_token:
        with pytest.raises(Unauthenticated):
            await no_token.health()
    async with AsyncClient(guarded.target, token=TOKEN) as plaintext:
        with pytest.raises(Unavailable):
            await plaintext.health()
    async with AsyncClient(guarded.target, token=TOKEN, tls_ca=guarded.certs.ca) as trusted:
        assert (await trusted.health()).status == "healthy"
        running = [await trusted.submit("sleep", seconds=30)]
        try:
            with pytest.raises(Overloaded):
                for _ in range(5):
                    running.append(await trusted.submit("sleep", seconds=30))
        finally:
            for execution in running:
                await execution.cancel(force=True)


async def test_submit_events_result_without_polling_and_future(client: AsyncClient, tasks: NodeProcess) -> None:
    queries = metric(tasks, "spearlet_status_queries_total", transport="grpc")
    execution = await client.submit("greet", "wait", seconds=2)
    events = [event async for event in execution]
    assert events[0].kind is EventKind.STATUS and events[-1].status is Status.COMPLETED
    assert await execution.result() == {"waited": pytest.approx(2, abs=0.5)}
    assert metric(tasks, "spearlet_status_queries_total", transport="grpc") == queries
    assert await execution.done() and await execution.status() is Status.COMPLETED
    futures = [(await client.submit("hello", name=str(i))).future() for i in range(3)]
    assert await asyncio.gather(*futures) == [{"greeting": f"Hello, {i}!"} for i in range(3)]
    slow = await client.submit("sleep", seconds=30)
    with pytest.raises(TimeoutError):
        await slow.result(timeout=0.3)
    assert (await slow.cancel()).success
    with pytest.raises(FunctionFailed) as cancelled:
        await slow.result(timeout=10)
    assert cancelled.value.status is Status.CANCELLED
    assert any(line.startswith("slept") for line in await slow.logs())


async def test_stream_yields_chunks_and_leaving_early_cancels(client: AsyncClient) -> None:
    assert [chunk async for chunk in client.stream("greet", "count", n=3)] == [0, 1, 2]
    async with client.stream("drip") as stream:
        async for chunk in stream:
            assert chunk == "line 0\n"
            break
    with pytest.raises(FunctionFailed) as ended:
        await client.execution(stream.execution_id).result(timeout=10)
    assert ended.value.status is Status.CANCELLED
    with pytest.raises(FunctionFailed):
        [chunk async for chunk in client.stream("fail")]


async def test_map_keeps_input_order_and_its_bound(client: AsyncClient) -> None:
    durations = [0.9, 0.2, 0.6, 0.2, 0.5, 0.2]
    results = [r async for r in client.map("timed", timed_inputs(durations), max_in_flight=3)]
    assert [r["i"] for r in results] == list(range(len(durations)))
    assert max_overlap([(r["start"], r["end"]) for r in results]) == 3


async def test_tasks_executions_health_and_stats(client: AsyncClient, tmp_path: Path) -> None:
    path = script(open_path(tmp_path) / "one.sh", "#!/bin/sh\necho 1\n")
    assert (await client.tasks.register("one", path)).created
    assert await client.invoke("one") == 1
    assert "one" in [t.task_id async for t in client.tasks.list(page_size=2)]
    assert (await client.tasks.get("one", executions=3)).executions[0].task_id == "one"
    ids = {(await client.submit("one")).id for _ in range(3)}
    for execution_id in ids:
        await client.execution(execution_id).result()
    listed = [e.execution_id async for e in client.executions.list(task="one", page_size=2)]
    assert ids <= set(listed) and len(listed) == 4
    assert (await client.tasks.delete("one", cleanup=True)).cleaned_executions == 4
    assert (await client.health()).status == "healthy"
    assert (await client.stats()).service_stats.total_tasks >= 1
