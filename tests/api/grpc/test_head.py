"""SPEAR's current services (api/grpc/head.py) on a real node over real gRPC, called by a client
generated in the tests from their own proto (spear_client.py): every method, the field numbers,
one execution whatever the door, idempotent ids, terminate, destroy, paging, every error code."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from spearlet.api.grpc import spear_head_pb2 as hpb
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.config import Settings
from spearlet.node import Node
from tests.api.grpc.spear_client import (
    ASYNC,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    SYNC,
    TERMINATED,
    TIMEOUT,
    SpearClient,
    pool,
)
from tests.helpers import NodeProcess, existing, metric, processes_running, register, script

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def spear(node: NodeProcess) -> Iterator[SpearClient]:
    client = SpearClient(node.grpc_target)
    yield client
    client.close()


def wait_for(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.05)


def running(spear: SpearClient, execution_id: str, instance: Callable[[str], bool] = bool) -> Any:
    """The execution once it runs (on an instance `instance` accepts)."""
    return wait_for(lambda: (e := spear.get(execution_id)).status == RUNNING and instance(e.instance_id) and e)


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code(), failed.value.details()


# The wire


def _shape(descriptor: Descriptor) -> dict[int, tuple[str, int, str]]:
    return {
        f.number: (
            f.name,
            f.type,
            (f.message_type or f.enum_type).full_name if (f.message_type or f.enum_type) else "",
        )
        for f in descriptor.fields
    }


def _values(enum: EnumDescriptor) -> list[tuple[str, int]]:
    return [(v.name, v.number) for v in enum.values]


def test_every_message_enum_and_method_of_the_node_is_the_one_spear_head_defines() -> None:
    theirs = pool().FindFileByName("spear_head_client.proto")
    ours = hpb.DESCRIPTOR
    assert set(ours.message_types_by_name) == set(theirs.message_types_by_name)
    for name, descriptor in theirs.message_types_by_name.items():
        assert _shape(ours.message_types_by_name[name]) == _shape(descriptor), name
    for name, enum in theirs.enum_types_by_name.items():
        assert _values(ours.enum_types_by_name[name]) == _values(enum), name
    for name, service in theirs.services_by_name.items():
        methods = {m.name: (m.input_type.name, m.output_type.name) for m in ours.services_by_name[name].methods}
        assert methods == {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    # A few numbers spelled out, as upstream has them.
    invoke = ours.message_types_by_name["InvokeRequest"].fields_by_name
    assert (invoke["task_id"].number, invoke["mode"].number, invoke["metadata"].number) == (3, 10, 12)
    execution = ours.message_types_by_name["Execution"].fields_by_name
    assert (execution["status"].number, execution["completed_at"].number) == (6, 10)
    assert hpb.EXECUTION_STATUS_TERMINATED == pb.EXECUTION_STATUS_CANCELLED == 5


def test_reflection_lists_every_service_and_finds_each_in_the_file_that_defines_it(node: NodeProcess) -> None:
    def ask(**request: Any) -> reflection_pb2.ServerReflectionResponse:
        with grpc.insecure_channel(node.grpc_target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            return next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]))))

    listed = {s.name for s in ask(list_services="").list_services_response.service}
    assert {
        "spearlet.FunctionService",
        "spearlet.InvocationService",
        "spearlet.ExecutionService",
        "spearlet.InstanceService",
    } <= listed

    def file_of(symbol: str) -> str:
        from google.protobuf import descriptor_pb2

        protos = ask(file_containing_symbol=symbol).file_descriptor_response.file_descriptor_proto
        return descriptor_pb2.FileDescriptorProto.FromString(protos[0]).name

    assert file_of("spearlet.InvocationService") == "spearlet/api/grpc/spear_head.proto"
    assert file_of("spearlet.InstanceService") == "spearlet/api/grpc/spear_head.proto"
    assert file_of("spearlet.FunctionService") == "spearlet/api/grpc/spearlet.proto"
    # A name both contracts define is the seed era's, as the README says.
    assert file_of("spearlet.ExecutionStatus") == "spearlet/api/grpc/spearlet.proto"
    assert ask(file_by_filename="spearlet/api/grpc/spear_head.proto").HasField("file_descriptor_response")
    assert ask(file_containing_symbol="spearlet.Nothing").HasField("error_response")


# Invoke


def test_a_sync_invoke_answers_with_the_output_its_content_type_and_the_executions_own_instance(
    spear: SpearClient,
) -> None:
    answer = spear.invoke("hello", input=("application/json", b'{"name": "Ann"}'), invocation_id="inv-a")
    assert answer.status == COMPLETED and not answer.HasField("error")
    assert answer.output.content_type == "application/json"
    assert json.loads(answer.output.data) == {"greeting": "Hello, Ann!"}
    assert answer.invocation_id == "inv-a" and answer.instance_id == f"own-{answer.execution_id}"
    assert answer.started_at.ToMilliseconds() <= answer.completed_at.ToMilliseconds()
    assert answer.started_at.ToMilliseconds() > 0


def test_empty_ids_are_chosen_by_the_node_and_mode_unspecified_waits(spear: SpearClient) -> None:
    answer = spear.invoke("hello")
    assert answer.status == COMPLETED
    assert uuid.UUID(answer.invocation_id).version == 4 and answer.execution_id
    default = spear.invoke("wasm-hello", function_name="__spear_default_entry__", mode=SYNC)
    assert default.status == COMPLETED and json.loads(default.output.data) == {"hello": "wasm"}


def test_a_json_input_is_the_parameters_and_other_content_types_reach_stdin_as_they_are(
    spear: SpearClient, node: NodeProcess, tmp_path: Path
) -> None:
    as_json = spear.invoke("echo", input=("application/json; charset=utf-8", b'{"a": [1, 2]}'))
    assert json.loads(as_json.output.data) == {"a": [1, 2]} and as_json.output.content_type == "application/json"
    untyped = spear.invoke("echo", input=("", b'{"b": true}'))
    assert json.loads(untyped.output.data) == {"b": True}
    raw = spear.invoke("echo", input=("application/octet-stream", b"\x00\xffraw"))
    assert raw.output.data == b"\x00\xffraw" and raw.output.content_type == "application/octet-stream"
    text = spear.invoke("echo", input=("text/csv", b"a,b\n1,2\n"))
    assert text.output.data == b"a,b\n1,2\n" and text.output.content_type == "text/plain; charset=utf-8"
    register(
        node.grpc_target, "content-type", script(tmp_path / "ct.sh", '#!/bin/sh\nprintf %s "$SPEAR_INPUT_CONTENT_TYPE"')
    )
    told = spear.invoke("content-type", input=("text/csv", b"x"), environment={"OTHER": "1"})
    assert told.output.data == b"text/csv"


def test_a_python_call_runs_on_a_worker_whose_id_is_the_instance_and_raw_input_is_one_bytes_argument(
    spear: SpearClient,
) -> None:
    answer = spear.invoke("greet", input=("application/json", b'{"name": "Bo"}'))
    assert answer.status == COMPLETED and json.loads(answer.output.data) == {"greeting": "Hello, Bo!"}
    assert answer.instance_id.startswith("greet/")
    raw = spear.invoke("greet", input=("application/octet-stream", b"\x01"))
    assert json.loads(raw.output.data) == {"greeting": "Hello, b'\\x01'!"}
    recorded = spear.get(answer.execution_id, include_output=True)
    assert recorded.instance_id == answer.instance_id and recorded.output.data == answer.output.data


def test_a_wasm_call_reads_its_input_on_stdin(spear: SpearClient) -> None:
    answer = spear.invoke("wasm-echo", input=("text/plain", b"wasm in"))
    assert answer.status == COMPLETED and answer.output.data == b"wasm in"
    assert answer.instance_id == f"own-{answer.execution_id}"


def test_an_async_invoke_answers_at_once_with_a_durable_pending_or_running_execution(spear: SpearClient) -> None:
    began = time.monotonic()
    answer = spear.invoke("sleep", input=("application/json", b'{"seconds": 30}'), mode=ASYNC)
    assert time.monotonic() - began < 5
    assert answer.status in (PENDING, RUNNING) and answer.execution_id and answer.instance_id
    assert spear.get(answer.execution_id).status in (PENDING, RUNNING)
    assert spear.terminate(answer.execution_id).success


def test_a_repeated_execution_id_is_the_same_execution_and_runs_once(
    spear: SpearClient, node: NodeProcess, tmp_path: Path
) -> None:
    # Each run answers something new: a second run would show in the output and in the metrics.
    register(
        node.grpc_target, "count-runs", script(tmp_path / "once.sh", "#!/bin/sh\ncat /proc/sys/kernel/random/uuid\n")
    )
    execution_id = str(uuid.uuid4())
    first = spear.invoke("count-runs", execution_id=execution_id, invocation_id="inv-once")
    again = spear.invoke("count-runs", execution_id=execution_id, invocation_id="inv-once", mode=ASYNC)
    assert first.status == again.status == COMPLETED, first.error.message
    assert again.execution_id == execution_id and again.started_at == first.started_at
    assert again.output.data == first.output.data
    assert metric(node, "spearlet_executions_total", task="count-runs") == 1
    assert [e.execution_id for e in spear.list(invocation_id="inv-once").executions] == [execution_id]


def test_the_requests_other_fields_are_recorded_in_its_metadata(spear: SpearClient, node: NodeProcess) -> None:
    answer = spear.invoke(
        "hello", headers={"x-trace": "t1"}, session_id="s-9", metadata={"spear.endpoint_gateway": "true"}
    )
    status = node.stub().GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=answer.execution_id))
    assert status.found
    listed = node.stub().ListExecutions(pb.ListExecutionsRequest(task_id="hello", limit=5))
    [info] = [e for e in listed.executions if e.execution_id == answer.execution_id]
    assert info.metadata["spear.header.x-trace"] == "t1" and info.metadata["spear.session_id"] == "s-9"
    assert info.metadata["spear.endpoint_gateway"] == "true" and info.metadata["instance_id"] == answer.instance_id
    assert info.metadata["invocation_id"] == answer.invocation_id
    record = httpx.get(f"{node.http_url}/api/v1/executions/{answer.execution_id}", timeout=10).json()
    assert (record["invocation_id"], record["instance_id"]) == (answer.invocation_id, answer.instance_id)


def test_a_functions_failure_is_an_ok_answer_with_failed_or_timeout_and_the_error(spear: SpearClient) -> None:
    failed = spear.invoke("fail")
    assert (
        failed.status == FAILED and failed.error.code == "NONZERO_EXIT" and "exited with code 3" in failed.error.message
    )
    late = spear.invoke("sleep", input=("application/json", b'{"seconds": 10}'), timeout_ms=300)
    assert late.status == TIMEOUT and late.error.code == "TIMEOUT"
    assert spear.get(late.execution_id).error.code == "TIMEOUT"


def test_request_errors_are_status_codes(spear: SpearClient) -> None:
    assert code_of(lambda: spear.invoke(""))[0] is grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(lambda: spear.invoke("no-such-task"))
    assert code is grpc.StatusCode.NOT_FOUND and "no-such-task" in details
    code, details = code_of(lambda: spear.invoke("echo", input=("application/json", b"{not json")))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "not JSON" in details
    code, details = code_of(lambda: spear.invoke("echo", input=("application/json", b'{"x": NaN}')))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "NaN is not a JSON number" in details
    code, details = code_of(lambda: spear.invoke("echo", input=("application/json", b"[1]")))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "must be an object" in details
    code, details = code_of(lambda: spear.invoke("echo", mode=7))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "mode 7" in details
    code, details = code_of(lambda: spear.invoke("echo", invocation_id="has space"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "invocation_id" in details
    assert code_of(lambda: spear.get("nope"))[0] is grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: spear.terminate("nope"))[0] is grpc.StatusCode.NOT_FOUND
    code, details = code_of(lambda: spear.list(page_token="bm90IG91cnM="))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details
    assert code_of(lambda: spear.destroy(""))[0] is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_full_queue_is_resource_exhausted_and_a_missing_token_unauthenticated(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", grpc_port=0, http_port=0, max_concurrency=1, max_pending=1, token="s3cret"
    )
    node = Node(settings)
    await node.start()
    target = f"127.0.0.1:{node.grpc_port}"
    try:
        spear = SpearClient(target, token="s3cret")
        stranger = SpearClient(target)
        sleep = ("application/json", b'{"seconds": 30}')

        def fill_and_overflow() -> tuple[list[str], grpc.StatusCode]:
            ids = [spear.invoke("sleep", input=sleep, mode=ASYNC).execution_id for _ in range(2)]
            return ids, code_of(lambda: spear.invoke("sleep", input=sleep, mode=ASYNC))[0]

        import asyncio

        ids, code = await asyncio.to_thread(fill_and_overflow)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await asyncio.to_thread(lambda: code_of(lambda: stranger.invoke("echo"))[0]) is (
            grpc.StatusCode.UNAUTHENTICATED
        )
        for execution_id in ids:
            assert (await asyncio.to_thread(spear.terminate, execution_id)).final_status == TERMINATED
        spear.close()
        stranger.close()
    finally:
        await node.stop()


# One execution, whatever the door


def test_an_invoke_is_seen_by_status_listing_watch_sse_http_and_metrics_of_the_seed_api(
    spear: SpearClient, node: NodeProcess
) -> None:
    before = metric(node, "spearlet_executions_total", task="echo", status="completed")
    answer = spear.invoke("echo", input=("application/json", b'{"door": "invoke"}'))
    seed = node.stub()
    status = seed.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=answer.execution_id))
    assert status.found and status.result.status == pb.EXECUTION_STATUS_COMPLETED
    assert status.result.metrics["instance_id"] == answer.instance_id
    listed = seed.ListExecutions(pb.ListExecutionsRequest(task_id="echo", limit=20))
    assert answer.execution_id in [e.execution_id for e in listed.executions]
    watch = pb_grpc.WatchServiceStub(grpc.insecure_channel(node.grpc_target))
    updates = list(watch.WatchExecution(pb.WatchExecutionRequest(execution_id=answer.execution_id), timeout=20))
    assert updates[-1].is_final and updates[-1].status == pb.EXECUTION_STATUS_COMPLETED
    sse = httpx.get(f"{node.http_url}/api/v1/executions/{answer.execution_id}/events", timeout=10).text
    events = [json.loads(line[5:]) for line in sse.splitlines() if line.startswith("data:")]
    assert events[-1]["is_final"] and events[-1]["status"] == "EXECUTION_STATUS_COMPLETED"
    http = httpx.get(f"{node.http_url}/api/v1/executions/{answer.execution_id}/status", timeout=10).json()
    assert http["result"]["status"] == "EXECUTION_STATUS_COMPLETED"
    assert metric(node, "spearlet_executions_total", task="echo", status="completed") == before + 1
    assert metric(node, "spearlet_grpc_requests_total", method="InvocationService.Invoke", code="OK") >= 1


def test_an_execution_of_the_seed_api_is_read_listed_and_terminated_through_the_new_services(
    spear: SpearClient, node: NodeProcess
) -> None:
    seed = node.stub()
    done = seed.InvokeFunction(existing("echo"))
    execution = spear.get(done.execution_id, include_output=True)
    assert execution.status == COMPLETED and execution.task_id == "echo" and execution.invocation_id == ""
    assert execution.instance_id == f"own-{done.execution_id}" and execution.output.data == b"{}"
    assert not spear.get(done.execution_id).HasField("output")  # only with include_output
    assert done.execution_id in [e.execution_id for e in spear.list(task_id="echo", limit=50).executions]
    finished = spear.terminate(done.execution_id)
    assert not finished.success and finished.final_status == COMPLETED
    started = seed.InvokeFunction(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC))
    running(spear, started.execution_id)
    assert spear.terminate(started.execution_id).final_status == TERMINATED
    after = seed.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=started.execution_id))
    assert after.result.status == pb.EXECUTION_STATUS_CANCELLED


def test_a_callback_asked_for_in_invokes_metadata_is_posted(spear: SpearClient) -> None:
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/done"
        answer = spear.invoke("echo", metadata={"callback_url": url}, mode=ASYNC)
        wait_for(lambda: received)
        assert received[0]["execution_id"] == answer.execution_id and received[0]["status"] == "COMPLETED"
    finally:
        server.shutdown()


# Terminate, destroy


def test_terminating_a_running_process_kills_it_and_the_final_status_is_terminated(
    spear: SpearClient, node: NodeProcess, tmp_path: Path
) -> None:
    marker = tmp_path / f"terminate-me-{uuid.uuid4().hex[:8]}.sh"  # its processes are found by this name
    register(node.grpc_target, "long", script(marker, "#!/bin/sh\nsleep 600\n"))
    answer = spear.invoke("long", mode=ASYNC)
    running(spear, answer.execution_id)
    wait_for(lambda: processes_running(str(marker)))
    ended = spear.terminate(answer.execution_id, reason="the test is done with it")
    assert ended.success and ended.final_status == TERMINATED and ended.message == "terminated"
    assert not processes_running(str(marker))
    record = spear.get(answer.execution_id)
    assert record.status == TERMINATED and record.error.code == "CANCELLED"
    assert "the test is done with it" in record.error.message
    again = spear.terminate(answer.execution_id)
    assert not again.success and again.final_status == TERMINATED


def test_destroying_a_busy_python_worker_terminates_its_call_and_a_fresh_worker_serves_the_next(
    spear: SpearClient,
) -> None:
    answer = spear.invoke("greet", function_name="wait", input=("application/json", b'{"seconds": 30}'), mode=ASYNC)
    busy = running(spear, answer.execution_id, instance=lambda i: i.startswith("greet/")).instance_id
    destroyed = spear.destroy(busy, reason="rebalancing")
    assert destroyed.success, destroyed.message
    ended = wait_for(lambda: (e := spear.get(answer.execution_id)).status != RUNNING and e)
    assert ended.status == TERMINATED and "rebalancing" in ended.error.message
    after = spear.invoke("greet", input=("application/json", b'{"name": "Cy"}'))
    assert after.status == COMPLETED and after.instance_id != busy
    gone = spear.destroy(busy)
    assert not gone.success and "not found" in gone.message


def test_destroying_the_own_instance_of_a_running_process_terminates_it_and_unknown_ones_fail(
    spear: SpearClient,
) -> None:
    answer = spear.invoke("sleep", input=("application/json", b'{"seconds": 30}'), mode=ASYNC)
    running(spear, answer.execution_id)
    assert spear.destroy(answer.instance_id).success
    assert spear.get(answer.execution_id).status == TERMINATED
    ended = spear.destroy(answer.instance_id)
    assert not ended.success and "ended" in ended.message
    assert not spear.destroy("own-unknown").success
    assert not spear.destroy("no-such-worker/9").success


# Listing


def test_listing_by_invocation_id_and_task_newest_first(spear: SpearClient) -> None:
    invocation = str(uuid.uuid4())
    ids = [spear.invoke(task, invocation_id=invocation).execution_id for task in ("echo", "hello", "echo")]
    assert [e.execution_id for e in spear.list(invocation_id=invocation).executions] == ids[::-1]
    both = spear.list(invocation_id=invocation, task_id="echo").executions
    assert [e.execution_id for e in both] == [ids[2], ids[0]]
    assert all(e.invocation_id == invocation and not e.HasField("output") for e in both)


def test_pages_have_no_duplicates_or_gaps_while_new_executions_arrive(
    spear: SpearClient, node: NodeProcess, tmp_path: Path
) -> None:
    register(node.grpc_target, "paged", script(tmp_path / "paged.sh", "#!/bin/sh\necho ok\n"))
    first = [spear.invoke("paged").execution_id for _ in range(55)]
    assert len(spear.list(task_id="paged").executions) == 50  # the default limit

    stop = threading.Event()
    arrived: list[str] = []

    def arrive() -> None:
        while not stop.is_set():
            arrived.append(spear.invoke("paged", mode=ASYNC).execution_id)

    inserter = threading.Thread(target=arrive)
    inserter.start()
    try:
        wait_for(lambda: len(arrived) >= 2)
        seen: list[str] = []
        token = ""
        while True:
            page = spear.list(task_id="paged", limit=7, page_token=token)
            seen += [e.execution_id for e in page.executions]
            time.sleep(0.02)  # executions arrive between pages
            if not page.next_page_token:
                break
            token = page.next_page_token
    finally:
        stop.set()
        inserter.join()
    assert len(seen) == len(set(seen))
    older = [i for i in seen if i in set(first)]
    assert older == first[::-1]  # every one that existed, newest first, none skipped
    assert seen[: len(seen) - len(older)] == [i for i in seen if i not in set(first)]
