"""Starting a node: a port in use is one clear line and exit code 1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import serve_refused

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("flag", "name"), [("--grpc-port", "gRPC"), ("--http-port", "HTTP")])
def test_a_port_in_use_is_one_line_naming_the_port_and_the_setting(
    tmp_path: Path, taken_port: int, flag: str, name: str
) -> None:
    result = serve_refused("--data-dir", str(tmp_path / "data"), "--tasks", "none", flag, str(taken_port))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"cannot start the node: {name} port {taken_port} on 127.0.0.1 is in use: "
        f"choose another with {flag} (setting {flag[2:].replace('-', '_')})"
    ]
