"""Completion callbacks: one POST of the final record to `invocation_metadata.callback_url`.

Destinations must match the node's allow-list (`callback_allow`: host names, IP addresses or CIDR
networks; loopback by default), checked when the execution is accepted, so a bad URL is the
caller's INVALID_ARGUMENT rather than a silent failure later. Delivery is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from urllib.parse import urlparse

import httpx

from spearlet.api.views import record_json
from spearlet.core.background import Background
from spearlet.core.errors import InvalidArgument
from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord

log = logging.getLogger(__name__)

CALLBACK_KEY = "callback_url"
ATTEMPTS = 5
FIRST_DELAY_S = 0.5


class Callbacks:
    def __init__(self, allow: list[str], timeout_s: float = 10.0) -> None:
        self.allow = allow
        self.timeout_s = timeout_s
        self._background = Background()
        self._client: httpx.AsyncClient | None = None

    def check(self, record: ExecutionRecord) -> None:
        """Admission check: refuse a callback URL that is malformed or not allowed."""
        url = record.metadata.get(CALLBACK_KEY)
        if not url:
            return
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidArgument(f"callback_url {url[:200]!r} must be an http:// or https:// URL with a host")
        if not self._allowed(parsed.hostname):
            raise InvalidArgument(
                f"callback_url host {parsed.hostname!r} is not in the node's callback_allow list {self.allow}"
            )

    def _allowed(self, host: str) -> bool:
        addresses = {host}
        with contextlib.suppress(OSError):
            addresses |= {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        for rule in self.allow:
            if rule == "*" or rule == host:
                return True
            try:
                network = ipaddress.ip_network(rule, strict=False)
            except ValueError:
                continue
            for address in addresses:
                try:
                    if ipaddress.ip_address(address.split("%")[0]) in network:
                        return True
                except ValueError:
                    continue
        return False

    def on_event(self, event: Event, record: ExecutionRecord) -> None:
        if event is Event.FINISHED and record.metadata.get(CALLBACK_KEY):
            self._background.spawn(self._deliver(record.metadata[CALLBACK_KEY], record))

    async def _deliver(self, url: str, record: ExecutionRecord) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        body = record_json(record)
        delay = FIRST_DELAY_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self._client.post(
                    url, json=body, headers={"X-Spearlet-Execution": record.execution_id}
                )
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
            log.warning("callback %d/%d for %s to %s failed: %s", attempt, ATTEMPTS, record.execution_id, url, problem)
            if attempt < ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        log.error("callback for %s to %s given up after %d attempts", record.execution_id, url, ATTEMPTS)

    async def close(self, grace_s: float = 2.0) -> None:
        """Let deliveries in flight finish for a moment; callbacks are best effort at shutdown."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._background.wait(), grace_s)
        if self._client is not None:
            await self._client.aclose()
