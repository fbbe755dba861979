"""Turn an artifact `location` into a verified entry of the node's cache, within a policy.

A local path or `file://` URL is read through descriptors (artifacts.local), an `http(s)://` URL
downloaded from an allowed host (artifacts.download); either way the bytes are hashed as they are
written to a staging directory, checked against the checksum when one is given, sealed, and renamed
into the cache under their digest (artifacts.cache), so the code that runs is the code that was
verified, whatever later happens to the original. In a cluster, a locally sourced artifact is also
put in Redis by its digest (artifacts.blobs), and a node that lacks a task's artifact fetches its
own copy from there, or from the task's URL, checked against the digest the task was registered with.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from spearlet.artifacts.blobs import RedisBlobs, unpack
from spearlet.artifacts.cache import ArtifactCache, check_name
from spearlet.artifacts.download import download
from spearlet.artifacts.local import Budget, Reader, copy_file, copy_tree, open_local
from spearlet.core.errors import FailedPrecondition, InvalidArgument, SpearletError
from spearlet.core.models import Task
from spearlet.core.net import HostRules, is_remote, parse_http_url

_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Artifact:
    path: Path  # the cache entry
    digest: str  # sha256, hex (of the file, or of a directory's listing)
    local: bool = False  # read from this node's disk (in a cluster, shared through Redis)


def parse_checksum(checksum: str) -> str:
    """`sha256:<hex>` or bare hex to the hex digest; empty means "not given"."""
    if not checksum:
        return ""
    algorithm, _, digest = checksum.strip().rpartition(":")
    if algorithm not in ("", "sha256") or not _HEX.match(digest.lower()):
        raise InvalidArgument(f"checksum {checksum[:80]!r} is invalid: expected 'sha256:<64 hex digits>'")
    return digest.lower()


def _verify(expected: str, actual: str, location: str) -> None:
    if expected and expected != actual:
        raise InvalidArgument(
            f"checksum mismatch for {location[:200]!r}: expected sha256:{expected}, got sha256:{actual}"
        )


class ArtifactFetcher:
    """Fetches within a policy: the URL schemes allowed ("file" covers plain paths), the local
    directories allowed (none listed: any), the hosts downloads may reach, whether a checksum is
    required, and whose access a caller's local artifact must have (`reader`)."""

    def __init__(
        self,
        cache: ArtifactCache,
        max_bytes: int = 256 << 20,
        timeout_s: float = 60.0,
        schemes: Sequence[str] = ("file", "http", "https"),
        local_dirs: Sequence[Path] = (),
        require_checksum: bool = False,
        hosts: HostRules | None = None,
        reader: Reader | None = None,
        blobs: RedisBlobs | None = None,
    ) -> None:
        self.cache = cache
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.schemes = tuple(schemes)
        self.local_dirs = tuple(d.resolve() for d in local_dirs)
        self.require_checksum = require_checksum
        self.hosts = hosts or HostRules(["*"])
        self.reader = reader
        self.blobs = blobs

    async def fetch(self, location: str, checksum: str = "", for_caller: bool = True) -> Artifact:
        """The verified cache entry of `location`. `for_caller`: on behalf of an API caller, whose
        local artifacts the function user must be able to read (tasks files of the node's own
        configuration are the operator's)."""
        expected = parse_checksum(checksum)
        if not location:
            raise InvalidArgument("artifact_spec.location is required")
        if len(location) > 4096 or any(ord(c) < 32 for c in location):
            raise InvalidArgument("artifact_spec.location must be at most 4096 characters, without control characters")
        if self.require_checksum and not expected:
            raise InvalidArgument("this node requires artifact_spec.checksum ('sha256:<hex>') for every artifact")
        parsed = urlparse(location)
        scheme = parsed.scheme if len(parsed.scheme) > 1 else "file"  # a plain path (or a drive letter)
        if scheme not in self.schemes:
            raise InvalidArgument(
                f"artifact location {location[:200]!r}: scheme {scheme!r} is not allowed on this node "
                f"(allowed: {', '.join(self.schemes)})"
            )
        if scheme in ("http", "https"):
            web = tuple(s for s in self.schemes if s in ("http", "https"))
            return await self._download(parse_http_url(location, "artifact location", web), expected)
        if scheme != "file":
            raise InvalidArgument(f"artifact location {location[:200]!r}: unsupported scheme {scheme!r}")
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise InvalidArgument(f"artifact location {location[:200]!r}: a file:// URL names no other host")
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(location)
        try:
            path = Path.cwd() / path.expanduser()
        except RuntimeError as exc:  # `~someone` who does not exist
            raise InvalidArgument(f"artifact location {location[:200]!r}: {exc}") from exc
        return await asyncio.to_thread(self._local, path, location, expected, for_caller)

    def _budget(self, local: bool, location: str) -> Budget:
        if local and self.blobs is not None and self.blobs.max_bytes < self.max_bytes:
            limit = self.blobs.max_bytes
            message = (
                f"artifact {location[:200]!r} is larger than {limit} bytes, the most a cluster shares through "
                "its store (artifact_blob_limit_mb): serve it from an http(s) location instead"
            )
        else:
            limit, message = self.max_bytes, f"artifact {location[:200]!r} is larger than {self.max_bytes} bytes"
        return Budget(limit, self.timeout_s, message)

    def _local(self, path: Path, location: str, expected: str, for_caller: bool) -> Artifact:
        budget = self._budget(True, location)
        opened = open_local(path, location, self.reader, for_caller, self.local_dirs)
        try:
            name = check_name(opened.path.name, location)
            with self.cache.staging() as staging:
                built = staging / name
                if opened.is_dir:
                    if expected:
                        raise InvalidArgument(
                            f"artifact location {location[:200]!r} is a directory: a checksum needs a file"
                        )
                    actual = copy_tree(opened, built, budget, self.reader, for_caller, self.cache.seal, location[:200])
                else:
                    actual = copy_file(opened, built, budget)
                    _verify(expected, actual, location)
                    self.cache.seal(built, opened.info.st_mode, opened.function_bits)
                return Artifact(self.cache.commit(built, actual), actual, local=True)
        finally:
            os.close(opened.fd)

    async def _download(self, url: httpx.URL, expected: str) -> Artifact:
        location = str(url)
        name = check_name(Path(unquote(url.path)).name or "artifact", location)
        if expected:
            cached = self.cache.entry(expected, name)
            if await asyncio.to_thread(self.cache.trusted, cached):
                return Artifact(cached, expected)
        with self.cache.staging() as staging:
            built = staging / name
            actual = await download(url, built, self.hosts, self._budget(False, location), self.schemes)
            _verify(expected, actual, location)
            self.cache.seal(built, 0o755, 0o5)
            return Artifact(await asyncio.to_thread(self.cache.commit, built, actual), actual)

    # Cluster mode

    async def share(self, artifact: Artifact, task_id: str) -> None:
        """Make a locally sourced artifact reachable by every node of the cluster."""
        if self.blobs is not None and artifact.local:
            await self.blobs.put(artifact.digest, artifact.path, task_id)

    async def unshare(self, digest: str, task_id: str) -> None:
        if self.blobs is not None and digest:
            await self.blobs.release(digest, task_id)

    async def materialize(self, task: Task) -> Path:
        """This node's verified copy of a stored task's artifact: from the cache, else fetched
        again and checked against the task's digest. Never a path from the task's record (in a
        cluster another node wrote it), only its last component, the artifact's name."""
        try:
            name = check_name(Path(task.local_path).name, task.location)
            entry = self.cache.entry(task.digest, name)
            if not _HEX.match(task.digest):
                raise InvalidArgument(f"the task's digest {task.digest[:80]!r} is not a sha256")
            if await asyncio.to_thread(self.cache.trusted, entry):
                return entry
            if is_remote(task.location):
                return (await self.fetch(task.location, f"sha256:{task.digest}")).path
            if self.blobs is not None:
                data = await self.blobs.get(task.digest)
                return await asyncio.to_thread(self._unpack, data, task.digest, name)
            artifact = await self.fetch(task.location, "")
        except SpearletError as exc:
            raise FailedPrecondition(f"the artifact of task {task.task_id!r} is not available here: {exc}") from None
        if artifact.digest != task.digest:
            raise FailedPrecondition(
                f"the artifact of task {task.task_id!r} changed at {task.location[:200]!r} since it was "
                "registered: register the task again"
            )
        return artifact.path

    def _unpack(self, data: bytes, digest: str, name: str) -> Path:
        with self.cache.staging() as staging:
            unpack(data, digest, staging / name, self.cache.seal)
            return self.cache.commit(staging / name, digest)
