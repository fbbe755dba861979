"""The benchmark suite's process starting: what it waits for comes from what is started, and every
wait ends with an error naming what did not come."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.common import start, wait_until


def _script(directory: Path, body: str) -> list[str]:
    directory.mkdir(parents=True)
    path = directory / "server.py"
    path.write_text(body)
    return [sys.executable, str(path)]


GRPC_ONLY = "import time\nprint('gRPC  127.0.0.1:5', flush=True)\ntime.sleep(60)\n"


def test_a_grpc_only_server_under_a_path_named_spearlet_is_ready_at_its_grpc_line(tmp_path: Path) -> None:
    server = start(_script(tmp_path / "spearlet" / "spearlet-bench", GRPC_ONLY))
    try:
        assert (server.target, server.http_url) == ("127.0.0.1:5", "")
    finally:
        server.stop()


def test_a_server_started_with_http_is_ready_only_once_both_lines_came(tmp_path: Path) -> None:
    body = "import time\nprint('gRPC  127.0.0.1:5', flush=True)\ntime.sleep(0.2)\nprint('HTTP  http://127.0.0.1:6', flush=True)\ntime.sleep(60)\n"
    server = start(_script(tmp_path / "node", body), http=True)
    try:
        assert (server.target, server.http_url) == ("127.0.0.1:5", "http://127.0.0.1:6")
    finally:
        server.stop()


def test_a_server_that_never_prints_its_http_line_fails_the_start_naming_the_command(tmp_path: Path) -> None:
    command = _script(tmp_path / "silent", GRPC_ONLY)
    with pytest.raises(TimeoutError, match=r"printed no gRPC and HTTP line within 0\.5 s") as raised:
        start(command, http=True, timeout=0.5)
    assert command[1] in str(raised.value)


def test_a_server_that_exits_before_it_is_ready_fails_the_start_with_its_exit_status(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited before it was ready: exit status 3"):
        start(_script(tmp_path / "dies", "raise SystemExit(3)\n"))


async def test_a_wait_that_never_comes_true_raises_naming_what_it_waited_for() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match=r"waited 0\.1 s for the node to drain"):
        await wait_until(never, "the node to drain", timeout=0.1)
