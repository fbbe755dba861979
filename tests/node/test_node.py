"""The node's wiring and start: which store it is given, and a port in use as one clear line and exit 1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from spearlet.config import Settings
from spearlet.core.models import Mode, Status
from spearlet.engine.invoker import InvocationType, InvokeRequest
from spearlet.node import Node
from spearlet.store.memory import MemoryStore
from tests.helpers import serve_refused

pytestmark = pytest.mark.timeout(60)


async def test_a_node_with_the_memory_store_serves_calls_and_writes_no_store_file(tmp_path: Path) -> None:
    node = Node(Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0, store="memory"))
    await node.start()
    try:
        assert isinstance(node.store, MemoryStore)
        result = await node.invoker.invoke(
            InvokeRequest(InvocationType.EXISTING_TASK, Mode.SYNC, task_id="greet", function_name="noop")
        )
        assert result.record.status is Status.COMPLETED
        stored = await node.store.get_execution(result.record.execution_id)
        assert stored is not None and stored.status is Status.COMPLETED
    finally:
        await node.stop()
    assert not list((tmp_path / "data").glob("spearlet.db*"))


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("flag", "name"), [("--grpc-port", "gRPC"), ("--http-port", "HTTP")])
def test_a_port_in_use_is_one_line_naming_the_port_and_the_setting(
    tmp_path: Path, taken_port: int, flag: str, name: str
) -> None:
    result = serve_refused("--data-dir", str(tmp_path / "data"), "--tasks", "none", flag, str(taken_port))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"cannot start the node: {name} port {taken_port} on 127.0.0.1 is in use: "
        f"choose another with {flag} (setting {flag[2:].replace('-', '_')})"
    ]
