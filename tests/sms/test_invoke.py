"""SPEAR's own door: the SMS calls Invoke (its admin: sync, no input, the default entry; its
endpoint gateway: async) of a task it placed, without a token, and reads back the ids the node
answered in its reports."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from spearlet.node.node import bundled_tasks_file
from tests.api.grpc.spear_client import ASYNC, COMPLETED, SYNC, SpearClient
from tests.sms.conftest import Nodes
from tests.sms.fake import FakeSms

pytestmark = pytest.mark.timeout(90)
TOKEN = "node-token-the-sms-never-sends"


def place(fake: FakeSms, task_id: str, name: str, kind: str = "PROCESS", **config: str) -> None:
    body = (bundled_tasks_file().parent / name).read_bytes()
    fake.files[f"file-{task_id}"] = body
    digest = hashlib.sha256(body).hexdigest()
    fake.add_task(task_id, kind, f"smsfile://file-{task_id}", name=name, checksum=digest, config=config)


async def test_the_sms_admin_invokes_a_placed_task_and_its_reports_carry_the_answered_ids(
    nodes: Nodes, fake_sms: FakeSms
) -> None:
    place(fake_sms, "task-admin", "hello.py")
    # A node with a token, trusting the SMS's address: SPEAR's SMS sends none.
    node = await nodes.start(token=TOKEN, trusted_networks=["127.0.0.1/32"])
    assert node.sms is not None
    client = SpearClient(f"127.0.0.1:{node.grpc_port}")
    invocation_id, execution_id = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        answer = await asyncio.to_thread(
            client.invoke,
            "task-admin",
            invocation_id=invocation_id,
            execution_id=execution_id,
            mode=SYNC,
            timeout_ms=0,
        )
    finally:
        client.close()
    assert answer.status == COMPLETED, answer.error.message
    assert (answer.invocation_id, answer.execution_id) == (invocation_id, execution_id)
    await fake_sms.wait_for(lambda: len(fake_sms.executions_of(execution_id)) >= 2)
    reports = [r for _, r in fake_sms.executions_of(execution_id)]
    assert [r.status for r in reports] == [2, 3]  # RUNNING, COMPLETED
    for report in reports:
        assert (report.invocation_id, report.execution_id, report.task_id) == (
            invocation_id,
            execution_id,
            "task-admin",
        )
        assert report.instance_id == answer.instance_id and report.node_uuid == node.sms.node_uuid
        assert report.function_name == "__spear_default_entry__"


async def test_the_endpoint_gateway_invokes_async_and_a_terminated_call_is_reported_cancelled(
    nodes: Nodes, fake_sms: FakeSms
) -> None:
    place(fake_sms, "task-sleep", "sleep.py", **{"spearlet.timeout_ms": "600000"})
    node = await nodes.start(token=TOKEN, trusted_networks=["127.0.0.0/8"])
    client = SpearClient(f"127.0.0.1:{node.grpc_port}")
    try:
        answer = await asyncio.to_thread(
            client.invoke,
            "task-sleep",
            mode=ASYNC,
            input=("application/json", b'{"seconds": 60}'),
            metadata={"spear.endpoint_gateway": "true"},
        )
        execution_id = answer.execution_id
        await fake_sms.wait_for(lambda: fake_sms.executions_of(execution_id))  # RUNNING
        ended = await asyncio.to_thread(client.terminate, execution_id, "the gateway's client left")
        assert ended.success
    finally:
        client.close()
    await fake_sms.wait_for(lambda: len(fake_sms.executions_of(execution_id)) >= 2)
    statuses = [s for s, _ in fake_sms.executions_of(execution_id)]
    assert statuses == ["EXECUTION_STATUS_RUNNING", "EXECUTION_STATUS_CANCELLED"]
    final = fake_sms.executions_of(execution_id)[1][1]
    assert final.invocation_id and final.instance_id == answer.instance_id
