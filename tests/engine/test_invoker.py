"""The Invoker in process. Its branches run over fakes (tests/fakes.py: a scripted runtime, a
stand-in for the other nodes of a cluster) and the memory store, in milliseconds each; one runs
inside a real node (SQLite store, Python workers): work stored for a caller that went away."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from spearlet.config import Settings
from spearlet.core.errors import InvalidArgument, NotFound, ResourceExhausted
from spearlet.core.ids import execution_of_own_instance, own_instance_id
from spearlet.core.lifecycle import Event
from spearlet.core.models import ArtifactSpec, ExecutionRecord, Mode, Status
from spearlet.engine import invoker as invoker_module
from spearlet.engine.invoker import MAX_TIMEOUT_MS, CancelResult, InvocationType, InvokeRequest
from spearlet.node import Node
from tests.fakes import Engine, Script, engine, final, stored_pending

pytestmark = pytest.mark.timeout(60)


def heard_by(eng: Engine) -> list[tuple[Event, str]]:
    heard: list[tuple[Event, str]] = []
    eng.lifecycle.subscribe(lambda event, record: heard.append((event, record.execution_id)))
    return heard


async def leave_while_writing(call: Awaitable[Any]) -> None:
    """Start `call` and cancel its caller once the record is on its way to the store."""
    caller = asyncio.ensure_future(call)
    await asyncio.sleep(0)  # the caller runs up to its wait for the write
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


# What a request may ask


async def test_invoke_refuses_the_stream_mode(eng: Engine) -> None:
    with pytest.raises(InvalidArgument, match="StreamFunction"):
        await eng.invoker.invoke(eng.request(Mode.STREAM))


@pytest.mark.parametrize(
    ("req", "error", "message"),
    [
        (InvokeRequest(InvocationType.NEW_TASK), InvalidArgument, "needs task_name"),
        (InvokeRequest(InvocationType.NEW_TASK, task_name="new"), InvalidArgument, "needs artifact_spec"),
        (InvokeRequest(InvocationType.EXISTING_TASK), InvalidArgument, "needs task_id"),
        (InvokeRequest(InvocationType.EXISTING_TASK, task_id="ghost"), NotFound, "set create_if_not_exists"),
        (
            InvokeRequest(InvocationType.EXISTING_TASK, task_id="ghost", create_if_not_exists=True),
            NotFound,
            r"'ghost' not found$",
        ),
        (InvokeRequest(7), InvalidArgument, "invocation_type 7 is not valid"),
        (
            InvokeRequest(InvocationType.EXISTING_TASK, task_id="fn", params={f"p{i}": i for i in range(257)}),
            InvalidArgument,
            "257 parameters",
        ),
        (
            InvokeRequest(InvocationType.EXISTING_TASK, task_id="fn", timeout_ms=-1),
            InvalidArgument,
            "timeout_ms must be between",
        ),
        (
            InvokeRequest(InvocationType.EXISTING_TASK, task_id="fn", timeout_ms=MAX_TIMEOUT_MS + 1),
            InvalidArgument,
            "timeout_ms must be between",
        ),
        (
            InvokeRequest(InvocationType.EXISTING_TASK, task_id="fn", max_retries=11),
            InvalidArgument,
            "max_retries must be between",
        ),
        (
            InvokeRequest(InvocationType.EXISTING_TASK, task_id="fn", execution_id="has space"),
            InvalidArgument,
            "execution_id",
        ),
    ],
)
async def test_a_request_that_cannot_be_served_is_refused_and_stores_nothing(
    eng: Engine, req: InvokeRequest, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await eng.invoker.invoke(req)
    assert await eng.store.count_executions() == 0


async def test_a_new_task_is_registered_and_invoked(eng: Engine) -> None:
    spec = ArtifactSpec("fake", str(eng.artifact))
    result = await eng.invoker.invoke(InvokeRequest(InvocationType.NEW_TASK, task_name="brand-new", artifact=spec))
    assert result.record.status is Status.COMPLETED and result.record.task_id == "brand-new"
    assert await eng.store.get_task("brand-new") is not None


async def test_create_if_not_exists_registers_the_missing_task(eng: Engine) -> None:
    spec = ArtifactSpec("fake", str(eng.artifact))
    req = eng.request(task_id="made-on-call", create_if_not_exists=True, artifact=spec)
    assert (await eng.invoker.invoke(req)).record.status is Status.COMPLETED
    assert await eng.store.get_task("made-on-call") is not None


async def test_timeout_and_retries_come_from_the_call_else_the_task_else_the_node(eng: Engine) -> None:
    await eng.task("tuned", timeout_ms="1234", max_retries="2")
    from_task = (await eng.invoker.invoke(eng.request(Mode.ASYNC, task_id="tuned"))).record
    assert (from_task.timeout_ms, from_task.max_retries) == (1234, 2)
    from_call = (
        await eng.invoker.invoke(eng.request(Mode.ASYNC, task_id="tuned", timeout_ms=99, max_retries=1))
    ).record
    assert (from_call.timeout_ms, from_call.max_retries) == (99, 1)
    from_node = (await eng.invoker.invoke(eng.request(Mode.ASYNC))).record
    assert (from_node.timeout_ms, from_node.max_retries) == (eng.settings.default_timeout_ms, 0)


async def test_an_admission_check_refuses_a_call_before_it_is_stored(eng: Engine) -> None:
    def refuse(record: ExecutionRecord) -> None:
        raise InvalidArgument(f"not {record.function_name}")

    eng.invoker.checks.append(refuse)
    with pytest.raises(InvalidArgument, match="not f"):
        await eng.invoker.invoke(eng.request(function_name="f"))
    assert await eng.store.count_executions() == 0 and not eng.runtime.calls


# Sync and async


async def test_a_sync_call_answers_with_its_final_record_stored(eng: Engine) -> None:
    eng.runtime.script("hello", Script(output=b'{"hi": 1}'))
    result = await eng.invoker.invoke(eng.request(function_name="hello", params={"name": "Ann"}))
    assert result.record.status is Status.COMPLETED and result.record.output == b'{"hi": 1}'
    assert result.status_endpoint == "" and result.message == ""
    assert await eng.store.get_execution(result.record.execution_id) == result.record
    assert eng.runtime.calls[0].params == {"name": "Ann"}


async def test_the_invocation_id_is_recorded_and_a_malformed_one_refused(eng: Engine) -> None:
    result = await eng.invoker.invoke(eng.request(invocation_id="inv-42"))
    stored = await eng.store.get_execution(result.record.execution_id)
    assert stored is not None and stored.invocation_id == "inv-42"
    with pytest.raises(InvalidArgument, match="invocation_id 'bad id' is invalid"):
        await eng.invoker.invoke(eng.request(invocation_id="bad id"))


async def test_a_run_once_execution_has_its_own_instance_named_before_started_is_published(eng: Engine) -> None:
    seen: list[tuple[Event, str]] = []
    eng.lifecycle.subscribe(lambda event, record: seen.append((event, record.instance_id)))
    result = await eng.invoker.invoke(eng.request())
    own = own_instance_id(result.record.execution_id)
    assert (Event.STARTED, own) in seen and (Event.ACCEPTED, own) not in seen
    assert result.record.instance_id == own and execution_of_own_instance(own) == result.record.execution_id
    assert execution_of_own_instance("hello/1") == ""


async def test_a_sync_call_past_max_sync_wait_hands_off_with_the_status_endpoint(tmp_path: Path) -> None:
    async with engine(tmp_path, max_sync_wait_s=0.05, public_url="https://spear.example/") as eng:
        await eng.task()
        eng.runtime.script("slow", Script(delay_s=0.15))
        result = await eng.invoker.invoke(eng.request(function_name="slow"))
        execution_id = result.record.execution_id
        assert result.record.status is Status.RUNNING
        assert result.status_endpoint == f"https://spear.example/api/v1/executions/{execution_id}/status"
        assert "still running after max_sync_wait (0.05 s)" in result.message
        assert (await eng.final(execution_id)).status is Status.COMPLETED  # the work went on


async def test_a_sync_caller_that_goes_away_while_waiting_leaves_the_call_running(eng: Engine) -> None:
    eng.runtime.script("slow", Script(delay_s=0.05))
    caller = asyncio.ensure_future(eng.invoker.invoke(eng.request(function_name="slow", execution_id="mine")))
    await eng.runtime.started("mine")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (await eng.final("mine")).status is Status.COMPLETED


async def test_an_async_call_is_stored_before_its_answer_and_has_no_estimate_without_history(eng: Engine) -> None:
    eng.runtime.script("", Script(hang=True))
    result = await eng.invoker.invoke(eng.request(Mode.ASYNC))
    stored = await eng.store.get_execution(result.record.execution_id)
    assert stored is not None and result.message == "accepted"
    assert result.status_endpoint == f"/api/v1/executions/{result.record.execution_id}/status"
    assert result.estimated_completion_ms == 0
    assert result.record.metrics["estimate"] == "no history for this function yet"
    await eng.invoker.cancel(result.record.execution_id)


async def test_an_async_estimate_is_the_mean_of_recent_runs_times_the_waves_queued_ahead(eng: Engine) -> None:
    await eng.task("one-at-a-time", max_concurrency="1")
    req = eng.request(task_id="one-at-a-time", function_name="f")
    eng.runtime.script("f", Script(delay_s=0.02), Script(delay_s=0.04), Script(hang=True), Script(hang=True))
    await eng.invoker.invoke(req)
    await eng.invoker.invoke(req)  # history: 20 and 40 ms
    alone = await eng.invoker.invoke(dataclasses.replace(req, mode=Mode.ASYNC))
    assert alone.estimated_completion_ms == 30
    assert alone.record.metrics["estimate"] == "mean of recent runs 30 ms, 0 queued ahead"
    queued = await eng.invoker.invoke(dataclasses.replace(req, mode=Mode.ASYNC))  # behind the one running
    assert queued.estimated_completion_ms == 30 * 2
    behind_two = await eng.invoker.invoke(dataclasses.replace(req, mode=Mode.ASYNC))
    assert behind_two.estimated_completion_ms == 30 * 3
    assert behind_two.record.metrics["estimate"] == "mean of recent runs 30 ms, 1 queued ahead"
    await eng.management.delete_task("one-at-a-time", force=True, cleanup_executions=False)


# An execution id or idempotency key that exists


async def test_a_call_with_an_execution_id_that_exists_answers_with_that_execution(eng: Engine) -> None:
    first = await eng.invoker.invoke(eng.request(execution_id="order-1"))
    again = await eng.invoker.invoke(eng.request(execution_id="order-1", function_name="other"))
    assert again.record == first.record
    assert again.message == "an execution with this id or idempotency key exists"
    assert len(eng.runtime.calls) == 1


async def test_an_async_retry_with_the_same_idempotency_key_gets_the_first_execution(eng: Engine) -> None:
    eng.runtime.script("", Script(hang=True))
    keyed = {"idempotency_key": "pay-7"}
    first = await eng.invoker.invoke(eng.request(Mode.ASYNC, metadata=keyed))
    again = await eng.invoker.invoke(eng.request(Mode.ASYNC, metadata=keyed))
    assert again.record.execution_id == first.record.execution_id
    assert again.status_endpoint == first.status_endpoint != ""
    assert first.record.idempotency_key == "fn:pay-7"  # a key is the task's own
    await eng.invoker.cancel(first.record.execution_id)
    assert len(eng.runtime.calls) == 1


async def test_a_sync_retry_of_a_running_execution_waits_for_its_end(eng: Engine) -> None:
    eng.runtime.script("", Script(delay_s=0.05, output=b"1"))
    keyed = {"idempotency_key": "k"}
    first = await eng.invoker.invoke(eng.request(Mode.ASYNC, metadata=keyed))
    again = await eng.invoker.invoke(eng.request(metadata=keyed))
    assert again.record.execution_id == first.record.execution_id
    assert again.record.status is Status.COMPLETED and again.record.output == b"1"


async def test_a_sync_retry_of_an_execution_not_held_here_answers_with_what_is_stored(eng: Engine) -> None:
    elsewhere = await stored_pending(eng, idempotency_key="fn:k")
    again = await eng.invoker.invoke(eng.request(metadata={"idempotency_key": "k"}))
    assert again.record == elsewhere and not eng.runtime.calls


# The result cache


async def test_an_identical_call_within_the_ttl_is_answered_from_the_cache(eng: Engine) -> None:
    await eng.task("cached", cache_ttl_s="60")
    req = eng.request(task_id="cached", params={"n": 1})
    first = await eng.invoker.invoke(req)
    heard = heard_by(eng)
    hit = await eng.invoker.invoke(req)
    assert hit.message == "answered from the result cache"
    assert hit.record.status is Status.COMPLETED and hit.record.output == first.record.output
    assert hit.record.metrics == {"cache_hit": "true", "cached_from": first.record.execution_id}
    assert await eng.store.get_execution(hit.record.execution_id) == hit.record  # a record of its own
    assert heard == [(Event.ACCEPTED, hit.record.execution_id), (Event.FINISHED, hit.record.execution_id)]
    other = await eng.invoker.invoke(dataclasses.replace(req, params={"n": 2}))
    assert "cache_hit" not in other.record.metrics
    assert len(eng.runtime.calls) == 2


async def test_answers_from_the_cache_come_from_the_execution_that_ran(eng: Engine) -> None:
    """An answer from the cache is no source of another: else calls within the TTL of each
    other would be answered for ever from a result computed once."""
    await eng.task("cached", cache_ttl_s="60")
    req = eng.request(task_id="cached")
    ran = await eng.invoker.invoke(req)
    hits = [await eng.invoker.invoke(req) for _ in range(2)]
    assert [h.record.metrics["cached_from"] for h in hits] == [ran.record.execution_id] * 2


async def test_a_failure_is_never_cached(eng: Engine) -> None:
    await eng.task("cached", cache_ttl_s="60")
    eng.runtime.script("", Script(Status.FAILED, error_code="FUNCTION_ERROR"))
    req = eng.request(task_id="cached")
    assert (await eng.invoker.invoke(req)).record.status is Status.FAILED
    again = await eng.invoker.invoke(req)
    assert again.record.status is Status.COMPLETED and "cache_hit" not in again.record.metrics


async def test_a_cache_hit_under_an_execution_id_that_exists_answers_with_that_execution(eng: Engine) -> None:
    await eng.task("cached", cache_ttl_s="60")
    await eng.invoker.invoke(eng.request(task_id="cached"))
    first = await eng.invoker.invoke(eng.request(task_id="cached", execution_id="mine"))
    again = await eng.invoker.invoke(eng.request(Mode.ASYNC, task_id="cached", execution_id="mine"))
    assert again.record == first.record and "exists" in again.message
    assert again.status_endpoint.endswith("/executions/mine/status")


# A caller that goes away while its record is written: what it stored still happens


async def test_an_idempotent_retry_after_its_caller_went_away_finds_the_work_it_stored(eng: Engine) -> None:
    keyed = {"idempotency_key": "retry-me"}
    await leave_while_writing(eng.invoker.invoke(eng.request(Mode.ASYNC, metadata=keyed)))
    again = await eng.invoker.invoke(eng.request(Mode.ASYNC, metadata=keyed))
    assert again.message == "an execution with this id or idempotency key exists"
    assert (await eng.final(again.record.execution_id)).status is Status.COMPLETED
    assert len(eng.runtime.calls) == 1


async def test_a_caller_that_leaves_while_its_id_is_found_taken_starts_nothing(eng: Engine) -> None:
    await eng.invoker.invoke(eng.request(execution_id="taken"))
    await leave_while_writing(eng.invoker.invoke(eng.request(Mode.ASYNC, execution_id="taken")))
    await asyncio.sleep(0.01)
    assert len(eng.runtime.calls) == 1


async def test_a_cache_hit_stored_after_its_caller_went_away_is_announced(eng: Engine) -> None:
    await eng.task("cached", cache_ttl_s="60")
    await eng.invoker.invoke(eng.request(task_id="cached"))
    heard = heard_by(eng)
    await leave_while_writing(eng.invoker.invoke(eng.request(task_id="cached", execution_id="hit")))
    assert heard == [(Event.ACCEPTED, "hit"), (Event.FINISHED, "hit")]  # callbacks and metrics hear of it
    assert (await eng.final("hit")).metrics["cache_hit"] == "true"


async def test_a_stream_whose_client_left_while_it_was_stored_is_cancelled_before_it_starts(eng: Engine) -> None:
    updates = eng.invoker.stream(eng.request(execution_id="gone"))
    await leave_while_writing(anext(updates))
    final = await eng.final("gone")
    assert final.status is Status.CANCELLED and "went away before it started" in final.error_message
    assert not eng.runtime.calls


async def test_async_work_stored_after_its_caller_went_away_is_left_to_the_cluster(eng: Engine) -> None:
    eng.in_cluster()
    heard = heard_by(eng)
    await leave_while_writing(eng.invoker.invoke(eng.request(Mode.ASYNC, execution_id="left")))
    await eng.invoker.close()
    assert heard == [(Event.ACCEPTED, "left")] and not eng.runtime.calls
    assert (await eng.store.get_execution("left")).status is Status.PENDING  # type: ignore[union-attr]


# In a cluster


async def test_async_work_goes_to_the_cluster_and_sync_work_runs_here(eng: Engine) -> None:
    dispatch = eng.in_cluster()
    heard = heard_by(eng)
    accepted = await eng.invoker.invoke(eng.request(Mode.ASYNC))
    assert heard == [(Event.ACCEPTED, accepted.record.execution_id)]
    assert not eng.scheduler.is_active(accepted.record.execution_id)
    assert (await eng.store.get_execution(accepted.record.execution_id)).status is Status.PENDING  # type: ignore[union-attr]
    ran = await eng.invoker.invoke(eng.request())
    assert dispatch.here == [ran.record.execution_id] and ran.record.status is Status.COMPLETED


# Streams and watches


async def test_a_stream_yields_its_acceptance_each_chunk_then_the_end(eng: Engine) -> None:
    eng.runtime.script("lines", Script(chunks=(b"a\n", b"b\n"), output=b"a\nb\n"))
    updates = [u async for u in eng.invoker.stream(eng.request(function_name="lines"))]
    assert [(u.event, u.chunk) for u in updates] == [
        (Event.ACCEPTED, b""), (Event.STARTED, b""), (Event.CHUNK, b"a\n"), (Event.CHUNK, b"b\n"), (Event.FINISHED, b""),
    ]  # fmt: skip
    end = updates[-1].record
    assert end is not None and end.status is Status.COMPLETED and end.mode is Mode.STREAM


async def test_a_stream_consumer_that_stops_early_cancels_the_execution(eng: Engine) -> None:
    eng.runtime.script("endless", Script(chunks=(b"first\n",), hang=True))
    updates = eng.invoker.stream(eng.request(function_name="endless"))
    async for update in updates:
        if update.event is Event.CHUNK:
            break
    await updates.aclose()
    final = await eng.final(eng.runtime.calls[0].execution_id)
    assert final.status is Status.CANCELLED and "streaming client went away" in final.error_message


async def test_a_stream_under_an_execution_id_that_exists_follows_that_execution(eng: Engine) -> None:
    eng.runtime.script("", Script(delay_s=0.02))
    await eng.invoker.invoke(eng.request(Mode.ASYNC, execution_id="running"))
    updates = [u async for u in eng.invoker.stream(eng.request(execution_id="running"))]
    assert updates[-1].event is Event.FINISHED and updates[-1].status is Status.COMPLETED
    assert len(eng.runtime.calls) == 1


async def test_watching_an_unknown_execution_is_not_found(eng: Engine) -> None:
    with pytest.raises(NotFound):
        await anext(eng.invoker.watch("nope"))


async def test_watching_a_finished_execution_yields_its_end_at_once(eng: Engine) -> None:
    done = await eng.invoker.invoke(eng.request())
    updates = [u async for u in eng.invoker.watch(done.record.execution_id)]
    assert [(u.event, u.status) for u in updates] == [(Event.FINISHED, Status.COMPLETED)]
    assert updates[0].record == done.record


async def test_watching_a_running_execution_yields_its_state_then_each_change_to_the_end(eng: Engine) -> None:
    eng.runtime.script("", Script(hang=True))
    accepted = await eng.invoker.invoke(eng.request(Mode.ASYNC, execution_id="w"))
    await eng.runtime.started("w")
    watch = eng.invoker.watch("w")
    first = await anext(watch)
    assert (first.event, first.status) == (Event.STARTED, Status.RUNNING)
    await eng.invoker.cancel(accepted.record.execution_id)
    rest = [u async for u in watch]
    assert [(u.event, u.status) for u in rest] == [(Event.FINISHED, Status.CANCELLED)]


async def test_a_watch_follows_an_execution_that_runs_elsewhere_through_the_store(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(invoker_module, "WATCH_POLL_S", 0.01)
    record = await stored_pending(eng)
    watch = eng.invoker.watch(record.execution_id)
    assert (await anext(watch)).event is Event.ACCEPTED
    record.status = Status.RUNNING
    assert await eng.store.transition(record)
    started = await anext(watch)
    assert (started.event, started.status, started.record) == (Event.STARTED, Status.RUNNING, None)
    record.status, record.output = Status.COMPLETED, b"2"
    assert await eng.store.transition(record)
    end = await anext(watch)
    assert end.event is Event.FINISHED and end.record is not None and end.record.output == b"2"
    with pytest.raises(StopAsyncIteration):
        await anext(watch)


# Cancelling


async def test_get_needs_an_id_and_a_cancel_of_an_unknown_one_is_an_answer(eng: Engine) -> None:
    with pytest.raises(InvalidArgument, match="execution_id is required"):
        await eng.invoker.get("")
    assert await eng.invoker.cancel("nope") == CancelResult(False, "execution 'nope' not found", Status.UNKNOWN)


async def test_a_cancel_of_a_finished_execution_says_how_it_ended(eng: Engine) -> None:
    done = await eng.invoker.invoke(eng.request())
    result = await eng.invoker.cancel(done.record.execution_id)
    assert result == CancelResult(False, "execution already finished: COMPLETED", Status.COMPLETED)


async def test_a_cancel_of_a_running_execution_stops_it(eng: Engine) -> None:
    eng.runtime.script("", Script(hang=True))
    await eng.invoker.invoke(eng.request(Mode.ASYNC, execution_id="c"))
    await eng.runtime.started("c")
    assert await eng.invoker.cancel("c", reason="enough") == CancelResult(True, "cancelled", Status.CANCELLED)
    assert (await eng.final("c")).error_message == "cancelled: enough"


async def test_a_cancel_of_a_queued_execution_ends_it_before_it_starts(eng: Engine) -> None:
    await eng.task("single", max_concurrency="1")
    eng.runtime.script("", Script(hang=True))
    await eng.invoker.invoke(eng.request(Mode.ASYNC, task_id="single", execution_id="running"))
    await eng.invoker.invoke(eng.request(Mode.ASYNC, task_id="single", execution_id="queued"))
    assert (await eng.invoker.cancel("queued")).status is Status.CANCELLED
    assert [c.execution_id for c in eng.runtime.calls] == ["running"]
    await eng.invoker.cancel("running")


async def test_a_cancel_that_comes_too_late_reports_how_the_execution_ended(eng: Engine) -> None:
    eng.runtime.script("", Script(delay_s=0.05, unstoppable=True))
    await eng.invoker.invoke(eng.request(Mode.ASYNC, execution_id="late"))
    await eng.runtime.started("late")
    result = await eng.invoker.cancel("late")
    assert result == CancelResult(False, "execution finished first: COMPLETED", Status.COMPLETED)


async def test_a_cancel_that_outlasts_its_wait_reports_the_execution_stopping(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(invoker_module, "CANCEL_WAIT_S", 0.02)
    eng.runtime.script("", Script(delay_s=0.2, unstoppable=True))
    await eng.invoker.invoke(eng.request(Mode.ASYNC, execution_id="slow"))
    await eng.runtime.started("slow")
    result = await eng.invoker.cancel("slow")
    assert result == CancelResult(True, "cancel requested; the execution is stopping", Status.RUNNING)


async def test_a_cancel_of_work_no_node_holds_reports_its_stored_status(eng: Engine) -> None:
    record = await stored_pending(eng)
    result = await eng.invoker.cancel(record.execution_id)
    assert result == CancelResult(False, "execution is not active on this node: PENDING", Status.PENDING)


@pytest.mark.parametrize(
    ("holder_makes_it", "expected"),
    [
        (Status.CANCELLED, CancelResult(True, "cancelled", Status.CANCELLED)),
        (Status.COMPLETED, CancelResult(False, "execution finished first: COMPLETED", Status.COMPLETED)),
        (None, CancelResult(True, "cancel requested; the execution is stopping", Status.RUNNING)),
    ],
    ids=["cancelled", "finished-first", "no-answer"],
)
async def test_a_cancel_of_work_another_node_holds_goes_through_the_cluster(
    eng: Engine, monkeypatch: pytest.MonkeyPatch, holder_makes_it: Status | None, expected: CancelResult
) -> None:
    monkeypatch.setattr(invoker_module, "CANCEL_WAIT_S", 0.02)
    dispatch = eng.in_cluster()
    dispatch.on_cancel = holder_makes_it
    record = await stored_pending(eng, status=Status.RUNNING)
    assert await eng.invoker.cancel(record.execution_id, "stop it", force=True) == expected
    assert dispatch.cancels == [(record.execution_id, True, "stop it")]


# Inside a real node (SQLite store, Python workers)


@pytest.fixture
def node(embedded_node: Node) -> Node:
    return embedded_node


@pytest.mark.parametrize("mode", [Mode.ASYNC, Mode.SYNC], ids=["async", "sync"])
async def test_work_stored_after_its_caller_went_away_runs_at_once_in_a_node(node: Node, mode: Mode) -> None:
    execution_id = "0190c3c4-59d0-7d1b-8f47-3c2a51f0a111"
    req = InvokeRequest(
        InvocationType.EXISTING_TASK, mode, task_id="greet", function_name="noop", execution_id=execution_id
    )
    await leave_while_writing(node.invoker.invoke(req))
    assert (await final(node.store, node.lifecycle, execution_id)).status is Status.COMPLETED


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
