"""`spearlet serve` joining an SMS: what it prints, and a token without the SMS trusted refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import serve_refused, start_node
from tests.sms.fake import FakeSms

pytestmark = pytest.mark.timeout(60)


async def test_serve_prints_the_sms_and_the_node_uuid_and_registers(tmp_path: Path, fake_sms: FakeSms) -> None:
    node = await asyncio.to_thread(
        start_node,
        tmp_path / "data",
        "--tasks", "none",
        "--sms-grpc-addr", fake_sms.grpc_addr,
        "--sms-http-addr", fake_sms.http_addr,
        "--sms-heartbeat-s", "0.5",
    )  # fmt: skip
    try:
        registered = await fake_sms.wait_for(lambda: fake_sms.registrations)
        await fake_sms.wait_for(lambda: any("node UUID" in line for line in node.output))
        output = "\n".join(node.output)
        assert f"SMS  {fake_sms.grpc_addr} (HTTP {fake_sms.http_addr})" in output
        assert f"node UUID  {registered[0].uuid}" in output
        assert "calls this node freely: it has no token" in output
    finally:
        assert await asyncio.to_thread(node.stop) == 0


def test_a_node_with_a_token_refuses_to_join_an_sms_it_does_not_trust() -> None:
    refused = serve_refused("--sms-grpc-addr", "10.0.0.5:50051", env={"SPEARLET_TOKEN": "t0ken"})
    assert refused.returncode == 2
    assert "add the SMS's address to trusted_networks" in " ".join(refused.stderr.split())
