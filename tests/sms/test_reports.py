"""Reports to the SMS: each execution RUNNING then final with all four ids, for every way a call
ends; instance reports for run-once and warm instances; a full queue drops and counts, never
slowing a call."""

from __future__ import annotations

import asyncio
import hashlib
import time

import grpc
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord, Mode, Status
from spearlet.node.node import bundled_tasks_file
from spearlet.runtimes.pool import InstanceEvent
from spearlet.sms.reports import Reporter
from tests.helpers import existing, params
from tests.sms.conftest import Nodes, stub
from tests.sms.fake import FakeSms

pytestmark = pytest.mark.timeout(90)
FINAL = "EXECUTION_STATUS_{}"


async def reports_of(fake: FakeSms, execution_id: str, final: str) -> list:
    """The execution's reports once its final one has arrived: RUNNING first, then `final`."""
    await fake.wait_for(lambda: any(s == FINAL.format(final) for s, _ in fake.executions_of(execution_id)))
    reports = fake.executions_of(execution_id)
    assert [s for s, _ in reports] == ["EXECUTION_STATUS_RUNNING", FINAL.format(final)]
    return [r for _, r in reports]


def assert_ids(reports: list, node_uuid: str, task_id: str, execution_id: str) -> None:
    for report in reports:
        assert report.execution_id == execution_id
        assert report.task_id == task_id
        assert report.node_uuid == node_uuid
        assert report.invocation_id and report.instance_id and report.function_name
    assert reports[0].instance_id == reports[1].instance_id
    assert reports[0].invocation_id == reports[1].invocation_id
    assert reports[0].updated_at_ms < reports[1].updated_at_ms
    assert reports[1].completed_at_ms >= reports[1].started_at_ms > 0


async def test_a_completed_sms_task_is_reported_running_then_completed(nodes: Nodes, fake_sms: FakeSms) -> None:
    body = (bundled_tasks_file().parent / "hello.py").read_bytes()
    fake_sms.files["f1"] = body
    fake_sms.add_task("task-1", "PROCESS", "smsfile://f1", name="hello.py", checksum=hashlib.sha256(body).hexdigest())
    node = await nodes.start()
    assert node.sms is not None
    response = await stub(node).InvokeFunction(existing("task-1", parameters=params(name="r")))
    assert response.success
    reports = await reports_of(fake_sms, response.execution_id, "COMPLETED")
    assert_ids(reports, node.sms.node_uuid, "task-1", response.execution_id)
    assert reports[0].function_name == "__spear_default_entry__"
    # Process runs once on an instance of its own: RUNNING with the execution, then TERMINATED.
    instance = reports[0].instance_id
    await fake_sms.wait_for(lambda: "INSTANCE_STATUS_TERMINATED" in fake_sms.instance_statuses(instance))
    assert fake_sms.instance_statuses(instance) == ["INSTANCE_STATUS_RUNNING", "INSTANCE_STATUS_TERMINATED"]
    running = next(i for i in fake_sms.instances if i.instance_id == instance)
    assert running.current_execution_id == response.execution_id and running.task_id == "task-1"


async def test_a_failed_call_is_reported_failed_with_its_error(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    assert node.sms is not None
    response = await stub(node).InvokeFunction(existing("fail"))
    assert not response.success
    reports = await reports_of(fake_sms, response.execution_id, "FAILED")
    assert_ids(reports, node.sms.node_uuid, "fail", response.execution_id)
    assert reports[1].metadata["error_code"] == "NONZERO_EXIT"


async def test_a_cancelled_call_is_reported_with_the_sms_cancelled_status(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    assert node.sms is not None
    client = stub(node)
    started = await client.InvokeFunction(existing("sleep", pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=30)))
    execution_id = started.execution_id
    await fake_sms.wait_for(lambda: fake_sms.executions_of(execution_id))  # RUNNING reported
    await client.CancelExecution(pb.CancelExecutionRequest(execution_id=execution_id, force=True))
    reports = await reports_of(fake_sms, execution_id, "CANCELLED")
    assert_ids(reports, node.sms.node_uuid, "sleep", execution_id)
    assert fake_sms.executions_of(execution_id)[1][1].status == 5  # TERMINATED is CANCELLED (5) at the SMS


async def test_a_timed_out_call_is_reported_timeout(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    assert node.sms is not None
    response = await stub(node).InvokeFunction(
        existing("sleep", parameters=params(seconds=30), context=pb.ExecutionContext(timeout_ms=300))
    )
    reports = await reports_of(fake_sms, response.execution_id, "TIMEOUT")
    assert_ids(reports, node.sms.node_uuid, "sleep", response.execution_id)


async def test_warm_python_instances_are_reported_through_their_life(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    assert node.sms is not None
    response = await stub(node).InvokeFunction(existing("greet", parameters=params(name="i")))
    assert response.success and response.instance_id
    instance = response.instance_id
    reports = await reports_of(fake_sms, response.execution_id, "COMPLETED")
    assert reports[0].instance_id == instance
    await fake_sms.wait_for(lambda: fake_sms.instance_statuses(instance)[-1:] == ["INSTANCE_STATUS_IDLE"])
    statuses = fake_sms.instance_statuses(instance)
    assert statuses[-2:] == ["INSTANCE_STATUS_RUNNING", "INSTANCE_STATUS_IDLE"]
    busy = [i for i in fake_sms.instances if i.instance_id == instance and i.current_execution_id]
    assert busy[-1].current_execution_id == response.execution_id and busy[-1].task_id == "greet"
    await nodes.stop(node)  # its workers stop: their last report says so
    assert fake_sms.instance_statuses(instance)[-1] == "INSTANCE_STATUS_TERMINATED"


async def test_every_live_instance_is_reported_again_periodically(fake_sms: FakeSms) -> None:
    channel = grpc.aio.insecure_channel(fake_sms.grpc_addr)
    reporter = Reporter(channel, "uuid-1", refresh_s=0.1)
    reporter.start()
    try:
        reporter.on_instance(InstanceEvent.STARTED, "t", "t/1", "")
        await fake_sms.wait_for(lambda: len(fake_sms.instance_statuses("t/1")) >= 4)
        seen = [i.last_seen_ms for i in fake_sms.instances if i.instance_id == "t/1"]
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
    finally:
        await reporter.close()
        await channel.close()


async def test_a_full_queue_drops_and_counts_new_reports_without_waiting(fake_sms: FakeSms) -> None:
    await fake_sms.stop()  # nothing can be delivered
    channel = grpc.aio.insecure_channel(fake_sms.grpc_addr)
    reporter = Reporter(channel, "uuid-1", max_queued=3, retry_s=(0.05, 0.1))
    reporter.start()
    try:
        record = ExecutionRecord("e1", "t", "", Mode.SYNC, Status.RUNNING, instance_id="own-e1")
        began = time.perf_counter()
        for _ in range(20):
            reporter.on_event(Event.STARTED, record)
        assert time.perf_counter() - began < 0.05  # a listener only queues
        await asyncio.sleep(0.2)
        assert reporter.queued == 3 and reporter.dropped == 37  # 20 calls, 2 reports each and reporter.sent == 0
        dropped = reporter.dropped
        await fake_sms.start()
        await fake_sms.wait_for(lambda: reporter.queued == 0 and reporter.sent >= 3, timeout=15)
        assert reporter.dropped == dropped  # what was queued got through: nothing more lost
    finally:
        await reporter.close()
        await channel.close()
