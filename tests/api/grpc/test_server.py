"""The gRPC transport on a real node: a failure of the node itself reaches the caller as INTERNAL
with its kind only; its message and traceback stay in the node's log."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.config import Settings
from spearlet.node import Node

pytestmark = pytest.mark.timeout(60)


async def test_a_failure_of_the_node_is_internal_without_its_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0, tasks="none"))
    await node.start()
    try:
        await node.store.close()  # a store that stopped answering: the node's fault, not the caller's
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.grpc_port}") as channel:
            stub = pb_grpc.FunctionServiceStub(channel)
            with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ListExecutions(pb.ListExecutionsRequest())
    finally:
        await node.stop()
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    assert failed.value.details() == "internal error of the node (RuntimeError): its log has the details"
    assert "store is not open" in caplog.text and "Traceback" in caplog.text
