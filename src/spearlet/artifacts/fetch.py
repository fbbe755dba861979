"""Turn an artifact `location` into a verified file (or package directory) in the node's store.

A local path, `file://` URL or `http(s)://` URL is verified and copied to
`cache_dir/<digest>-<mode>/<name>`, so the code that runs is the code that was verified, whatever
later happens to the original. A later registration of the same content and mode (or a download
naming the same checksum) reuses the copy; a file made executable since gets an executable one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from spearlet.core.errors import InvalidArgument

_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Artifact:
    path: Path
    digest: str  # sha256, hex


def parse_checksum(checksum: str) -> str:
    """`sha256:<hex>` or bare hex to the hex digest; empty means "not given"."""
    if not checksum:
        return ""
    algorithm, _, digest = checksum.strip().rpartition(":")
    if algorithm not in ("", "sha256") or not _HEX.match(digest.lower()):
        raise InvalidArgument(f"checksum {checksum[:80]!r} is invalid: expected 'sha256:<64 hex digits>'")
    return digest.lower()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(expected: str, actual: str, location: str) -> None:
    if expected and expected != actual:
        raise InvalidArgument(f"checksum mismatch for {location!r}: expected sha256:{expected}, got sha256:{actual}")


class ArtifactFetcher:
    """Fetches within a policy: the URL schemes allowed ("file" covers plain paths), the local
    directories allowed (none listed: any), and whether a checksum is required."""

    def __init__(
        self,
        cache_dir: Path,
        max_bytes: int = 256 << 20,
        download_timeout_s: float = 60.0,
        schemes: Sequence[str] = ("file", "http", "https"),
        local_dirs: Sequence[Path] = (),
        require_checksum: bool = False,
    ) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self.download_timeout_s = download_timeout_s
        self.schemes = tuple(schemes)
        self.local_dirs = tuple(d.resolve() for d in local_dirs)
        self.require_checksum = require_checksum

    async def fetch(self, location: str, checksum: str = "") -> Artifact:
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
            return await self._download(location, expected)
        if scheme != "file":
            raise InvalidArgument(f"artifact location {location[:200]!r}: unsupported scheme {scheme!r}")
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(location)
        try:
            path = path.expanduser()
        except RuntimeError as exc:  # `~someone` who does not exist
            raise InvalidArgument(f"artifact location {location[:200]!r}: {exc}") from exc
        return await asyncio.to_thread(self._local, path, expected, location)

    def _local(self, path: Path, expected: str, location: str) -> Artifact:
        try:
            path = path.resolve()  # symlinks and `..` resolved before the directory check
        except (OSError, RuntimeError) as exc:  # a symlink loop, say
            raise InvalidArgument(f"artifact location {location!r} cannot be resolved: {exc}") from exc
        if self.local_dirs and not any(path.is_relative_to(d) for d in self.local_dirs):
            raise InvalidArgument(
                f"artifact location {location!r} is outside the directories this node serves artifacts from"
            )
        if not path.exists():
            raise InvalidArgument(f"artifact location {location!r} does not exist")
        if path.is_dir():
            if expected:
                raise InvalidArgument(f"artifact location {location!r} is a directory: a checksum needs a file")
            return self._stage_tree(path, location)
        if not path.is_file():
            raise InvalidArgument(f"artifact location {location!r} is not a regular file or a directory")
        if path.stat().st_size > self.max_bytes:
            raise InvalidArgument(f"artifact {location!r} is larger than {self.max_bytes} bytes")
        actual = _sha256_file(path)
        _verify(expected, actual, location)
        return Artifact(self._stage_file(path, actual, path.name, os.access(path, os.X_OK)), actual)

    def _file_copy(self, digest: str, name: str, executable: bool) -> tuple[Path, int]:
        """Where the copy of a file lives, and its mode. The mode is part of the key: a file that was
        registered before its `chmod +x` gets an executable copy of its own when registered again
        (and a copy in use is never changed under a task)."""
        mode = 0o755 if executable else 0o644
        return self.cache_dir / f"{digest}-{mode:o}" / name, mode

    def _stage_file(self, source: Path, digest: str, name: str, executable: bool) -> Path:
        """Copy a verified file into the cache: what runs is what was verified, and it is readable by
        the unprivileged function user wherever the original lived."""
        target, mode = self._file_copy(digest, name, executable)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            self._open_up(target.parent)
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            tmp.chmod(mode)
            tmp.replace(target)
        return target

    def _stage_tree(self, source: Path, location: str) -> Artifact:
        """A package directory, copied by content digest; links and special files are refused so
        that nothing outside it is copied in."""
        files: list[tuple[Path, str]] = []
        total = 0
        for item in sorted(source.rglob("*")):
            relative = item.relative_to(source)
            if "__pycache__" in relative.parts:
                continue
            if item.is_symlink() or not (item.is_file() or item.is_dir()):
                raise InvalidArgument(f"artifact directory {location!r} holds a link or special file: {relative}")
            if item.is_file():
                total += item.stat().st_size
                if total > self.max_bytes:
                    raise InvalidArgument(f"artifact directory {location!r} is larger than {self.max_bytes} bytes")
                files.append((relative, _sha256_file(item)))
        digest = hashlib.sha256("\n".join(f"{r}\0{d}" for r, d in files).encode()).hexdigest()
        target = self.cache_dir / digest / source.name
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            self._open_up(target.parent)
            tmp = target.with_name(f".{source.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("__pycache__"))
            for item in [tmp, *tmp.rglob("*")]:
                item.chmod(0o755 if item.is_dir() else 0o644)
            tmp.replace(target)
        return Artifact(target, digest)

    def _open_up(self, directory: Path) -> None:
        for d in (self.cache_dir, directory):
            d.chmod(0o755)

    async def _download(self, url: str, expected: str) -> Artifact:
        name = Path(unquote(urlparse(url).path)).name or "artifact"
        if expected:
            cached, _ = self._file_copy(expected, name, executable=True)
            if cached.is_file():
                return Artifact(cached, expected)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.cache_dir, prefix=".download-")
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async with (
                    httpx.AsyncClient(timeout=self.download_timeout_s, follow_redirects=True) as client,
                    client.stream("GET", url) as response,
                ):
                    if response.status_code != 200:
                        raise InvalidArgument(f"downloading {url!r} failed: HTTP {response.status_code}")
                    async for chunk in response.aiter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise InvalidArgument(f"artifact {url!r} is larger than {self.max_bytes} bytes")
                        digest.update(chunk)
                        out.write(chunk)
            actual = digest.hexdigest()
            _verify(expected, actual, url)
            return Artifact(self._stage_file(tmp, actual, name, executable=True), actual)
        except httpx.HTTPError as exc:
            raise InvalidArgument(f"downloading {url!r} failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
