"""One live node per data directory, and what tells a second one which node that is.

A node holds an exclusive advisory lock (flock) on `data_dir/lock` from before it touches anything
in the directory until it ends. The kernel drops the lock when the process ends, however it ends: a
node killed with SIGKILL never blocks its own restart, and a lock that can be taken proves that the
previous run is dead (only then may what it left be cleaned up). The live node writes its pid and
addresses to `data_dir/running.json`, so that a node refused the lock can say whom it found.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from spearlet.core.errors import StartError

LOCK = "lock"
RUNNING = "running.json"


class DataDirInUse(StartError):
    pass


class DataDirLock:
    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """The lock of `data_dir`, or DataDirInUse naming the live node that holds it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(
                f"data dir {data_dir} is in use by a live node ({describe(read_running(data_dir))}): "
                "stop that node first, or give this one another --data-dir"
            ) from None
        lock = cls(data_dir, fd)
        lock.announce(pid=os.getpid())
        return lock

    def announce(self, **fields: Any) -> None:
        """Write what a refused node should say about this one (replacing what was there)."""
        path = self.data_dir / RUNNING
        tmp = path.with_name(f".{RUNNING}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(fields))
            tmp.replace(path)
        except OSError:  # a full disk: only the refusal message of a second node is poorer for it
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.data_dir / RUNNING).unlink()
        os.close(self._fd)  # releases the lock
        self._fd = None


def read_running(data_dir: Path) -> dict[str, Any]:
    try:
        found = json.loads((data_dir / RUNNING).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def describe(running: dict[str, Any]) -> str:
    pid = running.get("pid")
    if pid is None:
        return "pid unknown"
    if "grpc" not in running:
        return f"pid {pid}, still starting"
    return f"pid {pid}, node id {running.get('node_id', '?')}, gRPC {running['grpc']}, HTTP {running.get('http', '?')}"
