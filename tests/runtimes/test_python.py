"""The warm `python` runtime through a real node: code forms, calling conventions, failures, instances."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import grpc
import psutil
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.core.models import Status, Task
from spearlet.runtimes.base import Invocation, Limits, NodeLimits, StopRequest
from spearlet.runtimes.python import PythonOptions, PythonRuntime, WorkerGone, _Frames
from tests.api.grpc.spear_client import SpearClient
from tests.e2e.test_async import wait_done
from tests.helpers import NodeProcess, existing, params, unpack
from tests.helpers import register as register_task

pytestmark = pytest.mark.timeout(60)

MODULE = """
import os, sys, time

# Which worker answered: its pid alone says nothing in a sandbox, where each worker is pid 2 of its own.
WORKER = f"{os.getpid()}:{time.time_ns()}"

def handler(name="world", context=None):
    if context is not None:
        context.logger.info("hello from %s", context.execution_id)
    print("printed line")
    return {"greeting": f"Hi {name}", "worker": WORKER}

def whole(params):
    return sorted(params)

def raw(data):
    assert isinstance(data, bytes), type(data)
    return data[::-1]

def text():
    return "plain text"

def boom():
    raise ValueError("bad value")

def die():
    os._exit(3)

def slow(seconds=30):
    time.sleep(seconds)

def chunks(n=3):
    for i in range(n):
        yield {"i": i}

async def later(x=1):
    import asyncio
    await asyncio.sleep(0.01)
    return x * 2

def env(name):
    return os.environ.get(name)

def deadline(context):
    return context.remaining_s() is not None and context.remaining_s() > 0

def big():
    return "x" * 5_000_000

def large():
    return "y" * 3_000_000
"""


def register(node: NodeProcess, name: str, location: Path, **metadata: str) -> pb.RegisterTaskResponse:
    return register_task(node.grpc_target, name, location, "python", **metadata)


@pytest.fixture(scope="module")
def module_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("code") / "fns.py"
    path.write_text(MODULE)
    return path


@pytest.fixture(scope="module")
def fns(node: NodeProcess, module_file: Path) -> str:
    register(node, "fns", module_file, entry="fns:handler")
    return "fns"


def call(node: NodeProcess, task: str, function: str = "", **kwargs: object) -> pb.InvokeFunctionResponse:
    return node.stub().InvokeFunction(existing(task, function_name=function, parameters=params(**kwargs)))


def test_keyword_parameters_context_logger_and_print_become_the_log(node: NodeProcess, fns: str) -> None:
    response = call(node, fns, name="Ada")
    assert response.success
    assert unpack(response.result.result)["greeting"] == "Hi Ada"
    assert response.instance_id.startswith("fns/")
    logs = (
        node.stub()
        .GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=response.execution_id, include_logs=True))
        .logs
    )
    assert f"INFO hello from {response.execution_id}" in logs and "printed line" in logs


def test_a_function_taking_one_argument_gets_the_parameters_dict(node: NodeProcess, fns: str) -> None:
    assert unpack(call(node, fns, "whole", b=1, a=2).result.result) == ["a", "b"]


def test_bytes_stay_bytes_both_ways(node: NodeProcess, fns: str) -> None:
    assert unpack(call(node, fns, "raw", data=b"\x00\x01\xff").result.result) == b"\xff\x01\x00"


def test_text_return_is_a_string_result(node: NodeProcess, fns: str) -> None:
    assert unpack(call(node, fns, "text").result.result) == "plain text"


def test_async_functions_and_generators_work(node: NodeProcess, fns: str) -> None:
    assert unpack(call(node, fns, "later", x=21).result.result) == 42
    assert unpack(call(node, fns, "chunks", n=3).result.result) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_context_environment_and_deadline_reach_the_function(node: NodeProcess, fns: str) -> None:
    request = existing(fns, function_name="env", parameters=params(name="GREETING"),
                       context=pb.ExecutionContext(environment={"GREETING": "hej"}))  # fmt: skip
    assert unpack(node.stub().InvokeFunction(request).result.result) == "hej"
    assert unpack(call(node, fns, "env", name="GREETING").result.result) is None  # not left behind
    assert unpack(call(node, fns, "deadline").result.result) is True


def test_an_exception_fails_with_type_message_and_traceback_in_the_log(node: NodeProcess, fns: str) -> None:
    response = call(node, fns, "boom")
    assert response.result.status == pb.EXECUTION_STATUS_FAILED
    assert response.result.error_code == "FUNCTION_ERROR"
    assert response.result.error_message == "ValueError: bad value"
    logs = (
        node.stub()
        .GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=response.execution_id, include_logs=True))
        .logs
    )
    assert any("Traceback" in line for line in logs) and any("in boom" in line for line in logs)
    assert call(node, fns).success  # the worker survives an exception


def test_unknown_function_fails_clearly(node: NodeProcess, fns: str) -> None:
    response = call(node, fns, "missing")
    assert response.result.error_code == "FUNCTION_ERROR"
    assert "missing" in response.result.error_message


def test_a_dying_worker_gives_instance_crashed_and_a_fresh_worker(node: NodeProcess, fns: str) -> None:
    before = unpack(call(node, fns).result.result)["worker"]
    processes = workers_of(node, fns)
    response = call(node, fns, "die")
    assert response.result.status == pb.EXECUTION_STATUS_FAILED
    assert response.result.error_code == "INSTANCE_CRASHED"
    assert "exit 3" in response.result.error_message
    after = unpack(call(node, fns).result.result)["worker"]
    assert after != before
    assert_gone(processes)


def test_warm_calls_reuse_one_worker(node: NodeProcess, fns: str) -> None:
    workers = {unpack(call(node, fns).result.result)["worker"] for _ in range(10)}
    assert len(workers) == 1


def test_timeout_kills_the_worker_and_replaces_it(node: NodeProcess, fns: str) -> None:
    assert call(node, fns).success
    processes = workers_of(node, fns)
    request = existing(fns, function_name="slow", context=pb.ExecutionContext(timeout_ms=300))
    started = time.perf_counter()
    response = node.stub().InvokeFunction(request)
    assert time.perf_counter() - started < 2
    assert response.result.status == pb.EXECUTION_STATUS_TIMEOUT
    assert_gone(processes)
    assert call(node, fns).success


def test_cancel_of_a_running_call_replaces_the_worker(node: NodeProcess, fns: str) -> None:
    stub = node.stub()
    accepted = stub.InvokeFunction(existing(fns, mode=pb.EXECUTION_MODE_ASYNC, function_name="slow"))
    deadline = time.monotonic() + 10
    while (
        stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=accepted.execution_id)).result.status
        != pb.EXECUTION_STATUS_RUNNING
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.perf_counter()
    cancel = stub.CancelExecution(pb.CancelExecutionRequest(execution_id=accepted.execution_id))
    assert cancel.success and time.perf_counter() - started < 1.0
    assert wait_done(stub, accepted.execution_id).result.status == pb.EXECUTION_STATUS_CANCELLED
    assert call(node, fns).success


def test_an_output_in_many_pipe_reads_comes_back_whole(node: NodeProcess, fns: str) -> None:
    response = call(node, fns, "large")  # 3 MB: dozens of reads of the worker's pipe
    assert response.success, response.result.error_message
    assert unpack(response.result.result) == "y" * 3_000_000


def test_output_over_the_limit_fails_and_the_node_keeps_serving(node: NodeProcess, fns: str) -> None:
    response = call(node, fns, "big")  # 5 MB, over the default 4,000,000-byte output limit
    assert response.result.status == pb.EXECUTION_STATUS_FAILED
    assert response.result.error_code == "OUTPUT_TOO_LARGE"
    assert call(node, fns).success


async def test_a_frame_announced_over_the_limit_closes_the_worker_pipe_at_once() -> None:
    read_fd, write_fd = os.pipe()
    frames = _Frames()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: frames, reader)
    try:
        os.write(write_fd, struct.pack(">I", 5_000_000) + b"x" * 1000)
        with pytest.raises(WorkerGone, match="OUTPUT_TOO_LARGE:5000000"):
            await asyncio.wait_for(frames.next(limit=4_000_000), 5)
        assert transport.is_closing()  # read no more: the pipe is not left open behind the worker
    finally:
        transport.close()
        os.close(write_fd)


def test_package_directory_and_zip_artifacts(node: NodeProcess, tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .impl import handler\n")
    (package / "impl.py").write_text("def handler(x=0):\n    return {'pkg': x}\n")
    register(node, "pkg", package)
    assert unpack(call(node, "pkg", x=5).result.result) == {"pkg": 5}

    archive = tmp_path / "code.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped.py", "def run(y=0):\n    return {'zip': y}\n")
    register(node, "zipped", archive, entry="zipped:run")
    assert unpack(call(node, "zipped", y=7).result.result) == {"zip": 7}


def test_broken_code_is_refused_at_registration(node: NodeProcess, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n")
    with pytest.raises(grpc.RpcError) as err:
        register(node, "broken", broken)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_module_here" in err.value.details()
    zip_without_entry = tmp_path / "x.zip"
    with zipfile.ZipFile(zip_without_entry, "w") as z:
        z.writestr("m.py", "def handler():\n    pass\n")
    with pytest.raises(grpc.RpcError) as err:
        register(node, "noentry", zip_without_entry)
    assert "entry" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        register(node, "badstrategy", tmp_path / "broken.py", strategy="fastest")
    assert "strategy" in err.value.details()
    escaping = tmp_path / "escape.zip"
    with zipfile.ZipFile(escaping, "w") as z:
        z.writestr("../../evil.py", "def handler():\n    pass\n")
    with pytest.raises(grpc.RpcError) as err:
        register(node, "escape", escaping, entry="evil:handler")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "unsafe entry" in err.value.details()


def test_min_instances_are_started_at_registration(node: NodeProcess, module_file: Path) -> None:
    register(node, "warm3", module_file, entry="fns:handler", min_instances="3")
    assert len(workers_of(node, "warm3")) == 3


def workers_of(node: NodeProcess, task_id: str) -> list[psutil.Process]:
    """The task's worker processes (not the sandboxes around them)."""
    return [
        p
        for p in psutil.Process(node.proc.pid).children(recursive=True)
        if p.environ().get("SPEAR_TASK_ID") == task_id and p.name() != "bwrap"
    ]


def assert_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    assert processes
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "a worker outlived its end"


def test_force_new_instance_uses_a_fresh_worker(node: NodeProcess, fns: str) -> None:
    first = call(node, fns)
    forced = node.stub().InvokeFunction(existing(fns, force_new_instance=True))
    assert forced.instance_id != first.instance_id
    assert unpack(forced.result.result)["worker"] != unpack(first.result.result)["worker"]


def test_recycle_after_max_calls_per_instance(node: NodeProcess, module_file: Path) -> None:
    register(node, "recycled", module_file, entry="fns:handler", max_calls_per_instance="2")
    workers = [unpack(call(node, "recycled").result.result)["worker"] for _ in range(4)]
    assert workers[0] == workers[1] and workers[2] == workers[3] and workers[1] != workers[2]


def test_idle_instances_are_reaped(node: NodeProcess, module_file: Path) -> None:
    register(node, "reaped", module_file, entry="fns:handler", idle_timeout_s="1")
    assert call(node, "reaped").success
    assert_gone(workers_of(node, "reaped"))


def test_worker_sees_no_node_environment(node: NodeProcess, fns: str) -> None:
    os.environ["SPEARLET_SECRET_FOR_TEST"] = "x"  # not inherited: the node was started before, but check anyway
    assert unpack(call(node, fns, "env", name="SPEARLET_LOG_LEVEL").result.result) is None
    assert unpack(call(node, fns, "env", name="PATH").result.result) == "/usr/local/bin:/usr/bin:/bin"


async def test_a_call_that_prints_without_end_costs_the_node_only_its_log_tail(tmp_path: Path) -> None:
    """30 MB of log lines during one call: the node keeps the last `log_limit_bytes` as they come,
    not all of it until the call ends."""
    code = tmp_path / "noisy.py"
    code.write_text("def handler():\n    for i in range(60):\n        print('x' * 500_000)\n    print('last')\n")
    options = PythonOptions(shared_dir=tmp_path / "data", limits=NodeLimits())
    runtime = PythonRuntime(options)
    digest = hashlib.sha256(code.read_bytes()).hexdigest()
    task = Task("noisy", "noisy", "python", str(code), local_path=str(code), digest=digest)
    limits = Limits.for_task(options.limits, task, timeout_ms=60_000)
    try:
        await runtime.prepare(task)
        tracemalloc.start()
        try:
            outcome = await runtime.invoke(task, Invocation("e1", "", {}, {}, limits), StopRequest())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await runtime.close()
    assert outcome.status is Status.COMPLETED, outcome.error_message
    assert outcome.logs.endswith("last") and len(outcome.logs) <= options.limits.log_limit_bytes
    assert int(outcome.metrics["log_truncated_bytes"]) > 29_000_000
    assert peak < 10_000_000, f"the node held {peak / 1e6:.0f} MB for a call's log"


def test_destroying_an_idle_worker_stops_its_process_and_the_next_call_gets_a_fresh_one(
    node: NodeProcess, module_file: Path
) -> None:
    register(node, "destroyable", module_file, entry="fns:handler", min_instances="1")
    first = node.stub().InvokeFunction(existing("destroyable"))
    [worker] = workers_of(node, "destroyable")
    spear = SpearClient(node.grpc_target)
    try:
        destroyed = spear.destroy(first.instance_id, reason="idle test")
        assert destroyed.success and first.instance_id in destroyed.message
        assert_gone([worker])
        after = node.stub().InvokeFunction(existing("destroyable"))
        assert after.success and after.instance_id != first.instance_id
        assert not spear.destroy(first.instance_id).success
    finally:
        spear.close()
