"""The HTTP door's hand-built answers print exactly what json_format prints for the same message."""

from __future__ import annotations

import json

import pytest
from google.protobuf import any_pb2, struct_pb2, timestamp_pb2

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc.values import message_json
from spearlet.api.http.answers import invoke_response_json, result_json, status_response_json


def _packed(value: float | str) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(
        struct_pb2.Value(string_value=value) if isinstance(value, str) else struct_pb2.Value(number_value=value)
    )
    return packed


RESULTS = [
    pb.ExecutionResult(),
    pb.ExecutionResult(status=pb.EXECUTION_STATUS_PENDING),
    pb.ExecutionResult(
        status=pb.EXECUTION_STATUS_COMPLETED,
        result=_packed("Hello, Ada!"),
        execution_time_ms=12,
        memory_used_bytes=16 << 20,
        metrics={"attempts": "1", "node": "n1"},
        started_at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=537_000_000),
        completed_at=timestamp_pb2.Timestamp(seconds=1_700_000_001),
    ),
    pb.ExecutionResult(
        status=pb.EXECUTION_STATUS_FAILED,
        result=_packed(2.5),
        error_message="boom",
        error_code="FUNCTION_ERROR",
        started_at=timestamp_pb2.Timestamp(seconds=5, nanos=1_000),
        completed_at=timestamp_pb2.Timestamp(seconds=6, nanos=7),
    ),
    pb.ExecutionResult(status=99),  # a status this node's proto does not name
]


@pytest.mark.parametrize("result", RESULTS)
def test_an_execution_result_prints_as_json_format_prints_it(result: pb.ExecutionResult) -> None:
    assert json.dumps(result_json(result), sort_keys=True) == json.dumps(message_json(result), sort_keys=True)


@pytest.mark.parametrize("result", [None, *RESULTS])
def test_an_invoke_answer_prints_as_json_format_prints_it(result: pb.ExecutionResult | None) -> None:
    response = pb.InvokeFunctionResponse(
        success=True, execution_id="e1", task_id="greet", instance_id="greet/1", estimated_completion_ms=40,
        status_endpoint="/api/v1/executions/e1/status", result=result,
    )  # fmt: skip
    assert invoke_response_json(response) == message_json(response)
    assert invoke_response_json(pb.InvokeFunctionResponse()) == message_json(pb.InvokeFunctionResponse())


@pytest.mark.parametrize("result", [None, *RESULTS])
def test_a_status_answer_prints_as_json_format_prints_it(result: pb.ExecutionResult | None) -> None:
    response = pb.GetExecutionStatusResponse(found=True, result=result, logs=["a", "b"], message="m")
    assert status_response_json(response) == message_json(response)
    assert status_response_json(pb.GetExecutionStatusResponse()) == message_json(pb.GetExecutionStatusResponse())
