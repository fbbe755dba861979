from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.config import Settings
from spearlet.node import Node
from tests.helpers import open_path
from tests.sms.fake import FakeSms

# Short enough that a test sees several heartbeats in a second or two.
HEARTBEAT_S = 0.2


@pytest.fixture
async def fake_sms() -> AsyncIterator[FakeSms]:
    sms = FakeSms()
    await sms.start()
    try:
        yield sms
    finally:
        await sms.close()


class Nodes:
    """Starts in-process nodes (real ports, SQLite, runtimes, the bundled tasks) joined to the fake
    SMS; whatever a test did not stop is stopped at its end."""

    def __init__(self, tmp_path: Path, sms: FakeSms) -> None:
        self.tmp_path = tmp_path
        self.sms = sms
        self.running: list[Node] = []

    async def start(self, data: str = "data", **settings: Any) -> Node:
        values: dict[str, Any] = {
            "data_dir": open_path(self.tmp_path / data),
            "grpc_port": 0,
            "http_port": 0,
            "sms_grpc_addr": self.sms.grpc_addr,
            "sms_http_addr": self.sms.http_addr,
            "sms_heartbeat_s": HEARTBEAT_S,
        }
        node = Node(Settings(**{**values, **settings}))
        try:
            await node.start()
        except BaseException:
            await node.stop()
            raise
        self.running.append(node)
        return node

    async def stop(self, node: Node) -> None:
        self.running.remove(node)
        await node.stop()


@pytest.fixture
async def nodes(tmp_path: Path, fake_sms: FakeSms) -> AsyncIterator[Nodes]:
    started = Nodes(tmp_path, fake_sms)
    yield started
    for node in reversed(started.running):
        await node.stop()


def stub(node: Node) -> pb_grpc.FunctionServiceStub:
    """The seed-era FunctionService of a node, over a real channel."""
    return pb_grpc.FunctionServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{node.grpc_port}"))
