"""Isolation and limits: who functions run as, what they can see, and each limit's own error code."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import psutil
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.helpers import NodeProcess, environ_of, existing, params, script, unpack

pytestmark = pytest.mark.timeout(60)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs a node running as root")


def run(node: NodeProcess, tmp_path: Path, name: str, body: str, **metadata: str) -> pb.InvokeFunctionResponse:
    path = script(tmp_path / f"{name}.sh", body)
    tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(node.grpc_target))
    spec = pb.ArtifactSpec(artifact_type="process", location=str(path), metadata=metadata)
    tasks.RegisterTask(pb.RegisterTaskRequest(task_name=name, artifact_spec=spec, replace=True))
    return node.stub().InvokeFunction(existing(name, context=pb.ExecutionContext(timeout_ms=20_000)))


@as_root
def test_a_root_node_runs_functions_as_nobody(node: NodeProcess, tmp_path: Path) -> None:
    out = unpack(run(node, tmp_path, "whoami", "#!/bin/sh\nid -u\n").result.result)
    assert out == 65534
    worker_ids = unpack(node.stub().InvokeFunction(existing("greet", function_name="noop")).result.result)
    assert worker_ids is None
    workers = [
        p
        for p in psutil.Process(node.proc.pid).children(recursive=True)
        if p.environ().get("SPEAR_TASK_ID") == "greet" and p.name() != "bwrap"  # not the sandbox around it
    ]
    assert workers and all(p.uids().real == 65534 for p in workers)


def test_functions_cannot_read_the_data_dir(node: NodeProcess, tmp_path: Path) -> None:
    body = f"#!/bin/sh\nfind {node.data_dir} -type f\ncat {node.data_dir}/spearlet.db >/dev/null 2>&1 && echo read\necho done\n"
    seen, done = unpack(run(node, tmp_path, "snoop", body).result.result).splitlines()
    assert seen.endswith("/snoop.sh") and done == "done"  # an empty data dir, but for its own artifact


def test_each_execution_has_its_own_working_directory_removed_after(node: NodeProcess, tmp_path: Path) -> None:
    body = "#!/bin/sh\ntouch mine\nls\npwd\n"
    first = unpack(run(node, tmp_path, "cwd", body).result.result).split()
    second = unpack(node.stub().InvokeFunction(existing("cwd")).result.result).split()
    assert first[0] == "mine" and second[0] == "mine"  # each starts empty
    assert first[1] != second[1]
    assert not Path(first[1]).exists() and not Path(second[1]).exists()


@as_root
def test_a_fork_bomb_is_contained(node: NodeProcess, tmp_path: Path) -> None:
    bomb = "#!/usr/bin/env python3\nimport os\nwhile True:\n    os.fork()\n"
    path = script(tmp_path / "bomb.py", bomb)
    tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(node.grpc_target))
    spec = pb.ArtifactSpec(artifact_type="process", location=str(path), metadata={"max_processes": "40"})
    tasks.RegisterTask(pb.RegisterTaskRequest(task_name="bomb", artifact_spec=spec, replace=True))
    started = time.monotonic()
    response = node.stub().InvokeFunction(existing("bomb", context=pb.ExecutionContext(timeout_ms=3000)))
    assert time.monotonic() - started < 10
    assert response.result.status in (pb.EXECUTION_STATUS_FAILED, pb.EXECUTION_STATUS_TIMEOUT)
    if response.result.status == pb.EXECUTION_STATUS_FAILED:
        assert response.result.error_code == "PROCESS_LIMIT_EXCEEDED"
    time.sleep(0.5)
    left = [p for p in psutil.process_iter() if environ_of(p).get("SPEAR_EXECUTION_ID") == response.execution_id]
    assert not left
    assert node.stub().InvokeFunction(existing("echo", parameters=params(ok=1))).success


def test_a_file_over_the_size_limit_fails_with_its_own_code(node: NodeProcess, tmp_path: Path) -> None:
    body = "#!/bin/sh\nhead -c 3000000 /dev/zero > big.bin\n"
    response = run(node, tmp_path, "bigfile", body, file_limit_mb="1")
    assert response.result.status == pb.EXECUTION_STATUS_FAILED
    assert response.result.error_code == "FILE_SIZE_LIMIT_EXCEEDED"


@as_root
@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_a_data_dir_closed_to_others_stays_closed_in_the_sandbox_else_function_files_go_under_var_lib(
    tmp_path: Path, sandbox: str
) -> None:
    import hashlib
    import shutil

    from tests.helpers import start_node

    closed = tmp_path / "closed" / "data"  # pytest's own tmp dirs are 0700: nobody cannot pass
    closed.mkdir(parents=True)
    (tmp_path / "closed").chmod(0o700)
    shared = Path("/var/lib/spearlet") / hashlib.sha256(str(closed.resolve()).encode()).hexdigest()[:16]
    node = start_node(closed, open_data_dir=False, env={"SPEARLET_SANDBOX": sandbox})
    try:
        for task in ("hello", "greet"):
            assert node.stub().InvokeFunction(existing(task)).success, "\n".join(node.output)
        if sandbox == "auto":  # bwrap, as root, binds the artifact and worker program from where they are
            assert not shared.exists() and ((tmp_path / "closed").stat().st_mode & 0o777) == 0o700
        else:
            assert (shared / "artifacts").is_dir() and (shared / "runtime" / "python_worker.py").is_file()
    finally:
        assert node.stop() == 0
        shutil.rmtree(shared, ignore_errors=True)
