"""Downloads reach only the hosts `artifact_hosts` allows, on every redirect too; their errors do
not help map a network and never quote what was fetched; a failed one leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spearlet.artifacts.cache import ArtifactCache
from spearlet.artifacts.fetch import ArtifactFetcher
from spearlet.core.errors import InvalidArgument
from spearlet.core.net import HostRules
from tests.artifacts.conftest import FileServer, serve

pytestmark = pytest.mark.timeout(60)

CONTENT = b"#!/bin/sh\necho hello\n"
DIGEST = hashlib.sha256(CONTENT).hexdigest()


def fetcher(tmp_path: Path, *hosts: str) -> ArtifactFetcher:
    return ArtifactFetcher(ArtifactCache(tmp_path / "cache"), hosts=HostRules(hosts or ["*"]), timeout_s=5)


def left_behind(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "cache").rglob("*"))


@pytest.fixture
def other_host(tmp_path: Path) -> Iterator[FileServer]:
    """A second server, on another loopback address: another host as far as the rules go."""
    root = tmp_path / "other"
    root.mkdir()
    (root / "tool.sh").write_bytes(CONTENT)
    found, httpd = serve(root, host="127.0.0.2")
    yield found
    httpd.shutdown()
    httpd.server_close()


async def test_a_host_outside_artifact_hosts_is_never_contacted(tmp_path: Path, server: FileServer) -> None:
    url = server.publish("tool.sh", CONTENT)
    with pytest.raises(InvalidArgument, match="not in the node's artifact_hosts"):
        await fetcher(tmp_path, "10.0.0.0/8", "artifacts.example.com").fetch(url)
    assert server.requests == [] and left_behind(tmp_path) == []
    assert (await fetcher(tmp_path, "127.0.0.0/30").fetch(url)).digest == DIGEST


async def test_a_redirect_to_a_host_outside_artifact_hosts_is_not_followed(
    tmp_path: Path, other_host: FileServer
) -> None:
    root = tmp_path / "www2"
    root.mkdir()
    redirecting, httpd = serve(root, redirects={"/tool.sh": other_host.url("tool.sh")})
    try:
        with pytest.raises(InvalidArgument, match=r"host '127\.0\.0\.2' is not in the node's artifact_hosts"):
            await fetcher(tmp_path, "127.0.0.1").fetch(redirecting.url("tool.sh"))
        assert redirecting.requests == ["/tool.sh"] and other_host.requests == []
        got = await fetcher(tmp_path, "127.0.0.1", "127.0.0.2").fetch(redirecting.url("tool.sh"))
        assert got.path.read_bytes() == CONTENT and other_host.requests == ["/tool.sh"]
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_a_name_allowed_by_address_must_resolve_and_connect_inside_the_allowed_networks(
    tmp_path: Path, server: FileServer
) -> None:
    url = server.publish("tool.sh", CONTENT).replace("127.0.0.1", "localhost")
    with pytest.raises(InvalidArgument, match="artifact_hosts"):
        await fetcher(tmp_path, "10.0.0.0/8").fetch(url)
    assert server.requests == []


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A loopback port whose connections `handle` takes, each on a thread of its own, until the
    event it is given is set (when the block ends)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve_forever() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(connection, stop), daemon=True).start()

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture
def not_http() -> Iterator[int]:
    """A port that accepts connections and closes them without a word."""
    with tcp_server(lambda connection, _: connection.close()) as port:
        yield port


async def test_a_closed_port_and_an_open_one_that_is_not_http_fail_alike(tmp_path: Path, not_http: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    messages = []
    for port in (closed, not_http):
        with pytest.raises(InvalidArgument) as caught:
            await fetcher(tmp_path).fetch(f"http://127.0.0.1:{port}/tool.sh")
        messages.append(str(caught.value).replace(str(port), "PORT"))
    assert (
        messages[0]
        == messages[1]
        == "downloading 'http://127.0.0.1:PORT/tool.sh' failed: no HTTP response from the server"
    )
    assert left_behind(tmp_path) == []


@pytest.fixture
def trickling() -> Iterator[int]:
    """A server that answers 200 with a 1 MB Content-Length, then sends one byte every 50 ms:
    never silent long enough for a read timeout, never done."""

    def trickle(connection: socket.socket, stop: threading.Event) -> None:
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
            while not stop.wait(0.05):
                try:
                    connection.sendall(b"x")
                except OSError:
                    return  # the client gave up: what the test waits for

    with tcp_server(trickle) as port:
        yield port


async def test_a_download_trickling_past_artifact_timeout_s_is_refused_and_leaves_nothing(
    tmp_path: Path, trickling: int
) -> None:
    slow = ArtifactFetcher(ArtifactCache(tmp_path / "cache"), hosts=HostRules(["*"]), timeout_s=0.5)
    url = f"http://127.0.0.1:{trickling}/tool.sh"
    started = asyncio.get_running_loop().time()
    with pytest.raises(InvalidArgument) as caught:
        await slow.fetch(url)
    assert str(caught.value) == f"downloading {url!r} took longer than 0.5 s"
    # The whole download's budget, not a per-read timeout that each trickled byte would reset.
    assert asyncio.get_running_loop().time() - started < 5
    assert left_behind(tmp_path) == []
