"""A real node process, a plain gRPC client: tasks and synchronous invocation end to end."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.config import Settings
from tests.helpers import NodeProcess, existing, open_path, params, register, script, unpack, value

pytestmark = pytest.mark.timeout(60)


def test_existing_task_returns_function_output_as_json(node: NodeProcess) -> None:
    response = node.stub().InvokeFunction(existing("hello", parameters=params(name="Ada")))
    assert response.success
    result = response.result
    assert result.status == pb.EXECUTION_STATUS_COMPLETED
    assert unpack(result.result) == {"greeting": "Hello, Ada!"}
    assert result.execution_time_ms > 0
    assert result.memory_used_bytes > 1_000_000  # a Python interpreter's peak RSS
    assert result.started_at.ToMilliseconds() <= result.completed_at.ToMilliseconds()
    assert result.metrics["attempts"] == "1"
    assert "queue_wait_ms" in result.metrics
    assert response.status_endpoint == "" and response.estimated_completion_ms == 0


def test_a_client_pinging_at_the_accepted_keepalive_interval_completes_a_long_sync_call(node: NodeProcess) -> None:
    interval_ms = Settings().grpc_min_ping_interval_ms  # the node's default
    options = [
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # ping on and on, as grpc-js does
    ]
    with grpc.insecure_channel(node.grpc_target, options=options) as channel:
        # Long enough for the pings to strike out under grpc's default policy (one ping in 5 min).
        call = existing("sleep", parameters=params(seconds=5))
        response = pb_grpc.FunctionServiceStub(channel).InvokeFunction(call, timeout=30)
    assert response.result.status == pb.EXECUTION_STATUS_COMPLETED


def test_function_name_reaches_the_function(node: NodeProcess) -> None:
    response = node.stub().InvokeFunction(existing("hello", function_name="shout", parameters=params(name="Ada")))
    assert unpack(response.result.result) == {"greeting": "HELLO, ADA!"}


def test_unknown_mode_runs_synchronously(node: NodeProcess) -> None:
    response = node.stub().InvokeFunction(existing("hello", mode=pb.EXECUTION_MODE_UNKNOWN))
    assert response.result.status == pb.EXECUTION_STATUS_COMPLETED


def test_every_parameter_type_arrives_as_json(node: NodeProcess) -> None:
    packed = pb.FunctionParameter(name="i64", value=value(0))
    from google.protobuf import wrappers_pb2

    packed.value.Pack(wrappers_pb2.Int64Value(value=2**40))
    request = existing(
        "echo",
        parameters=[
            *params(s="text", b=b"\x00\xff", n=1.5, obj={"a": [1, None, True]}),
            packed,
            pb.FunctionParameter(name="unset"),
        ],
    )
    response = node.stub().InvokeFunction(request)
    assert unpack(response.result.result) == {
        "s": "text",
        "b": "AP8=",  # bytes reach a process as base64
        "n": 1.5,
        "obj": {"a": [1, None, True]},
        "i64": 2**40,
        "unset": None,
    }


def test_big_integers_are_exact_as_int64_or_strings_and_rounded_as_json_numbers(
    node: NodeProcess, tmp_path: Path
) -> None:
    """What the README's parameter section says about integers beyond 2^53."""
    from google.protobuf import wrappers_pb2

    big = 2**60 + 1  # not a double: the nearest one is 2**60
    shows = script(
        tmp_path / "shows.py",
        "#!/usr/bin/env python3\nimport json, sys\n"
        "p = json.load(sys.stdin)\n"
        "print(json.dumps({'seen': {k: repr(v) for k, v in p.items()}, 'back': p['as_int64']}))\n",
    )
    register(node.grpc_target, "shows", shows)
    as_int64 = pb.FunctionParameter(name="as_int64", value=value(0))
    as_int64.value.Pack(wrappers_pb2.Int64Value(value=big))
    request = existing("shows", parameters=[as_int64, *params(as_string=str(big), as_number=big)])
    out = unpack(node.stub().InvokeFunction(request).result.result)
    assert out["seen"] == {"as_int64": str(big), "as_string": repr(str(big)), "as_number": repr(float(big))}
    assert out["back"] == 2**60  # a JSON output is packed as a google.protobuf.Value: a double


def test_plain_text_output_is_a_string_and_binary_output_bytes(node: NodeProcess, tmp_path: Path) -> None:
    text = script(tmp_path / "text.sh", "#!/bin/sh\nprintf 'not json'\n")
    binary = script(tmp_path / "bin.sh", "#!/bin/sh\nprintf '\\377\\376'\n")
    stub = node.stub()
    for name, path, expected in (("text-out", text, "not json"), ("bin-out", binary, b"\xff\xfe")):
        response = stub.InvokeFunction(
            pb.InvokeFunctionRequest(
                invocation_type=pb.INVOCATION_TYPE_NEW_TASK,
                task_name=name,
                artifact_spec=pb.ArtifactSpec(artifact_type="process", location=str(path)),
            )
        )
        assert unpack(response.result.result) == expected


def test_failure_is_a_failed_result_with_code_and_stderr_tail(node: NodeProcess) -> None:
    response = node.stub().InvokeFunction(existing("fail"))
    assert not response.success
    assert response.result.status == pb.EXECUTION_STATUS_FAILED
    assert response.result.error_code == "NONZERO_EXIT"
    assert "exited with code 3" in response.result.error_message
    assert "something went wrong" in response.result.error_message


def test_timeout_stops_the_process_and_reports_timeout(node: NodeProcess) -> None:
    response = node.stub().InvokeFunction(
        existing("sleep", parameters=params(seconds=30), context=pb.ExecutionContext(timeout_ms=300))
    )
    assert response.result.status == pb.EXECUTION_STATUS_TIMEOUT
    assert response.result.error_code == "TIMEOUT"
    assert 300 <= response.result.execution_time_ms < 2000


def test_task_default_timeout_applies(node: NodeProcess, tmp_path: Path) -> None:
    slow = script(tmp_path / "slow.sh", "#!/bin/sh\nsleep 30\n")
    response = node.stub().InvokeFunction(
        pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_NEW_TASK,
            task_name="slow-default",
            artifact_spec=pb.ArtifactSpec(artifact_type="process", location=str(slow), metadata={"timeout_ms": "200"}),
        )
    )
    assert response.result.status == pb.EXECUTION_STATUS_TIMEOUT


def test_environment_reaches_function_but_node_environment_does_not(node: NodeProcess, tmp_path: Path) -> None:
    env = script(tmp_path / "env.sh", "#!/bin/sh\nenv | sort\n")
    response = node.stub().InvokeFunction(
        pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_NEW_TASK,
            task_name="env",
            artifact_spec=pb.ArtifactSpec(artifact_type="process", location=str(env), metadata={"env.FROM_TASK": "t"}),
            context=pb.ExecutionContext(environment={"GREETING": "hi"}),
        )
    )
    lines = unpack(response.result.result).splitlines()
    assert "GREETING=hi" in lines and "FROM_TASK=t" in lines
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in lines
    assert not any(line.startswith(("SPEARLET_", "PYTEST_", "VIRTUAL_ENV")) for line in lines)


def test_memory_limit_is_applied(node: NodeProcess, tmp_path: Path) -> None:
    hog = script(
        tmp_path / "hog.py",
        "#!/usr/bin/env python3\nblocks = [bytearray(16 << 20) for _ in range(64)]\nprint(len(blocks))\n",
    )
    response = node.stub().InvokeFunction(
        pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_NEW_TASK,
            task_name="hog",
            artifact_spec=pb.ArtifactSpec(
                artifact_type="process", location=str(hog), metadata={"memory_limit_mb": "128"}
            ),
        )
    )
    assert response.result.status == pb.EXECUTION_STATUS_FAILED
    assert response.result.error_code == "OUT_OF_MEMORY"


def test_cpu_limit_kills_a_spinning_function(node: NodeProcess, tmp_path: Path) -> None:
    spin = script(tmp_path / "spin.sh", "#!/bin/sh\nwhile :; do :; done\n")
    response = node.stub().InvokeFunction(
        pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_NEW_TASK,
            task_name="spin",
            artifact_spec=pb.ArtifactSpec(artifact_type="process", location=str(spin), metadata={"cpu_limit_s": "1"}),
            context=pb.ExecutionContext(timeout_ms=20_000),
        )
    )
    assert response.result.status == pb.EXECUTION_STATUS_FAILED
    assert response.result.error_code == "CPU_LIMIT_EXCEEDED"


def test_new_task_registers_and_runs_then_existing_task_reuses_it(node: NodeProcess, tmp_path: Path) -> None:
    upper = script(tmp_path / "upper.py", "#!/usr/bin/env python3\nimport sys\nprint(sys.stdin.read().upper())\n")
    stub = node.stub()
    spec = pb.ArtifactSpec(artifact_type="process", location=str(upper))
    first = stub.InvokeFunction(
        pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_NEW_TASK, task_name="upper", artifact_spec=spec, parameters=params(w="x")
        )
    )
    assert first.task_id == "upper"
    assert unpack(first.result.result) == {"W": "X"}
    again = stub.InvokeFunction(existing("upper", parameters=params(w="y")))
    assert unpack(again.result.result) == {"W": "Y"}


def test_create_if_not_exists_registers_on_first_use(node: NodeProcess) -> None:
    spec = pb.ArtifactSpec(
        artifact_type="process", location=str(Path(__file__).parents[2] / "src/spearlet/examples/echo.sh")
    )
    request = existing("echo-lazy", create_if_not_exists=True, artifact_spec=spec, parameters=params(k=1))
    response = node.stub().InvokeFunction(request)
    assert unpack(response.result.result) == {"k": 1}


def test_checksum_is_verified(node: NodeProcess, tmp_path: Path) -> None:
    path = script(tmp_path / "ok.sh", "#!/bin/sh\necho ok\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    stub = node.stub()

    def new(checksum: str) -> pb.InvokeFunctionRequest:
        spec = pb.ArtifactSpec(artifact_type="process", location=f"file://{path}", checksum=checksum)
        return pb.InvokeFunctionRequest(invocation_type=pb.INVOCATION_TYPE_NEW_TASK, task_name="ck", artifact_spec=spec)

    assert stub.InvokeFunction(new(f"sha256:{digest}")).success
    wrong = "0" * 64
    with pytest.raises(grpc.RpcError) as err:
        stub.InvokeFunction(new(f"sha256:{wrong}"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert wrong in err.value.details() and digest in err.value.details()


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.InvokeFunctionRequest(invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK), "INVALID_ARGUMENT", "task_id"),
        (pb.InvokeFunctionRequest(invocation_type=pb.INVOCATION_TYPE_UNKNOWN, task_id="hello"), "INVALID_ARGUMENT", "invocation_type"),
        (pb.InvokeFunctionRequest(invocation_type=7, task_id="hello"), "INVALID_ARGUMENT", "invocation_type"),
        (existing("no-such-task"), "NOT_FOUND", "no-such-task"),
        (existing("hello", mode=pb.EXECUTION_MODE_STREAM), "INVALID_ARGUMENT", "StreamFunction"),
        (existing("hello", mode=9), "INVALID_ARGUMENT", "execution_mode"),
        (pb.InvokeFunctionRequest(invocation_type=pb.INVOCATION_TYPE_NEW_TASK, task_name="x"), "INVALID_ARGUMENT", "artifact_spec"),
        (existing("hello", context=pb.ExecutionContext(timeout_ms=-5)), "INVALID_ARGUMENT", "timeout_ms"),
    ],
)  # fmt: skip
def test_malformed_requests_are_invalid_argument(
    node: NodeProcess, request_: pb.InvokeFunctionRequest, code: str, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        node.stub().InvokeFunction(request_)
    assert err.value.code().name == code
    assert words in err.value.details()


def test_too_many_parameters_are_refused(node: NodeProcess) -> None:
    many = [pb.FunctionParameter(name=f"p{i}") for i in range(300)]
    with pytest.raises(grpc.RpcError) as err:
        node.stub().InvokeFunction(existing("echo", parameters=many))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in err.value.details()


def test_unsupported_parameter_type_names_the_parameter(node: NodeProcess) -> None:
    bad = pb.FunctionParameter(name="when")
    bad.value.type_url = "type.googleapis.com/google.protobuf.Timestamp"
    with pytest.raises(grpc.RpcError) as err:
        node.stub().InvokeFunction(existing("echo", parameters=[bad]))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'when'" in err.value.details()


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_number_that_is_not_json_deep_in_a_parameter_names_the_parameter(node: NodeProcess, number: float) -> None:
    nested = struct_pb2.Struct()
    nested.update({"points": [1, {"x": number}]})
    bad = pb.FunctionParameter(name="shape")
    bad.value.Pack(struct_pb2.Value(struct_value=nested))
    with pytest.raises(grpc.RpcError) as err:  # it was UNKNOWN, from inside json_format
        node.stub().InvokeFunction(existing("echo", parameters=[bad]))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'shape'" in err.value.details() and "NaN and infinity" in err.value.details()


def test_bad_artifacts_are_refused_clearly(node: NodeProcess, tmp_path: Path) -> None:
    open_path(tmp_path)
    not_exec = tmp_path / "plain.sh"
    not_exec.write_text("#!/bin/sh\n")
    cases = [
        (str(tmp_path / "missing"), "does not exist"),
        (str(not_exec), "not executable"),
        ("ftp://example.com/x", "scheme 'ftp' is not allowed"),
    ]
    for location, words in cases:
        spec = pb.ArtifactSpec(artifact_type="process", location=location)
        with pytest.raises(grpc.RpcError) as err:
            node.stub().InvokeFunction(
                pb.InvokeFunctionRequest(
                    invocation_type=pb.INVOCATION_TYPE_NEW_TASK, task_name="bad", artifact_spec=spec
                )
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert words in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        node.stub().InvokeFunction(
            pb.InvokeFunctionRequest(
                invocation_type=pb.INVOCATION_TYPE_NEW_TASK,
                task_name="bad",
                artifact_spec=pb.ArtifactSpec(artifact_type="cobol", location=str(not_exec)),
            )
        )
    assert "cobol" in err.value.details()


def test_a_long_log_keeps_its_tail_and_says_how_much_was_cut(node: NodeProcess, tmp_path: Path) -> None:
    noisy = script(
        tmp_path / "noisy.sh", "#!/bin/sh\nhead -c 100000 /dev/zero | tr '\\0' 'x' >&2\necho >&2\necho last-line >&2\n"
    )
    stub = node.stub()
    response = stub.InvokeFunction(
        pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_NEW_TASK,
            task_name="noisy",
            artifact_spec=pb.ArtifactSpec(artifact_type="process", location=str(noisy)),
        )
    )
    assert response.success
    assert int(response.result.metrics["log_truncated_bytes"]) > 30_000
    logs = stub.GetExecutionStatus(
        pb.GetExecutionStatusRequest(execution_id=response.execution_id, include_logs=True)
    ).logs
    assert logs[-1] == "last-line" and sum(len(line) + 1 for line in logs) <= 65536
