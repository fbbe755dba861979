"""One live node per data dir: a second one is refused and changes nothing; a dead one blocks nothing."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.node.data_dir import DataDirInUse, DataDirLock
from tests.e2e.test_async import wait_done
from tests.helpers import existing, params, serve_refused, start_node

pytestmark = pytest.mark.timeout(90)


def test_the_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path)
    with pytest.raises(DataDirInUse, match=rf"data dir {tmp_path} is in use by a live node \(pid \d+"):
        DataDirLock.acquire(tmp_path)
    first.release()
    DataDirLock.acquire(tmp_path).release()


def test_a_second_node_is_refused_and_the_live_one_works_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    live = start_node(data)
    try:
        stub = live.stub()
        accepted = stub.InvokeFunction(existing("sleep", pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=1.5)))
        running_before = (data / "running.json").read_text()

        refused = serve_refused("--data-dir", str(data))
        assert refused.returncode == 1
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        grpc_port = live.grpc_target.rsplit(":", 1)[1]
        assert str(data) in lines[0] and f"pid {live.proc.pid}" in lines[0] and grpc_port in lines[0]
        assert "Traceback" not in refused.stderr + refused.stdout

        # Nothing was touched: the live node's function ran to its end, its file still names it.
        final = wait_done(stub, accepted.execution_id)
        assert final.result.status == pb.EXECUTION_STATUS_COMPLETED, final.result.error_message
        assert (data / "running.json").read_text() == running_before
        assert json.loads(running_before)["pid"] == live.proc.pid
    finally:
        # Killed outright: the kernel drops the lock with the process, and a restart goes ahead.
        live.stop(signal.SIGKILL)
    again = start_node(data)
    assert again.stop() == 0
