"""Downloading an artifact: only from allowed hosts, into a file hashed as it is written.

Redirects are followed by hand, each location parsed and checked against `artifact_hosts` before
anything is sent to it, and the address actually connected to is checked again before the body is
read (a name may resolve differently the second time). Errors name the URL and what went wrong in
terms that do not help map a network: any failure to get an HTTP response is one message, whether
the port was closed, silent or spoke something else; nothing of what was fetched is ever quoted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import httpx

from spearlet.artifacts.local import CHUNK, Budget
from spearlet.core.errors import InvalidArgument
from spearlet.core.net import HostRules, parse_http_url

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
log = logging.getLogger(__name__)


async def download(url: httpx.URL, target: Path, hosts: HostRules, budget: Budget, schemes: tuple[str, ...]) -> str:
    """Fetch `url` into the new file `target` within `budget`; its sha256."""
    shown = str(url)[:200]
    try:
        async with asyncio.timeout(budget.remaining_s()):
            return await _follow(url, target, hosts, budget, schemes, shown)
    except TimeoutError:
        raise InvalidArgument(f"downloading {shown!r} took longer than {budget.timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        # In the node's log for the operator; the caller learns only that no response came.
        log.info("artifact download from %s failed: %r", shown, exc)
        raise InvalidArgument(f"downloading {shown!r} failed: no HTTP response from the server") from None


async def _follow(
    url: httpx.URL, target: Path, hosts: HostRules, budget: Budget, schemes: tuple[str, ...], shown: str
) -> str:
    timeout = httpx.Timeout(budget.timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await _check_host(url, hosts, shown)
            async with client.stream("GET", url) as response:
                _check_peer(response, hosts, shown)
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    where = response.headers["location"]
                    url = parse_http_url(str(url.join(where)), f"a redirect of {shown!r}", schemes)
                    continue
                if response.status_code != 200:
                    raise InvalidArgument(f"downloading {shown!r} failed: HTTP {response.status_code}")
                return await _save(response, target, budget)
    raise InvalidArgument(f"downloading {shown!r} failed: more than {MAX_REDIRECTS} redirects")


async def _check_host(url: httpx.URL, hosts: HostRules, shown: str) -> None:
    if hosts.any:
        return
    if not await asyncio.to_thread(hosts.allows, url.host):
        raise InvalidArgument(
            f"artifact location {shown!r}: host {url.host!r} is not in the node's artifact_hosts ({hosts})"
        )


def _check_peer(response: httpx.Response, hosts: HostRules, shown: str) -> None:
    if hosts.any or hosts.allows_name(response.url.host):
        return
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not peer or not hosts.allows_address(str(peer[0])):
        raise InvalidArgument(
            f"artifact location {shown!r}: host {response.url.host!r} is not in the node's artifact_hosts ({hosts})"
        )


async def _save(response: httpx.Response, target: Path, budget: Budget) -> str:
    digest = hashlib.sha256()
    with target.open("xb") as out:
        async for chunk in response.aiter_bytes(CHUNK):
            budget.take(len(chunk))
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
