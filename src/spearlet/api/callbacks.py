"""Completion callbacks: one POST of the final record to `invocation_metadata.callback_url`.

The URL is parsed the way it will be sent, and its host checked against the node's allow-list
(`callback_allow`: host names, IP addresses or CIDR networks; loopback by default), when the
execution is accepted, so a bad URL is the caller's INVALID_ARGUMENT rather than a silent failure
later; the record keeps the URL in the form that is sent. Delivery is retried with backoff; each
attempt is bounded in time as a whole (`callback_timeout_s`), and the receiver's answer is not
read beyond its status line and headers, whatever it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from spearlet.api.views import record_json
from spearlet.core.background import Background
from spearlet.core.errors import InvalidArgument
from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord
from spearlet.core.net import HostRules, parse_http_url

log = logging.getLogger(__name__)

CALLBACK_KEY = "callback_url"
ATTEMPTS = 5
FIRST_DELAY_S = 0.5


class Callbacks:
    def __init__(self, allow: list[str], timeout_s: float = 10.0) -> None:
        self.hosts = HostRules(allow)
        self.timeout_s = timeout_s
        self._background = Background()
        self._client: httpx.AsyncClient | None = None

    def check(self, record: ExecutionRecord) -> None:
        """Admission check: refuse a callback URL that cannot be sent or is not allowed; keep the
        one that will be sent."""
        url = record.metadata.get(CALLBACK_KEY)
        if not url:
            return
        parsed = parse_http_url(url, CALLBACK_KEY)
        if not self.hosts.allows(parsed.host):
            raise InvalidArgument(
                f"callback_url host {parsed.host!r} is not in the node's callback_allow list ({self.hosts})"
            )
        record.metadata[CALLBACK_KEY] = str(parsed)

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
                async with asyncio.timeout(self.timeout_s):
                    status = await self._post(url, body, record.execution_id)
                if status < 300:
                    return
                problem = f"HTTP {status}"
            except TimeoutError:
                problem = f"no answer within {self.timeout_s:g} s"
            except Exception as exc:  # whatever the URL or the receiver does, the next attempt comes
                problem = str(exc) or type(exc).__name__
            log.warning("callback %d/%d for %s to %s failed: %s", attempt, ATTEMPTS, record.execution_id, url, problem)
            if attempt < ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        log.error("callback for %s to %s given up after %d attempts", record.execution_id, url, ATTEMPTS)

    async def _post(self, url: str, body: object, execution_id: str) -> int:
        """POST and return the status; the response body is never read (the connection is closed
        instead of drained)."""
        assert self._client is not None
        request = self._client.build_request("POST", url, json=body, headers={"X-Spearlet-Execution": execution_id})
        response = await self._client.send(request, stream=True)
        await response.aclose()
        return response.status_code

    async def close(self, grace_s: float = 2.0) -> None:
        """Let deliveries in flight finish for a moment; callbacks are best effort at shutdown."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._background.wait(), grace_s)
        if self._client is not None:
            await self._client.aclose()
