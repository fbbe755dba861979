"""ArtifactFetcher: local paths, file:// and http:// locations, sha256 checksums, the digest-named cache."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from spearlet.artifacts.cache import ArtifactCache
from spearlet.artifacts.fetch import ArtifactFetcher, parse_checksum
from spearlet.core.errors import InvalidArgument
from tests.artifacts.conftest import FileServer, source

pytestmark = pytest.mark.timeout(60)

CONTENT = b"#!/bin/sh\necho hello\n"
DIGEST = hashlib.sha256(CONTENT).hexdigest()
OTHER_DIGEST = hashlib.sha256(b"something else").hexdigest()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def fetcher(cache_dir: Path) -> ArtifactFetcher:
    return ArtifactFetcher(ArtifactCache(cache_dir))


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return source(tmp_path, CONTENT)


def cache_entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


# Local files


async def test_a_local_file_is_staged_by_digest_keeping_its_name_and_mode(
    fetcher: ArtifactFetcher, artifact: Path, cache_dir: Path
) -> None:
    artifact.chmod(0o750)
    got = await fetcher.fetch(str(artifact))
    assert got.path == cache_dir / DIGEST / "tool.sh"
    assert got.digest == DIGEST and got.path.read_bytes() == CONTENT
    assert got.path.stat().st_mode & 0o777 == 0o550  # never more than the source, never writable
    assert cache_entries(cache_dir) == [DIGEST]
    artifact.write_bytes(b"changed later")  # what runs is what was verified
    assert got.path.read_bytes() == CONTENT


async def test_file_url_is_used_in_place_with_percent_decoding(fetcher: ArtifactFetcher, tmp_path: Path) -> None:
    path = tmp_path / "my tool.sh"
    path.write_bytes(CONTENT)
    url = path.as_uri()
    assert "%20" in url
    got = await fetcher.fetch(url)
    assert got.path.name == "my tool.sh" and got.path.read_bytes() == CONTENT
    assert got.digest == DIGEST


async def test_relative_path_is_resolved_against_the_working_directory(
    fetcher: ArtifactFetcher, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(artifact.parent.parent)
    got = await fetcher.fetch("src/tool.sh")
    assert got.path.is_absolute()
    assert got.path.read_bytes() == CONTENT
    assert got.digest == DIGEST


async def test_home_relative_path_is_expanded(
    fetcher: ArtifactFetcher, artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(artifact.parent))
    got = await fetcher.fetch("~/tool.sh")
    assert got.digest == DIGEST


@pytest.mark.parametrize(
    "checksum",
    [f"sha256:{DIGEST}", DIGEST, DIGEST.upper(), f"sha256:{DIGEST.upper()}", f"  sha256:{DIGEST}\n"],
    ids=["prefixed", "bare", "upper", "prefixed-upper", "padded"],
)
async def test_matching_checksum_is_accepted(fetcher: ArtifactFetcher, artifact: Path, checksum: str) -> None:
    got = await fetcher.fetch(str(artifact), checksum)
    assert got.digest == DIGEST
    assert parse_checksum(checksum) == DIGEST


def test_empty_checksum_means_not_given() -> None:
    assert parse_checksum("") == ""


async def test_checksum_mismatch_names_both_digests(fetcher: ArtifactFetcher, artifact: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await fetcher.fetch(str(artifact), f"sha256:{OTHER_DIGEST}")
    message = str(caught.value)
    assert OTHER_DIGEST in message
    assert DIGEST in message
    assert "mismatch" in message


@pytest.mark.parametrize(
    "checksum",
    [
        "md5:" + hashlib.md5(CONTENT).hexdigest(),
        "sha1:" + DIGEST,
        "sha512:" + DIGEST,
        "sha256:" + DIGEST[:63],
        DIGEST[:40],
        DIGEST + "0",
        "sha256:" + "g" * 64,
        "sha256:sha256:" + DIGEST,
        "sha256:",
    ],
    ids=["md5", "sha1-label", "sha512-label", "short", "short-bare", "long", "not-hex", "double-prefix", "no-digest"],
)
async def test_malformed_checksum_is_refused(fetcher: ArtifactFetcher, artifact: Path, checksum: str) -> None:
    with pytest.raises(InvalidArgument, match="checksum"):
        parse_checksum(checksum)
    with pytest.raises(InvalidArgument, match="checksum"):
        await fetcher.fetch(str(artifact), checksum)


async def test_missing_file_is_refused(fetcher: ArtifactFetcher, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        await fetcher.fetch(str(tmp_path / "nope.sh"))
    with pytest.raises(InvalidArgument, match="does not exist"):
        await fetcher.fetch((tmp_path / "nope.sh").as_uri())


async def test_empty_location_is_refused(fetcher: ArtifactFetcher) -> None:
    with pytest.raises(InvalidArgument, match="location is required"):
        await fetcher.fetch("")


@pytest.mark.parametrize("location", ["ftp://example.com/tool.sh", "s3://bucket/tool.sh"])
async def test_unsupported_scheme_is_refused(fetcher: ArtifactFetcher, location: str) -> None:
    scheme = location.split(":", 1)[0]
    with pytest.raises(InvalidArgument, match=f"scheme '{scheme}' is not allowed"):
        await fetcher.fetch(location)


async def test_only_the_configured_schemes_are_allowed(tmp_path: Path) -> None:
    local_only = ArtifactFetcher(ArtifactCache(tmp_path / "cache"), schemes=["file"])
    with pytest.raises(InvalidArgument, match="scheme 'https' is not allowed"):
        await local_only.fetch("https://example.com/tool.sh")
    no_local = ArtifactFetcher(ArtifactCache(tmp_path / "cache"), schemes=["https"])
    (tmp_path / "x.sh").write_text("#!/bin/sh\n")
    with pytest.raises(InvalidArgument, match="scheme 'file' is not allowed"):
        await no_local.fetch(str(tmp_path / "x.sh"))


async def test_local_artifacts_must_lie_in_the_allowed_directories(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.sh").write_text("#!/bin/sh\n")
    outside = tmp_path / "secret.sh"
    outside.write_text("#!/bin/sh\n")
    (allowed / "link.sh").symlink_to(outside)
    fetcher = ArtifactFetcher(ArtifactCache(tmp_path / "cache"), local_dirs=[allowed])
    assert (await fetcher.fetch(str(allowed / "ok.sh"))).path.name == "ok.sh"
    for sneaky in (str(allowed / ".." / "secret.sh"), str(allowed / "link.sh"), f"file://{outside}", "/etc/passwd"):
        with pytest.raises(InvalidArgument, match="outside the directories"):
            await fetcher.fetch(sneaky)


async def test_a_required_checksum_must_be_given(tmp_path: Path) -> None:
    path = tmp_path / "t.sh"
    path.write_text("#!/bin/sh\n")
    fetcher = ArtifactFetcher(ArtifactCache(tmp_path / "cache"), require_checksum=True)
    with pytest.raises(InvalidArgument, match=r"requires artifact_spec\.checksum"):
        await fetcher.fetch(str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (await fetcher.fetch(str(path), f"sha256:{digest}")).digest == digest


async def test_a_directory_is_staged_whole_under_a_digest_of_its_content(
    fetcher: ArtifactFetcher, tmp_path: Path
) -> None:
    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (package / "sub" / "m.py").write_text("y = 2\n")
    got = await fetcher.fetch(str(package))
    assert got.path.name == "package" and (got.path / "sub" / "m.py").read_text() == "y = 2\n"
    assert len(got.digest) == 64
    assert (await fetcher.fetch(str(package))).digest == got.digest
    (package / "sub" / "m.py").write_text("y = 3\n")
    assert (await fetcher.fetch(str(package))).digest != got.digest


async def test_a_directory_with_a_link_is_refused(fetcher: ArtifactFetcher, tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    (package / "shadow").symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument, match="link or special file"):
        await fetcher.fetch(str(package))


async def test_directory_with_checksum_is_refused(fetcher: ArtifactFetcher, tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    with pytest.raises(InvalidArgument, match="is a directory"):
        await fetcher.fetch(str(package), DIGEST)


# HTTP downloads


async def test_download_lands_in_cache_named_by_digest_and_executable(
    fetcher: ArtifactFetcher, server: FileServer, cache_dir: Path
) -> None:
    url = server.publish("tool.sh", CONTENT)
    got = await fetcher.fetch(url, f"sha256:{DIGEST}")
    assert got.path == cache_dir / DIGEST / "tool.sh"
    assert got.digest == DIGEST
    assert got.path.read_bytes() == CONTENT
    assert got.path.stat().st_mode & 0o777 == 0o555  # runnable, never writable
    assert cache_entries(cache_dir) == [DIGEST]
    assert server.requests == ["/tool.sh"]


async def test_download_without_checksum_is_cached_by_its_digest(
    fetcher: ArtifactFetcher, server: FileServer, cache_dir: Path
) -> None:
    got = await fetcher.fetch(server.publish("tool.sh", CONTENT))
    assert got.path == cache_dir / DIGEST / "tool.sh"
    assert got.digest == DIGEST
    assert cache_entries(cache_dir) == [DIGEST]


async def test_second_fetch_with_checksum_reuses_the_cache_without_a_request(
    fetcher: ArtifactFetcher, server: FileServer
) -> None:
    url = server.publish("tool.sh", CONTENT)
    first = await fetcher.fetch(url, DIGEST)
    assert len(server.requests) == 1
    (server.root / "tool.sh").unlink()  # a request now would fail with 404

    again = await fetcher.fetch(url, f"sha256:{DIGEST}")
    assert again == first
    assert len(server.requests) == 1


async def test_download_checksum_mismatch_is_refused_and_caches_nothing(
    fetcher: ArtifactFetcher, server: FileServer, cache_dir: Path
) -> None:
    url = server.publish("tool.sh", CONTENT)
    with pytest.raises(InvalidArgument) as caught:
        await fetcher.fetch(url, OTHER_DIGEST)
    assert OTHER_DIGEST in str(caught.value) and DIGEST in str(caught.value)
    assert cache_entries(cache_dir) == []


async def test_http_404_is_refused_with_the_status(
    fetcher: ArtifactFetcher, server: FileServer, cache_dir: Path
) -> None:
    with pytest.raises(InvalidArgument, match="HTTP 404"):
        await fetcher.fetch(server.url("missing.sh"))
    assert server.requests == ["/missing.sh"]
    assert cache_entries(cache_dir) == []


async def test_download_larger_than_max_bytes_is_refused_and_leaves_no_temp_file(
    server: FileServer, cache_dir: Path
) -> None:
    fetcher = ArtifactFetcher(ArtifactCache(cache_dir), max_bytes=1000)
    url = server.publish("big.bin", b"x" * 300_000)
    with pytest.raises(InvalidArgument, match="larger than 1000 bytes"):
        await fetcher.fetch(url)
    assert cache_entries(cache_dir) == []


async def test_download_of_exactly_max_bytes_is_accepted(server: FileServer, cache_dir: Path) -> None:
    content = b"y" * 1000
    fetcher = ArtifactFetcher(ArtifactCache(cache_dir), max_bytes=1000)
    got = await fetcher.fetch(server.publish("edge.bin", content))
    assert got.path.read_bytes() == content


async def test_unreachable_server_is_refused(fetcher: ArtifactFetcher, cache_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(InvalidArgument, match="failed"):
        await fetcher.fetch(f"http://127.0.0.1:{port}/tool.sh")
    assert cache_entries(cache_dir) == []


@pytest.mark.parametrize("device", ["/dev/zero", "file:///dev/urandom", "/proc/self/fd/0"])
async def test_devices_and_special_files_are_refused(fetcher: ArtifactFetcher, device: str) -> None:
    with pytest.raises(InvalidArgument, match=r"not a regular file|does not exist"):
        await fetcher.fetch(device)


async def test_a_local_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(InvalidArgument, match="larger than 1024 bytes"):
        await ArtifactFetcher(ArtifactCache(tmp_path / "cache"), max_bytes=1024).fetch(str(big))


@pytest.mark.parametrize("location", ["~no-such-user-here/tool.sh", "~no-such-user-here"])
async def test_an_unknown_home_directory_is_refused(fetcher: ArtifactFetcher, location: str) -> None:
    with pytest.raises(InvalidArgument, match="home directory"):
        await fetcher.fetch(location)


async def test_a_symlink_loop_is_refused(fetcher: ArtifactFetcher, tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(InvalidArgument):
        await fetcher.fetch(str(tmp_path / "a"))
