"""The node's link to the SMS: registration, heartbeats, resources, re-registration, a stable UUID,
an SMS that goes away and comes back, and the link's state in health and /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import httpx
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.sms.link import advertised_ip, route_source
from tests.helpers import existing, params
from tests.sms.conftest import HEARTBEAT_S, Nodes, stub
from tests.sms.fake import FakeSms

pytestmark = pytest.mark.timeout(60)


async def test_the_node_registers_with_its_uuid_address_ports_and_name(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    registered = await fake_sms.wait_for(lambda: fake_sms.registrations)
    first = registered[0]
    assert str(uuid.UUID(first.uuid)) == first.uuid
    identity = json.loads((node.settings.data_dir / "identity.json").read_text())
    assert first.uuid == identity["sms_uuid"] == node.sms.node_uuid
    assert (first.ip_address, first.port, first.http_port) == ("127.0.0.1", node.grpc_port, node.http_port)
    assert first.status == "online"
    assert dict(first.metadata) == {"name": node.settings.node_id, "http_port": str(node.http_port)}
    assert first.registered_at > 0


async def test_heartbeats_come_at_the_set_interval_with_resource_figures(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    await fake_sms.wait_for(lambda: len(fake_sms.heartbeats) >= 4, timeout=8 * HEARTBEAT_S + 5)
    beats = fake_sms.heartbeats[:4]
    assert {b.uuid for b in beats} == {node.sms.node_uuid}
    assert "running" in beats[0].health_info
    resource = await fake_sms.wait_for(lambda: fake_sms.resources and fake_sms.resources[-1])
    assert resource.node_uuid == node.sms.node_uuid
    assert resource.total_memory_bytes > resource.used_memory_bytes > 0
    assert resource.total_disk_bytes > 0 and 0 <= resource.cpu_usage_percent <= 100
    assert resource.load_average_1m >= 0 and resource.updated_at > 0


async def test_a_node_the_sms_forgot_registers_again(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    await fake_sms.wait_for(lambda: fake_sms.heartbeats)
    fake_sms.nodes.clear()  # the SMS restarted without its registry
    await fake_sms.wait_for(lambda: len(fake_sms.registrations) >= 2)
    assert fake_sms.registrations[1].uuid == fake_sms.registrations[0].uuid == node.sms.node_uuid
    beats = len(fake_sms.heartbeats)
    await fake_sms.wait_for(lambda: len(fake_sms.heartbeats) > beats)  # and heartbeats go on


async def test_the_uuid_is_the_same_after_a_restart(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    await fake_sms.wait_for(lambda: fake_sms.registrations)
    await nodes.stop(node)
    again = await nodes.start()
    await fake_sms.wait_for(lambda: len(fake_sms.registrations) >= 2)
    assert again.sms is not None
    assert fake_sms.registrations[1].uuid == fake_sms.registrations[0].uuid == again.sms.node_uuid
    other = await nodes.start(data="other")
    await fake_sms.wait_for(lambda: len(fake_sms.registrations) >= 3)
    assert other.sms is not None and other.sms.node_uuid != again.sms.node_uuid


async def test_an_sms_that_goes_away_and_comes_back(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    assert node.sms is not None
    await fake_sms.wait_for(lambda: fake_sms.heartbeats)
    await fake_sms.stop()
    await fake_sms.wait_for(lambda: not node.sms.connected)
    # The node keeps serving meanwhile; what it ran is reported once the SMS is back.
    response = await stub(node).InvokeFunction(existing("hello", parameters=params(name="outage")))
    assert response.success
    execution_id = response.execution_id
    health = await stub(node).GetHealth(pb.GetHealthRequest(include_details=True))
    assert health.details.system_info["sms_connected"] == "false"
    assert int(health.details.system_info["sms_reports_queued"]) >= 1
    await fake_sms.start()
    await fake_sms.wait_for(lambda: node.sms.connected, timeout=15)
    reported = await fake_sms.wait_for(lambda: fake_sms.executions_of(execution_id), timeout=15)
    await fake_sms.wait_for(lambda: len(fake_sms.executions_of(execution_id)) >= 2, timeout=15)
    assert [s for s, _ in fake_sms.executions_of(execution_id)] == [
        "EXECUTION_STATUS_RUNNING",
        "EXECUTION_STATUS_COMPLETED",
    ]
    assert reported[0][1].node_uuid == node.sms.node_uuid
    assert node.sms.reporter.dropped == 0


async def test_health_and_metrics_show_the_link(nodes: Nodes, fake_sms: FakeSms) -> None:
    node = await nodes.start()
    assert node.sms is not None
    await fake_sms.wait_for(lambda: node.sms.connected)
    health = await stub(node).GetHealth(pb.GetHealthRequest(include_details=True))
    info = health.details.system_info
    assert info["sms"] == fake_sms.grpc_addr and info["sms_node_uuid"] == node.sms.node_uuid
    assert info["sms_connected"] == "true" and int(info["sms_last_heartbeat_ms"]) > 0
    assert info["sms_reports_dropped"] == "0"
    async with httpx.AsyncClient(base_url=node.http_url) as client:
        over_http = (await client.get("/api/v1/health")).json()
        metrics = (await client.get("/metrics")).text
    assert over_http["details"]["system_info"]["sms_connected"] == "true"
    assert "spearlet_sms_connected 1.0" in metrics
    assert "spearlet_sms_reports_dropped_total 0.0" in metrics
    assert "spearlet_sms_last_heartbeat_seconds " in metrics


async def test_a_node_without_an_sms_has_no_link(tmp_path_factory: pytest.TempPathFactory) -> None:
    from spearlet.config import Settings
    from spearlet.node import Node

    node = Node(Settings(data_dir=tmp_path_factory.mktemp("alone"), grpc_port=0, http_port=0, tasks="none"))
    try:
        await node.start()
        assert node.sms is None and node.tasks.source is None
        health = await stub(node).GetHealth(pb.GetHealthRequest(include_details=True))
        assert "sms_connected" not in health.details.system_info
    finally:
        await node.stop()


def test_the_advertised_ip_is_the_chosen_one_the_bind_address_or_the_route_to_the_sms() -> None:
    assert advertised_ip("0.0.0.0", "10.0.0.5", chosen="10.1.2.3") == "10.1.2.3"
    assert advertised_ip("192.168.7.7", "10.0.0.5") == "192.168.7.7"
    assert advertised_ip("0.0.0.0", "127.0.0.1") == "127.0.0.1"  # the route to a local SMS
    assert advertised_ip("localhost", "10.0.0.5") in ("127.0.0.1", "::1")
    assert advertised_ip("::", "::1") == "::1"
    # An SMS that cannot be resolved: the default route's address (some address in any case).
    assert route_source("sms.invalid")


async def test_an_sms_down_at_start_is_logged_once_and_joined_when_it_comes(
    nodes: Nodes, fake_sms: FakeSms, caplog: pytest.LogCaptureFixture
) -> None:
    await fake_sms.stop()
    caplog.set_level(logging.WARNING, logger="spearlet.sms.link")
    node = await nodes.start()  # the SMS being away never stops the node from starting or serving
    assert node.sms is not None
    await asyncio.sleep(8 * HEARTBEAT_S)  # several tries with backoff
    assert (await stub(node).InvokeFunction(existing("hello"))).success
    outages = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(outages) == 1 and not node.sms.connected
    await fake_sms.start()
    await fake_sms.wait_for(lambda: fake_sms.registrations, timeout=15)
    await fake_sms.wait_for(lambda: node.sms.connected)
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "cannot be reached" in r.getMessage()]) == 1
