"""A full disk under the SQLite store (a real one: a small tmpfs, mounted here as root): new work is
refused at once, stored work is still answered, health says why, a start on it is served degraded,
and the node takes work again by itself when space comes back. Nothing stored is lost or damaged."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from tests.e2e.test_async import wait_done
from tests.helpers import NodeProcess, existing, register, script, start_node

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a small disk of our own needs mounting a tmpfs (root): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def wait_for(check: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def health(node: NodeProcess) -> pb.GetHealthResponse:
    return node.stub().GetHealth(pb.GetHealthRequest())


def refused_at_once(node: NodeProcess, mode: int) -> grpc.RpcError:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        node.stub().InvokeFunction(existing("job", mode), timeout=10)
    assert time.monotonic() - started < 2.0
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
    assert "full" in refused.value.details()
    return refused.value


def assert_stored_work_answered(node: NodeProcess, ids: list[str]) -> None:
    for execution_id in ids:
        status = node.stub().GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=execution_id))
        assert status.found and status.result.status == pb.EXECUTION_STATUS_COMPLETED
    answer = httpx.get(f"{node.http_url}/api/v1/executions/{ids[0]}/status", timeout=10)
    assert answer.status_code == 200 and answer.json()["found"] is True


def test_a_full_disk_refuses_new_work_serves_stored_work_and_recovers_alone(disk: Path, tmp_path: Path) -> None:
    data = disk / "data"
    job = script(tmp_path / "job.sh", "#!/bin/sh\necho '{\"ok\": true}'\n")
    node = start_node(data, "--tasks", "none")
    try:
        register(node.grpc_target, "job", job)
        ids = [node.stub().InvokeFunction(existing("job")).execution_id for _ in range(3)]
        accepted = node.stub().InvokeFunction(existing("job", pb.EXECUTION_MODE_ASYNC)).execution_id
        assert wait_done(node.stub(), accepted).result.status == pb.EXECUTION_STATUS_COMPLETED
        ids.append(accepted)
        wal = data / "spearlet.db-wal"
        wait_for(lambda: not wal.exists() or wal.stat().st_size == 0)  # the idle writer emptied it

        filler = fill(disk)
        refused_at_once(node, pb.EXECUTION_MODE_ASYNC)  # its record cannot be written
        refused_at_once(node, pb.EXECUTION_MODE_SYNC)  # the node knows now: refused before it runs
        over_http = httpx.post(f"{node.http_url}/api/v1/invoke", json={"invocation_type": 2, "task_id": "job"})
        assert over_http.status_code == 429 and over_http.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert_stored_work_answered(node, ids)
        state = health(node)
        assert state.status == "degraded" and "full" in state.message

        filler.unlink()  # space comes back: the node notices by itself
        wait_for(lambda: health(node).status == "healthy")
        again = node.stub().InvokeFunction(existing("job"))
        assert again.result.status == pb.EXECUTION_STATUS_COMPLETED
        ids.append(again.execution_id)
    finally:
        assert node.stop() == 0, "\n".join(node.output)

    filler = fill(disk)
    node = start_node(data, "--tasks", "none")  # a start on a full disk is served, degraded
    try:
        state = health(node)
        assert state.status == "degraded" and "full" in state.message
        assert_stored_work_answered(node, ids)
        refused_at_once(node, pb.EXECUTION_MODE_SYNC)
        filler.unlink()
        wait_for(lambda: health(node).status == "healthy")
        after = node.stub().InvokeFunction(existing("job", pb.EXECUTION_MODE_ASYNC)).execution_id
        assert wait_done(node.stub(), after).result.status == pb.EXECUTION_STATUS_COMPLETED
        ids.append(after)
    finally:
        assert node.stop() == 0, "\n".join(node.output)
    assert not any("Traceback" in line for line in node.output), "\n".join(node.output)

    with sqlite3.connect(data / "spearlet.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT execution_id FROM executions")}
    assert set(ids) <= stored
