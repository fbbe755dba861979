"""Cluster mode: artifact bytes in Redis by their sha256, so that every node can run a task that
another registered from its own disk.

A blob is `F` and a file's bytes, or `T` and a package directory's entries (kind, relative path,
bytes) in the order the directory digest is computed. A node that needs an artifact it does not
hold takes the blob, checks it against the task's digest, and keeps its own copy in its cache; it
never uses a path another node recorded. Each blob keeps the set of tasks that use it, and goes
when the last one does.
"""

from __future__ import annotations

import hashlib
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from spearlet.artifacts.local import tree_digest
from spearlet.core.errors import FailedPrecondition

PREFIX = "spearlet:blob:"
FILE, TREE = b"F", b"T"
_RECORD = struct.Struct(">BHQ")  # kind, path length, content length
_DIR, _PLAIN, _EXECUTABLE = 0, 1, 2

_RELEASE = """
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisBlobs:
    def __init__(self, url: str, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.redis: Any = aioredis.from_url(url)  # bytes in, bytes out
        self._release = self.redis.register_script(_RELEASE)

    async def close(self) -> None:
        await self.redis.aclose()

    async def put(self, digest: str, entry: Path, task_id: str) -> None:
        """Store the cache entry `entry` as the blob `digest`, used by `task_id`."""
        data = pack(entry)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(PREFIX + digest, data, nx=True)
            pipe.sadd(f"{PREFIX}{digest}:tasks", task_id)
            await pipe.execute()

    async def release(self, digest: str, task_id: str) -> None:
        """`task_id` no longer uses the blob `digest`; the last user's release removes it."""
        await self._release(keys=[PREFIX + digest, f"{PREFIX}{digest}:tasks"], args=[task_id])

    async def get(self, digest: str) -> bytes:
        key = PREFIX + digest
        size = int(await self.redis.strlen(key))
        if size == 0:
            raise FailedPrecondition(
                f"the artifact sha256:{digest} is not in the cluster's store: register the task again"
            )
        if size > self.max_bytes + (1 << 20):
            raise FailedPrecondition(f"the artifact sha256:{digest} in the cluster's store is larger than allowed")
        data: bytes = await self.redis.get(key)
        return data


def pack(entry: Path) -> bytes:
    """A cache entry (ours, sealed) as a blob."""
    if not entry.is_dir():
        return FILE + entry.read_bytes()
    parts = [TREE]
    for path in sorted_walk(entry):
        relative = path.relative_to(entry).as_posix().encode()
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode):
            parts += [_RECORD.pack(_DIR, len(relative), 0), relative]
        else:
            content = path.read_bytes()
            kind = _EXECUTABLE if info.st_mode & 0o100 else _PLAIN
            parts += [_RECORD.pack(kind, len(relative), len(content)), relative, content]
    return b"".join(parts)


def sorted_walk(root: Path) -> Iterator[Path]:
    """Depth first, each directory's entries by name: the order of local.copy_tree."""
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from sorted_walk(child)


def unpack(data: bytes, digest: str, target: Path, seal: Callable[[Path, int, int], None]) -> None:
    """Write a blob to the new path `target` (a file, or a directory it creates), checking it
    against `digest`: a mismatch or a malformed blob is refused and leaves what was written for the
    caller's staging directory to remove."""
    bad = FailedPrecondition(f"the artifact sha256:{digest} in the cluster's store is damaged")
    kind, body = data[:1], memoryview(data)[1:]
    if kind == FILE:
        if hashlib.sha256(body).hexdigest() != digest:
            raise bad
        target.write_bytes(body)
        seal(target, 0o755, 0o5)
        return
    if kind != TREE:
        raise bad
    target.mkdir(mode=0o700)
    files: list[tuple[str, str]] = []
    directories: list[Path] = []
    offset = 0
    while offset < len(body):
        if offset + _RECORD.size > len(body):
            raise bad
        entry_kind, path_length, content_length = _RECORD.unpack_from(body, offset)
        offset += _RECORD.size
        end = offset + path_length + content_length
        if end > len(body):
            raise bad
        relative = bytes(body[offset : offset + path_length]).decode("utf-8", errors="replace")
        content = body[offset + path_length : end]
        offset = end
        parts = relative.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts) or not (target / relative).parent.is_dir():
            raise bad
        path = target / relative
        if entry_kind == _DIR:
            path.mkdir(mode=0o700)
            directories.append(path)
        elif entry_kind in (_PLAIN, _EXECUTABLE):
            with path.open("xb") as out:
                out.write(content)
            files.append((relative, hashlib.sha256(content).hexdigest()))
            seal(path, 0o755 if entry_kind == _EXECUTABLE else 0o644, 0o5)
        else:
            raise bad
    if tree_digest(files) != digest:
        raise bad
    for directory in [*reversed(directories), target]:  # children first: sealing takes away write
        seal(directory, 0o755, 0o5)
