"""The node's wiring, in process: which store it is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from spearlet.config import Settings
from spearlet.core.invoker import InvocationType, InvokeRequest
from spearlet.core.models import Mode, Status
from spearlet.node import Node
from spearlet.store.memory import MemoryStore

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
