"""Restarts: what the node accepted survives SIGTERM and SIGKILL, and nothing stays unfinished."""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from spearlet.api.grpc import spearlet_pb2 as pb
from tests.e2e.test_async import wait_done
from tests.helpers import existing, params, processes_running, register, script, start_node

pytestmark = pytest.mark.timeout(120)


def test_tasks_and_records_survive_a_clean_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    job = script(tmp_path / "job.sh", "#!/bin/sh\necho '{\"ok\": true}'\n")
    node = start_node(data, "--tasks", "none")
    register(node.grpc_target, "job", job)
    execution_id = node.stub().InvokeFunction(existing("job")).execution_id
    assert node.stop(signal.SIGTERM) == 0
    assert any("shutting down" in line for line in node.output)

    again = start_node(data, "--tasks", "none")
    try:
        stub = again.stub()
        tasks = stub.ListTasks(pb.ListTasksRequest())
        assert [t.task_id for t in tasks.tasks] == ["job"]
        assert tasks.tasks[0].execution_count == 1
        status = stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=execution_id, include_result=True))
        assert status.found and status.result.status == pb.EXECUTION_STATUS_COMPLETED
        assert stub.InvokeFunction(existing("job")).success
    finally:
        assert again.stop() == 0


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_kill_9_with_pending_and_running_work_finishes_everything_after_restart(
    tmp_path: Path, open_tmp: Path, sandbox: str
) -> None:
    data = open_tmp / "data"
    marker = tmp_path / "work.sh"
    script(marker, "#!/bin/sh\nsleep 0.3\necho '{\"done\": true}'\n")
    long = tmp_path / f"long-{uuid.uuid4().hex[:8]}.sh"  # its processes are found by name, machine-wide
    script(long, "#!/bin/sh\nsleep 601\n")  # sleep: a grandchild, which the parent-death signal misses
    node = start_node(data, "--tasks", "none", env={"SPEARLET_SANDBOX": sandbox})
    register(node.grpc_target, "work", marker, max_concurrency="1")
    register(node.grpc_target, "long", long, max_concurrency="2")
    stub = node.stub()
    ctx_retry = pb.ExecutionContext(max_retries=1, timeout_ms=1500)
    running_retry = stub.InvokeFunction(existing("long", mode=pb.EXECUTION_MODE_ASYNC, context=ctx_retry)).execution_id
    running_once = stub.InvokeFunction(existing("long", mode=pb.EXECUTION_MODE_ASYNC)).execution_id
    # One of these is running at the kill (max_concurrency 1): its retry finishes it after the restart.
    ctx = pb.ExecutionContext(max_retries=1)
    pending = [
        stub.InvokeFunction(
            existing("work", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(i=i), context=ctx)
        ).execution_id
        for i in range(20)
    ]
    deadline = time.monotonic() + 10
    while len(processes_running(str(long))) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    node.proc.kill()  # SIGKILL: no chance to clean up
    node.proc.wait(10)
    deadline = time.monotonic() + 5
    while processes_running(str(long)):  # the kernel kills functions of a dead node (pdeathsig)
        assert time.monotonic() < deadline, "function processes outlived the node"
        time.sleep(0.05)

    orphans = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "601"]]
    if sandbox == "auto":  # grandchildren die with the sandbox, which dies with the node
        _, alive = psutil.wait_procs(orphans, timeout=5)
        assert not alive
    else:
        assert orphans  # grandchildren outlive the node...
    again = start_node(data, "--tasks", "none", env={"SPEARLET_SANDBOX": sandbox})
    try:
        _, alive = psutil.wait_procs(orphans, timeout=5)
        assert not alive  # ...until the restarted node kills what the dead one left behind
        stub = again.stub()
        finals = {eid: wait_done(stub, eid, timeout=60).result for eid in [running_retry, running_once, *pending]}
        assert all(finals[eid].status == pb.EXECUTION_STATUS_COMPLETED for eid in pending)
        assert finals[running_once].status == pb.EXECUTION_STATUS_FAILED
        assert finals[running_once].error_code == "NODE_RESTARTED"
        # Retried after the restart: attempt 2 of 2 runs (and times out, as this function never ends).
        assert finals[running_retry].status == pb.EXECUTION_STATUS_TIMEOUT
        assert finals[running_retry].metrics["attempts"] == "2"
        unfinished = stub.ListExecutions(pb.ListExecutionsRequest(status_filter=pb.EXECUTION_STATUS_RUNNING))
        assert not unfinished.executions
    finally:
        assert again.stop() == 0
    with sqlite3.connect(data / "spearlet.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM executions WHERE status IN (1, 2)").fetchone()[0] == 0


def test_health_service_and_reflection_are_served(tmp_path: Path) -> None:
    node = start_node(tmp_path / "data")
    try:
        channel = grpc.insecure_channel(node.grpc_target)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"spearlet.FunctionService", "spearlet.TaskService", "grpc.health.v1.Health"} <= names
    finally:
        assert node.stop(signal.SIGINT) == 0


def test_sigterm_during_a_running_call_leaves_no_process(tmp_path: Path) -> None:
    long = script(tmp_path / "forever.sh", "#!/bin/sh\nsleep 600\n")
    node = start_node(tmp_path / "data", "--tasks", "none")
    register(node.grpc_target, "forever", long)
    node.stub().InvokeFunction(existing("forever", mode=pb.EXECUTION_MODE_ASYNC))
    deadline = time.monotonic() + 10
    while not processes_running(str(long)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert node.stop(signal.SIGTERM) == 0
    assert not processes_running(str(long))
    assert not [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def test_a_relative_data_dir_works_as_in_the_quick_start(tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    node = start_node(work / ".spearlet", cwd=work)
    try:
        for task in ("hello", "greet", "wasm-hello"):
            assert node.stub().InvokeFunction(existing(task)).success, "\n".join(node.output)
        assert (work / ".spearlet" / "spearlet.db").is_file()
    finally:
        assert node.stop() == 0
