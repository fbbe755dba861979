"""The node's link to a SPEAR cluster's SMS: registration, heartbeats, resource figures, and the
reports and task fetches that ride on the same channel (reports.py, tasks.py).

The node registers at start under the UUID kept in its data dir, heartbeats every
`sms_heartbeat_s` (with UpdateNodeResource), registers again when a heartbeat is answered NOT_FOUND
(the SMS forgot it) and, while the SMS cannot be reached, tries again with backoff, logging the
outage once and its end once. Nothing of this ever stops the node from serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from spearlet.core.models import now_ms
from spearlet.sms import sms_pb2 as sms
from spearlet.sms import sms_pb2_grpc as sms_grpc
from spearlet.sms.reports import Reporter

CALL_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)


def advertised_ip(host: str, sms_host: str, chosen: str = "") -> str:
    """The IP the SMS should call this node back on: `chosen` when set; the bind address when it
    is not a wildcard (a name: its first address); else the address this host reaches the SMS from
    (the default route's for an SMS beyond the local networks)."""
    if chosen:
        return chosen
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        with contextlib.suppress(OSError):
            return str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
        return route_source(sms_host)
    return route_source(sms_host) if ip.is_unspecified else host


def route_source(toward: str) -> str:
    """The local address the kernel picks to reach `toward` (no packet is sent: a UDP connect
    only chooses the route); the default route's when `toward` cannot be resolved."""
    for target in (toward, "192.0.2.1"):  # TEST-NET-1: routed by the default route, never reached
        with contextlib.suppress(OSError):
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                return str(probe.getsockname()[0])
    return "127.0.0.1"


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """What the SMS is told of this node at registration."""

    node_id: str
    ip: str
    grpc_port: int
    http_port: int


class SmsLink:
    def __init__(
        self,
        grpc_addr: str,
        node_uuid: str,
        heartbeat_s: float,
        data_dir: Path,
        health: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.grpc_addr = grpc_addr
        self.node_uuid = node_uuid
        self.heartbeat_s = heartbeat_s
        self._data_dir = data_dir
        self._health = health
        self.channel = grpc.aio.insecure_channel(grpc_addr)
        self._nodes = sms_grpc.NodeServiceStub(self.channel)
        self.reporter = Reporter(self.channel, node_uuid)
        self.reporter.on_delivered = self._heard
        self.address: NodeAddress | None = None
        self.registered = False
        self.connected = False
        self.last_heartbeat_ms = 0
        self.registrations = 0
        self.heartbeats = 0
        self._outage_since = 0.0
        self._net = (time.monotonic(), psutil.net_io_counters())
        self._loop: asyncio.Task[None] | None = None

    def start(self, address: NodeAddress) -> None:
        """Join: register and heartbeat from now on, in the background."""
        self.address = address
        self.reporter.start()
        self._loop = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.reporter.close()
        await self.channel.close(grace=None)

    def state(self) -> dict[str, str]:
        """The link as health shows it."""
        return {
            "sms": self.grpc_addr,
            "sms_node_uuid": self.node_uuid,
            "sms_connected": "true" if self.connected else "false",
            "sms_last_heartbeat_ms": str(self.last_heartbeat_ms),
            "sms_reports_queued": str(self.reporter.queued),
            "sms_reports_dropped": str(self.reporter.dropped),
        }

    async def _run(self) -> None:
        delay = min(0.5, self.heartbeat_s)
        while True:
            try:
                if not self.registered:
                    await self._register()
                await self._heartbeat()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.NOT_FOUND and self.registered:
                    log.warning("the SMS at %s forgot this node: registering again", self.grpc_addr)
                    self.registered = False
                    continue
                self._lost(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.heartbeat_s)
                continue
            except Exception:  # never let the link's own bug end it
                log.exception("the SMS link failed; trying again")
                await asyncio.sleep(self.heartbeat_s)
                continue
            delay = min(0.5, self.heartbeat_s)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._nodes.UpdateNodeResource(
                    sms.UpdateNodeResourceRequest(resource=self.resources()), timeout=CALL_TIMEOUT_S
                )
            await asyncio.sleep(self.heartbeat_s)

    async def _register(self) -> None:
        assert self.address is not None
        a = self.address
        now = int(time.time())
        node = sms.Node(
            uuid=self.node_uuid,
            ip_address=a.ip,
            port=a.grpc_port,
            status="online",
            last_heartbeat=now,
            registered_at=now,
            metadata={"name": a.node_id, "http_port": str(a.http_port)},
            http_port=a.http_port,
        )
        response = await self._nodes.RegisterNode(sms.RegisterNodeRequest(node=node), timeout=CALL_TIMEOUT_S)
        if not response.success:
            log.warning("the SMS at %s did not register this node: %s", self.grpc_addr, response.message)
        self.registered = True
        self.registrations += 1
        log.info("registered with the SMS at %s as %s (%s:%d)", self.grpc_addr, self.node_uuid, a.ip, a.grpc_port)

    async def _heartbeat(self) -> None:
        response = await self._nodes.Heartbeat(
            sms.HeartbeatRequest(uuid=self.node_uuid, timestamp=int(time.time()), health_info=self._health()),
            timeout=CALL_TIMEOUT_S,
        )
        if not response.success:
            # Some SMS versions answer an unknown node with success=false rather than NOT_FOUND.
            log.warning("the SMS refused a heartbeat (%s): registering again", response.message)
            self.registered = False
        self.heartbeats += 1
        self.last_heartbeat_ms = now_ms()
        self._heard()

    def _heard(self) -> None:
        if not self.connected and self._outage_since:
            log.warning(
                "the SMS at %s is reachable again (after %.0f s)",
                self.grpc_addr,
                time.monotonic() - self._outage_since,
            )
        self.connected = True
        self._outage_since = 0.0

    def _lost(self, exc: grpc.aio.AioRpcError) -> None:
        if self.connected or not self._outage_since:  # once per outage
            log.warning(
                "the SMS at %s cannot be reached (%s): the node keeps serving and keeps trying",
                self.grpc_addr,
                exc.code().name,
            )
            self._outage_since = time.monotonic()
        self.connected = False

    def resources(self) -> sms.NodeResource:
        """CPU, memory, disk (of the data dir), network rates and load, as UpdateNodeResource takes them."""
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self._data_dir))
        now, net = time.monotonic(), psutil.net_io_counters()
        then, before = self._net
        self._net = (now, net)
        elapsed = max(now - then, 1e-3)
        load = os.getloadavg()
        return sms.NodeResource(
            node_uuid=self.node_uuid,
            cpu_usage_percent=psutil.cpu_percent(interval=None),
            memory_usage_percent=memory.percent,
            total_memory_bytes=memory.total,
            used_memory_bytes=memory.used,
            available_memory_bytes=memory.available,
            disk_usage_percent=disk.percent,
            total_disk_bytes=disk.total,
            used_disk_bytes=disk.used,
            network_rx_bytes_per_sec=int(max(0, net.bytes_recv - before.bytes_recv) / elapsed),
            network_tx_bytes_per_sec=int(max(0, net.bytes_sent - before.bytes_sent) / elapsed),
            load_average_1m=load[0],
            load_average_5m=load[1],
            load_average_15m=load[2],
            updated_at=int(time.time()),
            resource_metadata={"cpu_count": str(psutil.cpu_count() or 0)},
        )


class LinkFigures(Collector):
    """/metrics: the link's state, read when Prometheus scrapes."""

    def __init__(self, link: SmsLink) -> None:
        self.link = link

    def collect(self) -> Iterable[Metric]:
        link, reporter = self.link, self.link.reporter
        yield GaugeMetricFamily("spearlet_sms_connected", "1 while the SMS answers", value=int(link.connected))
        yield GaugeMetricFamily(
            "spearlet_sms_last_heartbeat_seconds",
            "When the SMS last answered a heartbeat (Unix time)",
            value=link.last_heartbeat_ms / 1000,
        )
        yield GaugeMetricFamily("spearlet_sms_reports_queued", "Reports waiting for the SMS", value=reporter.queued)
        yield CounterMetricFamily(
            "spearlet_sms_reports_dropped", "Reports dropped because the queue was full", value=reporter.dropped
        )
        yield CounterMetricFamily("spearlet_sms_reports_sent", "Reports the SMS took", value=reporter.sent)
        yield CounterMetricFamily(
            "spearlet_sms_registrations", "Registrations with the SMS (again after it forgot)", value=link.registrations
        )
