"""A client of one cluster node follows an execution that another node runs (real redis-server)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from spearlet.client import Client, ExecutionNotFound, Options, Status
from tests.helpers import flush_redis
from tests.test_cluster import start_member

pytestmark = pytest.mark.timeout(90)


def test_a_client_of_one_node_waits_for_an_execution_another_node_runs(tmp_path: Path, redis_url: str) -> None:
    flush_redis(redis_url)
    nodes = [start_member(tmp_path / name, redis_url, name) for name in ("a", "b")]
    try:
        with Client(nodes[0].grpc_target) as on_a, Client(nodes[1].grpc_target) as on_b:
            mine = Options(execution_id=f"cluster-{uuid.uuid4()}")
            answers: list[Any] = []
            # A sync call runs on the node it reaches: b.
            runner = threading.Thread(
                target=lambda: answers.append(on_b.invoke("greet", "wait", options=mine, seconds=2))
            )
            runner.start()
            execution = on_a.execution(mine.execution_id)
            deadline = time.monotonic() + 10
            while True:  # b stores the record before it runs the call
                try:
                    assert execution.status() in (Status.PENDING, Status.RUNNING)
                    break
                except ExecutionNotFound:
                    assert time.monotonic() < deadline, "node a never saw the execution"
                    time.sleep(0.05)
            assert execution.result(timeout=30) == {"waited": pytest.approx(2, abs=0.5)}
            assert execution.query().result.metrics["node"] == "b"
            runner.join(10)
            assert answers == [execution.result()]
    finally:
        for node in nodes:
            assert node.stop() == 0, "\n".join(node.output)
