"""Tasks placed by the SMS: an unknown task is fetched (GetTask, then smsfile:// from the SMS's HTTP
API), checked, registered and run on the runtime its executable maps to; refused clearly when it
cannot be run; asked once by concurrent first calls."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.node.node import bundled_tasks_file
from spearlet.sms import sms_pb2 as sms
from spearlet.sms.tasks import task_spec
from tests.helpers import existing, params, unpack
from tests.sms.conftest import Nodes, stub
from tests.sms.fake import FakeSms

pytestmark = pytest.mark.timeout(90)
EXAMPLES = bundled_tasks_file().parent


def serve_file(fake: FakeSms, file_id: str, name: str) -> str:
    """An example artifact served by the fake SMS; its sha256."""
    body = (EXAMPLES / name).read_bytes()
    fake.files[file_id] = body
    return hashlib.sha256(body).hexdigest()


async def test_a_process_task_is_fetched_from_smsfile_and_run(nodes: Nodes, fake_sms: FakeSms) -> None:
    digest = serve_file(fake_sms, "f-hello", "hello.py")
    fake_sms.add_task("task-hello", "PROCESS", "smsfile://f-hello", name="hello.py", checksum=digest)
    node = await nodes.start()
    response = await stub(node).InvokeFunction(existing("task-hello", parameters=params(name="SPEAR")))
    assert response.success, response.message
    assert unpack(response.result.result) == {"greeting": "Hello, SPEAR!"}
    assert fake_sms.get_task_calls == ["task-hello"]
    assert fake_sms.file_requests == ["/api/v1/files/f-hello"]
    again = await stub(node).InvokeFunction(existing("task-hello"))
    assert again.success and fake_sms.get_task_calls == ["task-hello"]  # kept: not asked again
    task = await node.tasks.get("task-hello")
    assert (task.artifact_type, task.digest) == ("process", digest)
    assert task.location == "smsfile://f-hello"  # the SMS's, never the node's download path
    stored = await node.store.get_task("task-hello")
    assert stored is not None and stored.location == "smsfile://f-hello"


async def test_concurrent_first_calls_fetch_the_task_once(nodes: Nodes, fake_sms: FakeSms) -> None:
    serve_file(fake_sms, "f-echo", "echo.sh")
    fake_sms.add_task("task-echo", "SCRIPT", "smsfile://f-echo", name="echo.sh")
    node = await nodes.start()
    calls = [stub(node).InvokeFunction(existing("task-echo", parameters=params(i=i))) for i in range(6)]
    responses = await asyncio.gather(*calls)
    assert all(r.success for r in responses)
    assert fake_sms.get_task_calls == ["task-echo"]
    assert fake_sms.file_requests == ["/api/v1/files/f-echo"]


async def test_a_wasm_task_runs_on_the_wasm_runtime(nodes: Nodes, fake_sms: FakeSms) -> None:
    serve_file(fake_sms, "f-wasm", "wasm/hello.wat")
    fake_sms.add_task("task-wasm", "WASM", "smsfile://f-wasm", name="hello.wat")
    node = await nodes.start()
    response = await stub(node).InvokeFunction(existing("task-wasm"))
    assert response.success, response.message
    assert "wasm" in str(unpack(response.result.result))
    assert (await node.tasks.get("task-wasm")).artifact_type == "wasm"


async def test_a_python_entry_in_the_config_runs_on_the_warm_python_runtime(nodes: Nodes, fake_sms: FakeSms) -> None:
    serve_file(fake_sms, "f-greet", "greet.py")
    config = {"spearlet.runtime": "python", "spearlet.entry": "greet:handler"}
    fake_sms.add_task("task-greet", "SCRIPT", "smsfile://f-greet", name="greet.py", config=config)
    node = await nodes.start()
    first = await stub(node).InvokeFunction(existing("task-greet", parameters=params(name="py")))
    assert first.success, first.message
    assert unpack(first.result.result) == {"greeting": "Hello, py!"}
    second = await stub(node).InvokeFunction(existing("task-greet"))
    assert (await node.tasks.get("task-greet")).artifact_type == "python"
    assert first.instance_id == second.instance_id != ""  # the same warm worker


async def test_a_checksum_mismatch_is_refused_and_nothing_is_registered(nodes: Nodes, fake_sms: FakeSms) -> None:
    serve_file(fake_sms, "f-bad", "hello.py")
    fake_sms.add_task("task-bad", "PROCESS", "smsfile://f-bad", name="hello.py", checksum="0" * 64)
    node = await nodes.start()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(node).InvokeFunction(existing("task-bad"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "checksum mismatch" in (err.value.details() or "")
    assert await node.store.get_task("task-bad") is None
    assert not list((node.settings.data_dir / "sms-files").iterdir())  # no download left behind


async def test_a_container_task_is_refused_clearly(nodes: Nodes, fake_sms: FakeSms) -> None:
    fake_sms.add_task("task-box", "CONTAINER", "docker://busybox")
    node = await nodes.start()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(node).InvokeFunction(existing("task-box"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "CONTAINER task: this node runs no containers" in (err.value.details() or "")


async def test_a_task_the_sms_does_not_know_is_not_found(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(node).InvokeFunction(existing("task-nowhere"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert fake_sms.get_task_calls == ["task-nowhere"]


async def test_an_unreachable_sms_makes_an_unknown_task_unavailable(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    await fake_sms.stop()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(node).InvokeFunction(existing("task-later"))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # the SMS may place it elsewhere
    known = await stub(node).InvokeFunction(existing("hello"))
    assert known.success


@pytest.mark.parametrize(
    ("kind", "runtime"),
    [("WASM", "wasm"), ("BINARY", "process"), ("SCRIPT", "process"), ("PROCESS", "process")],
)
def test_executable_types_map_to_runtimes(kind: str, runtime: str) -> None:
    task = sms.Task(
        task_id="t",
        executable=sms.TaskExecutable(type=sms.ExecutableType.Value(f"EXECUTABLE_TYPE_{kind}"), uri="https://x/y"),
    )
    assert task_spec(task)[0] == runtime


def test_task_settings_come_from_spearlet_entries_and_unknown_types_are_refused() -> None:
    task = sms.Task(
        task_id="t",
        executable=sms.TaskExecutable(type=sms.EXECUTABLE_TYPE_PROCESS, uri="https://x/y", checksum_sha256="AB" * 32),
        metadata={"spearlet.timeout_ms": "500", "owner": "someone"},
        config={"spearlet.max_retries": "2"},
    )
    runtime, _, spec = task_spec(task)
    assert runtime == "process"
    assert spec.metadata == {"timeout_ms": "500", "max_retries": "2"}
    assert spec.checksum == "sha256:" + "ab" * 32
    with pytest.raises(Exception, match="type EXECUTABLE_TYPE_UNKNOWN"):
        task_spec(sms.Task(task_id="t", executable=sms.TaskExecutable(uri="https://x/y")))
    with pytest.raises(Exception, match="names no executable uri"):
        task_spec(sms.Task(task_id="t", executable=sms.TaskExecutable(type=sms.EXECUTABLE_TYPE_WASM)))


async def test_looking_a_task_up_does_not_fetch_it_only_a_call_does(nodes: Nodes, fake_sms: FakeSms) -> None:
    serve_file(fake_sms, "f-look", "echo.sh")
    fake_sms.add_task("task-look", "SCRIPT", "smsfile://f-look", name="echo.sh")
    node = await nodes.start()
    looked = await stub(node).GetTask(pb.GetTaskRequest(task_id="task-look"))
    assert not looked.found and fake_sms.get_task_calls == []
    assert (await stub(node).InvokeFunction(existing("task-look"))).success
    assert (await stub(node).GetTask(pb.GetTaskRequest(task_id="task-look"))).found


async def test_a_fetched_task_is_kept_across_a_restart(nodes: Nodes, fake_sms: FakeSms) -> None:
    serve_file(fake_sms, "f-keep", "echo.sh")
    fake_sms.add_task("task-keep", "BINARY", "smsfile://f-keep", name="echo.sh")
    node = await nodes.start()
    assert (await stub(node).InvokeFunction(existing("task-keep"))).success
    await nodes.stop(node)
    again = await nodes.start()
    assert (await stub(again).InvokeFunction(existing("task-keep"))).success
    assert fake_sms.get_task_calls == ["task-keep"] and len(fake_sms.file_requests) == 1
