"""A real HTTP server for the artifact tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


@dataclass
class FileServer:
    """A real HTTP server on 127.0.0.1 serving `root`; `requests` lists every GET path it received."""

    base_url: str
    root: Path
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def publish(self, name: str, content: bytes) -> str:
        (self.root / name).write_bytes(content)
        return self.url(name)


def source(tmp_path: Path, content: bytes) -> Path:
    """`content` as `src/tool.sh` under `tmp_path`: a local artifact to fetch."""
    path = tmp_path / "src" / "tool.sh"
    path.parent.mkdir()
    path.write_bytes(content)
    return path


def serve(root: Path, host: str = "127.0.0.1", redirects: dict[str, str] | None = None) -> tuple[FileServer, Any]:
    """A server of `root` on `host`; `redirects` maps paths to the Location a 302 answers them with.
    Returns it and its (running) httpd, to shut down."""
    requests: list[str] = []
    moved = redirects or {}

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path in moved:
                self.send_response(302)
                self.send_header("Location", moved[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that stops reading (the size limit) breaks the pipe: expected

    httpd = Server((host, 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return FileServer(f"http://{host}:{httpd.server_address[1]}", root, requests), httpd


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    found, httpd = serve(root)
    try:
        yield found
    finally:
        httpd.shutdown()
        httpd.server_close()
