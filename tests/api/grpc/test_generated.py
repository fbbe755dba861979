"""The committed stubs are exactly what the .proto generates, and the wire contract is intact."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from spearlet.api.grpc import spearlet_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ROOT / "src" / "spearlet" / "api" / "grpc"


def test_regenerating_the_stubs_changes_nothing(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    fresh = tmp_path / "spearlet" / "api" / "grpc"
    names = ["spearlet_pb2.py", "spearlet_pb2.pyi", "spearlet_pb2_grpc.py"]
    for name in names:
        assert (fresh / name).read_bytes() == (GENERATED / name).read_bytes(), (
            f"{name} is stale: run `python scripts/gen_proto.py` and commit"
        )


# Field numbers and types fixed by DESIGN.md section 1 so existing SPEAR clients work.
CONTRACT = {
    "InvokeFunctionRequest": {
        "invocation_type": (1, "enum"), "task_name": (2, "string"), "task_description": (3, "string"),
        "artifact_spec": (4, "message"), "task_id": (5, "string"), "function_name": (6, "string"),
        "parameters": (7, "message"), "execution_mode": (8, "enum"), "context": (9, "message"),
        "create_if_not_exists": (10, "bool"), "force_new_instance": (11, "bool"),
        "invocation_metadata": (12, "message"), "wait": (13, "bool"),
    },
    "InvokeFunctionResponse": {
        "success": (1, "bool"), "message": (2, "string"), "execution_id": (3, "string"), "task_id": (4, "string"),
        "instance_id": (5, "string"), "result": (6, "message"), "status_endpoint": (7, "string"),
        "estimated_completion_ms": (8, "int64"),
    },
    "ExecutionResult": {
        "status": (1, "enum"), "result": (2, "message"), "error_message": (3, "string"), "error_code": (4, "string"),
        "execution_time_ms": (5, "int64"), "memory_used_bytes": (6, "int64"), "metrics": (7, "message"),
        "started_at": (8, "message"), "completed_at": (9, "message"),
    },
    "ExecutionContext": {
        "execution_id": (1, "string"), "session_id": (2, "string"), "user_id": (3, "string"),
        "environment": (4, "message"), "headers": (5, "message"), "timeout_ms": (6, "int64"), "max_retries": (7, "int32"),
    },
    "ArtifactSpec": {
        "artifact_id": (1, "string"), "artifact_type": (2, "string"), "location": (3, "string"),
        "version": (4, "string"), "checksum": (5, "string"), "metadata": (6, "message"),
    },
    "TaskInfo": {
        "task_id": (1, "string"), "task_name": (2, "string"), "artifact_spec": (3, "message"),
        "created_at": (4, "int64"), "updated_at": (5, "int64"), "execution_count": (6, "int32"),
        "last_status": (7, "enum"), "metadata": (8, "message"),
    },
    "ExecutionInfo": {
        "execution_id": (1, "string"), "task_id": (2, "string"), "function_name": (3, "string"),
        "execution_mode": (4, "enum"), "status": (5, "enum"), "started_at": (6, "message"),
        "completed_at": (7, "message"), "execution_time_ms": (8, "int64"), "memory_used_bytes": (9, "int64"),
        "error_message": (10, "string"), "metadata": (11, "message"),
    },
    "StreamExecutionResult": {
        "execution_id": (1, "string"), "status": (2, "enum"), "chunk_data": (3, "message"), "is_final": (4, "bool"),
        "error_message": (5, "string"), "metadata": (6, "message"),
    },
    "HealthDetails": {
        "active_tasks": (1, "int32"), "running_executions": (2, "int32"), "pending_executions": (3, "int32"),
        "total_memory_used": (4, "int64"), "total_executions": (5, "int64"), "system_info": (6, "message"),
    },
    "ExecutionStats": {
        "running": (1, "int32"), "pending": (2, "int32"), "completed": (3, "int32"), "failed": (4, "int32"),
        "average_execution_time_ms": (5, "double"), "success_rate_percent": (6, "double"),
        "executions_by_function": (7, "message"),
    },
}  # fmt: skip
_TYPE_NAMES = {1: "double", 3: "int64", 5: "int32", 8: "bool", 9: "string", 11: "message", 14: "enum"}


@pytest.mark.parametrize("message", sorted(CONTRACT))
def test_field_numbers_and_types_match_the_spear_contract(message: str) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    actual = {f.name: (f.number, _TYPE_NAMES.get(f.type, str(f.type))) for f in descriptor.fields}
    assert actual == CONTRACT[message]


def test_enum_numbers_match_the_spear_contract() -> None:
    assert [v.number for v in pb.ExecutionStatus.DESCRIPTOR.values] == [0, 1, 2, 3, 4, 5, 6]
    assert pb.EXECUTION_MODE_ASYNC == 2 and pb.EXECUTION_MODE_STREAM == 3
    assert pb.INVOCATION_TYPE_NEW_TASK == 1 and pb.INVOCATION_TYPE_EXISTING_TASK == 2


def test_function_service_has_the_spear_methods() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["FunctionService"].methods}
    assert methods == {
        "InvokeFunction", "GetExecutionStatus", "CancelExecution", "StreamFunction", "ListTasks", "GetTask",
        "DeleteTask", "ListExecutions", "GetHealth", "GetStats",
    }  # fmt: skip
