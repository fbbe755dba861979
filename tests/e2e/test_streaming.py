"""StreamFunction and WatchExecution over gRPC, and the CLI's --stream and --watch."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.e2e.test_async import wait_done
from tests.helpers import NodeProcess, existing, params, unpack

pytestmark = pytest.mark.timeout(60)


def test_stream_function_yields_each_generator_chunk_then_a_final_message(node: NodeProcess) -> None:
    messages = list(node.stub().StreamFunction(existing("greet", function_name="count", parameters=params(n=3))))
    assert messages[0].status == pb.EXECUTION_STATUS_PENDING and messages[0].execution_id
    assert len({m.execution_id for m in messages}) == 1
    assert [unpack(m.chunk_data) for m in messages if m.HasField("chunk_data")] == [0, 1, 2]
    final = messages[-1]
    assert final.is_final and final.status == pb.EXECUTION_STATUS_COMPLETED
    assert not final.HasField("chunk_data")  # the chunks carried the output already
    assert sum(m.is_final for m in messages) == 1


def test_a_function_without_chunks_streams_its_result_in_the_final_message(node: NodeProcess) -> None:
    messages = list(node.stub().StreamFunction(existing("greet", parameters=params(name="Di"))))
    assert unpack(messages[-1].chunk_data) == {"greeting": "Hello, Di!"}


def test_stream_of_a_failing_function_ends_with_its_status_and_error(node: NodeProcess) -> None:
    final = list(node.stub().StreamFunction(existing("fail")))[-1]
    assert final.is_final and final.status == pb.EXECUTION_STATUS_FAILED
    assert "exited with code 3" in final.error_message and final.metadata["error_code"] == "NONZERO_EXIT"


def test_wasm_stdout_lines_are_chunks(node: NodeProcess) -> None:
    messages = list(node.stub().StreamFunction(existing("wasm-echo", parameters=params(w=1))))
    assert [unpack(m.chunk_data) for m in messages if m.HasField("chunk_data") and not m.is_final] == [{"w": 1}]


def test_a_client_that_disconnects_cancels_the_stream(node: NodeProcess) -> None:
    stream = node.stub().StreamFunction(existing("sleep", parameters=params(seconds=30)))
    execution_id = next(stream).execution_id
    stream.cancel()
    assert wait_done(node.stub(), execution_id, timeout=10).result.status == pb.EXECUTION_STATUS_CANCELLED


def test_streaming_an_unknown_task_is_not_found(node: NodeProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(node.stub().StreamFunction(existing("no-such")))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_watch_follows_an_async_execution_from_its_current_state(node: NodeProcess) -> None:
    stub = node.stub()
    accepted = stub.InvokeFunction(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=0.6)))
    time.sleep(0.3)
    watch = pb_grpc.WatchServiceStub(grpc.insecure_channel(node.grpc_target))
    messages = list(watch.WatchExecution(pb.WatchExecutionRequest(execution_id=accepted.execution_id)))
    assert messages[0].status == pb.EXECUTION_STATUS_RUNNING
    assert messages[-1].is_final and messages[-1].status == pb.EXECUTION_STATUS_COMPLETED
    # The watch ending does not cancel anything, and an unknown id is NOT_FOUND.
    with pytest.raises(grpc.RpcError) as err:
        list(watch.WatchExecution(pb.WatchExecutionRequest(execution_id="nope")))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_watch_of_a_sync_call_in_flight(node: NodeProcess) -> None:
    stub = node.stub()
    future = stub.InvokeFunction.future(
        existing("sleep", parameters=params(seconds=0.5), context=pb.ExecutionContext(execution_id="watched-sync-1"))
    )
    watch = pb_grpc.WatchServiceStub(grpc.insecure_channel(node.grpc_target))
    deadline = time.monotonic() + 5
    while True:
        try:
            messages = list(watch.WatchExecution(pb.WatchExecutionRequest(execution_id="watched-sync-1")))
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert messages[-1].is_final and messages[-1].status == pb.EXECUTION_STATUS_COMPLETED
    assert future.result().result.status == pb.EXECUTION_STATUS_COMPLETED


def test_cli_stream_and_watch_print_one_json_line_per_message(node: NodeProcess) -> None:
    cli = [sys.executable, "-m", "spearlet"]
    out = subprocess.run([*cli, "invoke", "greet", "-f", "count", "-p", "n=2", "--stream", "--target", node.grpc_target],
                         capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines()]
    assert [m["chunk_data"]["value"] for m in lines if "chunk_data" in m] == [0, 1]
    assert lines[-1]["is_final"] is True
    accepted = json.loads(subprocess.run([*cli, "invoke", "sleep", "-p", "seconds=0.3", "--async", "--target", node.grpc_target],
                                         capture_output=True, text=True, timeout=30, check=True).stdout)  # fmt: skip
    watched = subprocess.run([*cli, "status", accepted["execution_id"], "--watch", "--target", node.grpc_target],
                             capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    assert json.loads(watched.splitlines()[-1])["status"] == "EXECUTION_STATUS_COMPLETED"
