"""Completion callbacks against real loopback receivers: URLs refused or normalised when the call is
accepted, and a receiver that answers with an endless or trickling body costs the node nothing."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from spearlet.api.callbacks import Callbacks
from spearlet.core.errors import InvalidArgument
from spearlet.core.models import ExecutionRecord, Mode, Status

pytestmark = pytest.mark.timeout(60)


def record(url: str) -> ExecutionRecord:
    return ExecutionRecord("e1", "t", "", Mode.ASYNC, Status.COMPLETED, metadata={"callback_url": url})


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://0177.0.0.1:9004/", "not a valid URL"),  # octal: resolvers read 127.0.0.1
        ("http://127.1:9004/", "not a canonical IP address"),
        ("http://2130706433/", "not a canonical IP address"),
        ("http://127.0.0.1:9004/a\nX-Injected: 1", "control characters"),
        ("http://127.0.0.1:99999/", "invalid port"),
        ("http://exa mple.com/", "not a valid host name"),
        ("ftp://127.0.0.1/x", "http:// or https://"),
    ],
)
def test_a_callback_url_that_cannot_be_sent_is_refused_when_the_call_is_accepted(url: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        Callbacks(["*"]).check(record(url))


def test_the_callback_url_is_kept_as_it_will_be_sent() -> None:
    accepted = record("HTTP://LocalHost:9004/done path?x=1#frag")
    Callbacks(["localhost"]).check(accepted)
    assert accepted.metadata["callback_url"] == "http://localhost:9004/done%20path?x=1"


def test_a_name_that_resolves_outside_the_allowed_networks_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="callback_allow"):
        Callbacks(["10.0.0.0/8"]).check(record("http://localhost:9004/"))


@dataclass
class Receiver:
    """A raw TCP receiver answering every request with `respond(connection)`; it records how long
    each connection stayed open and how many body bytes it managed to send."""

    port: int
    sent: list[int] = field(default_factory=list)
    open_s: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/done"


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    respond: Callable[[socket.socket], int] = request.param
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    found = Receiver(server.getsockname()[1])
    stop = threading.Event()

    def serve_one(connection: socket.socket) -> None:
        started = time.monotonic()
        with connection:
            connection.recv(65536)  # the request (small)
            try:
                found.sent.append(respond(connection))
            except OSError:  # the node hung up, as it should
                found.sent.append(-1)
        found.open_s.append(time.monotonic() - started)

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield found
    stop.set()
    thread.join(5)
    server.close()


def endless(connection: socket.socket) -> int:
    """200 OK, then body bytes for as long as anyone reads them (up to 2 GB)."""
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000000\r\n\r\n")
    chunk, sent = b"x" * 65536, 0
    while sent < 2_000_000_000:
        connection.sendall(chunk)
        sent += len(chunk)
    return sent


def trickle(connection: socket.socket) -> int:
    """A status line, then a header byte every 0.2 s: each read succeeds, so only a bound on the
    whole attempt ends it."""
    connection.sendall(b"HTTP/1.1 200 OK\r\n")
    for sent in range(10_000):  # noqa: B007 - the count is the answer
        connection.sendall(b"X")
        time.sleep(0.2)
    return sent


@pytest.mark.parametrize("receiver", [endless], indirect=True)
async def test_a_callback_answer_is_not_read_however_long_it_is(receiver: Receiver) -> None:
    callbacks = Callbacks(["127.0.0.1"], timeout_s=5.0)
    try:
        await asyncio.wait_for(callbacks._deliver(receiver.url, record(receiver.url)), 10)
    finally:
        await callbacks.close()
    deadline = time.monotonic() + 5
    while not receiver.sent and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # One delivery, done once the status came: the node hung up on the body (2 GB offered).
    assert len(receiver.sent) == 1 and receiver.sent[0] == -1


@pytest.mark.parametrize("receiver", [trickle], indirect=True)
async def test_a_callback_attempt_is_bounded_in_time_as_a_whole(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spearlet.api.callbacks.ATTEMPTS", 2)
    monkeypatch.setattr("spearlet.api.callbacks.FIRST_DELAY_S", 0.05)
    callbacks = Callbacks(["127.0.0.1"], timeout_s=1.0)
    started = time.monotonic()
    try:
        await asyncio.wait_for(callbacks._deliver(receiver.url, record(receiver.url)), 20)
    finally:
        await callbacks.close()
    assert time.monotonic() - started < 4  # two attempts of 1 s each and a pause
    deadline = time.monotonic() + 5
    while len(receiver.open_s) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(receiver.open_s) == 2 and all(s < 2.0 for s in receiver.open_s)
