"""A hostile function in the sandbox, on a node run as root and on one run as an ordinary user.

Each test runs against both nodes (the second runs as the account `spearlet-test`, created when the
tests run as root, else as the user running them). Each node holds a token file, a settings file and
a secret in its environment, which no function may reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.helpers import (
    NodeProcess,
    as_user,
    environ_of,
    existing,
    script,
    shared_dir,
    start_node,
    unpack,
    unprivileged_user,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = "token-the-functions-must-not-see"
NODE_SECRET = "environment-secret-of-the-node"
CONFIG_SECRET = "settings-file-secret"
VICTIM_KEY = "api-key-of-another-function"

SNOOP = """#!/usr/bin/env python3
# Everything a function can learn of the node and of other functions' processes, and then it kills
# every process it can see.
import json, os, signal
me = os.getpid()
found = {"pids": [], "cmdlines": [], "environs": [], "files": {}, "killed": []}
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    found["pids"].append(pid)
    for kind in ("cmdline", "environ"):
        try:
            with open(f"/proc/{pid}/{kind}", "rb") as f:
                found[kind + "s"].append(f.read().replace(b"\\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    try:
        if pid not in (me, 1):  # 1: its sandbox's init, the same user's without capabilities
            with open(f"/proc/{pid}/mem", "rb") as f:
                found["files"][f"mem of {pid}"] = "opened"
    except OSError:
        pass
# Attaching a debugger: to what it sees, and to the node's and the other function's pids.
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
found["ptrace"] = {}
for pid in [p for p in found["pids"] if p not in (me, 1)] + [int(p) for p in os.environ["TRACE"].split(":")]:
    if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        found["ptrace"][str(pid)] = "attached"
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    else:
        found["ptrace"][str(pid)] = os.strerror(ctypes.get_errno())
for path in os.environ["LOOK_AT"].split(":"):
    try:
        with open(path, "rb") as f:
            found["files"][path] = f.read(4096).decode(errors="replace")
    except OSError as exc:
        found["files"][path] = type(exc).__name__
for other in ("/tmp/victim-file", "/dev/shm/victim-file"):
    found["files"][other] = os.path.exists(other)
for pid in found["pids"]:
    if pid != me:
        try:
            os.kill(pid, signal.SIGKILL)
            found["killed"].append(pid)
        except OSError:
            pass
print(json.dumps(found))
"""

VICTIM = """
import os, time

WORKER = f"{os.getpid()}:{time.time_ns()}"

def handler():
    for path in ("/tmp/victim-file", "/dev/shm/victim-file"):
        with open(path, "w") as f:
            f.write(os.environ["API_KEY"])
    return WORKER
"""

WRITER = """#!/bin/sh
for p in /etc/spearlet-probe /usr/spearlet-probe /var/tmp/spearlet-probe "$DATA_DIR/spearlet-probe" "$SHARED/spearlet-probe"; do
    touch "$p" 2>/dev/null && echo "wrote $p"
done
echo x > "/tmp/spearlet-probe-$SPEAR_EXECUTION_ID" && echo tmp
head -c 1000000 /dev/zero > "/dev/shm/spearlet-probe-$SPEAR_EXECUTION_ID" && echo shm
echo x > mine && echo workdir
"""

CONNECT = """#!/usr/bin/env python3
import os, socket
try:
    socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=3).close()
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


@dataclass
class Guarded:
    """A node with a token, a settings file and a secret in its environment."""

    kind: str
    node: NodeProcess
    uid: int
    gid: int
    token_file: Path
    config_file: Path
    base: Path  # the node's files, and the code tests register

    def stub(self) -> pb_grpc.FunctionServiceStub:
        return self.node.stub()

    @property
    def auth(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {TOKEN}"),)

    def register(self, name: str, location: Path, artifact_type: str = "process", **metadata: str) -> None:
        tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(self.node.grpc_target))
        spec = pb.ArtifactSpec(artifact_type=artifact_type, location=str(location), metadata=metadata)
        request = pb.RegisterTaskRequest(task_name=name, artifact_spec=spec, replace=True)
        tasks.RegisterTask(request, metadata=self.auth)

    def invoke(self, name: str, timeout_ms: int = 20_000, **kwargs: Any) -> pb.InvokeFunctionResponse:
        request = existing(name, context=pb.ExecutionContext(timeout_ms=timeout_ms), **kwargs)
        response: pb.InvokeFunctionResponse = self.stub().InvokeFunction(request, metadata=self.auth)
        return response

    def status(self, execution_id: str) -> pb.GetExecutionStatusResponse:
        request = pb.GetExecutionStatusRequest(execution_id=execution_id, include_result=True)
        response: pb.GetExecutionStatusResponse = self.stub().GetExecutionStatus(request, metadata=self.auth)
        return response


def _start(kind: str, base: Path) -> Guarded:
    if kind == "root":
        if os.geteuid() != 0:
            pytest.skip("a node run as root needs the tests run as root")
        uid, gid, prefix = 0, 0, []
    elif os.geteuid() == 0:
        uid, gid = unprivileged_user()
        prefix = as_user(uid, gid)
    else:
        uid, gid, prefix = os.getuid(), os.getgid(), []
    data = base / "data"
    data.mkdir()
    token_file = base / "token"
    token_file.write_text(TOKEN)
    config_file = base / "node.toml"
    config_file.write_text(f"# {CONFIG_SECRET}\nmax_concurrency = 8\n")
    for path in (data, token_file, config_file):
        os.chown(path, uid, gid)
    token_file.chmod(0o600)
    config_file.chmod(0o600)
    extra = ["--tasks", "none", "--token-file", str(token_file), "--config", str(config_file)]
    node = start_node(data, *extra, env={"NODE_SECRET": NODE_SECRET}, prefix=prefix)
    return Guarded(kind, node, uid, gid, token_file, config_file, base)


@pytest.fixture(scope="module", params=["root", "user"])
def guarded(request: pytest.FixtureRequest) -> Iterator[Guarded]:
    # Not under pytest's temporary directories: every pytest session run as this user closes their
    # root to others when it starts, and the node's user must reach its files all along.
    base = Path(tempfile.mkdtemp(prefix=f"spearlet-{request.param}-node-"))
    base.chmod(0o755)
    try:
        started = _start(request.param, base)
        yield started
        assert started.node.stop() == 0, "\n".join(started.node.output)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def code(guarded: Guarded, request: pytest.FixtureRequest) -> Path:
    """Where a test writes its functions' code: readable by whoever runs the node."""
    path = guarded.base / request.node.name.replace("/", "_")
    path.mkdir(mode=0o755)
    return path


def processes_of(execution_id: str) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter()
        if environ_of(p).get("SPEAR_EXECUTION_ID") == execution_id and p.status() != psutil.STATUS_ZOMBIE
    ]


def test_the_banner_and_health_say_which_sandbox_is_in_force(guarded: Guarded) -> None:
    shape = "user namespace" if guarded.kind == "user" else "as root"
    deadline = time.monotonic() + 5  # the banner's last lines may still be on their way
    while not any(line.strip().startswith("sandbox") and shape in line for line in guarded.node.output):
        assert time.monotonic() < deadline, guarded.node.output
        time.sleep(0.05)
    health = httpx.get(f"{guarded.node.http_url}/api/v1/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert shape in health.json()["details"]["system_info"]["sandbox"]


def test_a_function_learns_nothing_of_the_node_nor_of_another_function(guarded: Guarded, code: Path) -> None:
    (code / "victim.py").write_text(VICTIM)
    guarded.register("victim", code / "victim.py", "python", **{"env.API_KEY": VICTIM_KEY, "min_instances": "1"})
    victim = unpack(guarded.invoke("victim").result.result)
    store = guarded.node.data_dir / "spearlet.db"
    look_at = [str(store), str(guarded.token_file), str(guarded.config_file), f"/proc/{guarded.node.proc.pid}/environ"]
    node = psutil.Process(guarded.node.proc.pid)
    workers = [p.pid for p in node.children(recursive=True) if VICTIM_KEY in environ_of(p).get("API_KEY", "")]
    assert workers, "the victim's worker is not found"
    trace = ":".join(str(pid) for pid in (node.pid, *workers))
    guarded.register(
        "snoop", script(code / "snoop.py", SNOOP), **{"env.LOOK_AT": ":".join(look_at), "env.TRACE": trace}
    )
    response = guarded.invoke("snoop")
    assert response.success, response.result.error_message
    found = unpack(response.result.result)
    text = json.dumps(found)
    for secret in (TOKEN, NODE_SECRET, CONFIG_SECRET, VICTIM_KEY):
        assert secret not in text
    assert all(found["files"][path] in ("FileNotFoundError", "PermissionError", "") for path in look_at), found["files"]
    assert found["files"]["/tmp/victim-file"] is False and found["files"]["/dev/shm/victim-file"] is False
    assert not [k for k in found["files"] if k.startswith("mem of")]  # no other process's memory
    assert len(found["ptrace"]) >= 2 and "attached" not in found["ptrace"].values(), found["ptrace"]
    # Its own processes only: the sandbox's init, itself; not the node nor the victim's worker.
    assert len(found["pids"]) <= 2, found["cmdlines"]
    assert not [c for c in found["cmdlines"] if "spearlet serve" in c or "python_worker" in c]
    # It killed what it saw; the victim's worker is the same one, alive.
    assert unpack(guarded.invoke("victim").result.result) == victim


def test_a_function_writes_only_in_its_working_directory_and_leaves_nothing_behind(
    guarded: Guarded, code: Path
) -> None:
    shared = shared_dir(code)  # open to every user on the host
    metadata = {"env.DATA_DIR": str(guarded.node.data_dir), "env.SHARED": str(shared)}
    guarded.register("writer", script(code / "writer.sh", WRITER), **metadata)
    response = guarded.invoke("writer")
    assert unpack(response.result.result) == "tmp\nshm\nworkdir\n"  # /tmp and /dev/shm are its own
    assert not list(shared.iterdir())
    assert not (guarded.node.data_dir / "spearlet-probe").exists()
    for leftover in (
        f"/tmp/spearlet-probe-{response.execution_id}",
        f"/dev/shm/spearlet-probe-{response.execution_id}",
    ):
        assert not Path(leftover).exists()


def test_network_none_cannot_reach_the_node_ports_and_host_can(guarded: Guarded, code: Path) -> None:
    port = guarded.node.grpc_target.rsplit(":", 1)[1]
    connect = script(code / "connect.py", CONNECT)
    guarded.register("offline", connect, network="none", **{"env.PORT": port})
    guarded.register("online", connect, **{"env.PORT": port})
    assert unpack(guarded.invoke("offline").result.result) == "ConnectionRefusedError\n"
    assert unpack(guarded.invoke("online").result.result) == "connected\n"


def test_a_setsid_grandchild_holding_stdout_ends_with_the_call(guarded: Guarded, code: Path) -> None:
    guarded.register("daemon", script(code / "daemon.sh", "#!/bin/sh\nsetsid sleep 60 &\nsleep 0.2\necho started\n"))
    guarded.register("lingering", script(code / "lingering.sh", "#!/bin/sh\nsetsid sleep 60 &\nsleep 60\n"))
    started = time.monotonic()
    done = guarded.invoke("daemon")
    assert unpack(done.result.result) == "started\n" and time.monotonic() - started < 5

    started = time.monotonic()
    timed_out = guarded.invoke("lingering", timeout_ms=1000)
    assert timed_out.result.status == pb.EXECUTION_STATUS_TIMEOUT and time.monotonic() - started < 5

    accepted = guarded.invoke("lingering", mode=pb.EXECUTION_MODE_ASYNC)
    deadline = time.monotonic() + 10
    while guarded.status(accepted.execution_id).result.status != pb.EXECUTION_STATUS_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    cancel = pb.CancelExecutionRequest(execution_id=accepted.execution_id)
    assert guarded.stub().CancelExecution(cancel, metadata=guarded.auth).success
    assert guarded.status(accepted.execution_id).result.status == pb.EXECUTION_STATUS_CANCELLED
    assert time.monotonic() - started < 5
    for execution_id in (done.execution_id, timed_out.execution_id, accepted.execution_id):
        _, alive = psutil.wait_procs(processes_of(execution_id), timeout=3)
        assert not alive, f"{execution_id} left {[p.cmdline() for p in alive]}"


def test_a_fork_bomb_and_memory_hogs_are_contained(guarded: Guarded, code: Path) -> None:
    bomb = script(code / "bomb.py", "#!/usr/bin/env python3\nimport os\nwhile True:\n    os.fork()\n")
    guarded.register("bomb", bomb, max_processes="40")
    started = time.monotonic()
    response = guarded.invoke("bomb", timeout_ms=3000)
    assert time.monotonic() - started < 10
    assert response.result.status in (pb.EXECUTION_STATUS_FAILED, pb.EXECUTION_STATUS_TIMEOUT)
    _, alive = psutil.wait_procs(processes_of(response.execution_id), timeout=3)
    assert not alive

    hog = script(code / "hog.py", "#!/usr/bin/env python3\nheap = bytearray(1 << 30)\n")
    guarded.register("hog", hog, memory_limit_mb="64")
    assert guarded.invoke("hog").result.error_code == "OUT_OF_MEMORY"

    shm = "#!/bin/sh\nhead -c 600000000 /dev/zero > /dev/shm/hog || exit 1\necho all written\n"
    guarded.register("shm-hog", script(code / "shm.sh", shm), memory_limit_mb="64")
    response = guarded.invoke("shm-hog")
    assert response.result.status == pb.EXECUTION_STATUS_FAILED  # no space left at its memory limit
    assert "No space left" in response.result.error_message
    assert not Path("/dev/shm/hog").exists()


def test_the_limits_and_their_codes_hold_inside(guarded: Guarded, code: Path) -> None:
    guarded.register(
        "big", script(code / "big.sh", "#!/bin/sh\nhead -c 3000000 /dev/zero > big.bin\n"), file_limit_mb="1"
    )
    assert guarded.invoke("big").result.error_code == "FILE_SIZE_LIMIT_EXCEEDED"
    guarded.register("spin", script(code / "spin.sh", "#!/bin/sh\nwhile :; do :; done\n"), cpu_limit_s="1")
    assert guarded.invoke("spin").result.error_code == "CPU_LIMIT_EXCEEDED"
    guarded.register("segv", script(code / "segv.sh", "#!/bin/sh\nkill -SEGV $$\n"))
    response = guarded.invoke("segv")
    assert response.result.error_code == "KILLED_BY_SIGNAL" and "SIGSEGV" in response.result.error_message
    guarded.register("flood", script(code / "flood.sh", "#!/bin/sh\nhead -c 5000000 /dev/zero\n"))
    assert guarded.invoke("flood").result.error_code == "OUTPUT_TOO_LARGE"


# Root reads every process: the node's own user is the one to keep out, so this runs on that node only.
@pytest.mark.parametrize("guarded", ["user"], indirect=True)
def test_the_node_is_not_dumpable_even_to_its_own_user(guarded: Guarded) -> None:
    drop = ["setpriv", f"--reuid={guarded.uid}", f"--regid={guarded.gid}", "--clear-groups", "--"]
    drop = drop if os.geteuid() == 0 else []
    with subprocess.Popen([*drop, "sleep", "30"]) as same_user:  # a process of that user, dumpable
        try:
            deadline = time.monotonic() + 10
            # Readable once setpriv has dropped to the user and exec'd sleep (a process that changed
            # its uid is non-dumpable until its next exec).
            process = psutil.Process(same_user.pid)
            while process.uids().real != guarded.uid or process.name() != "sleep":
                assert time.monotonic() < deadline, "setpriv did not switch to the node's user"
                time.sleep(0.01)
            readable = subprocess.run([*drop, "cat", f"/proc/{same_user.pid}/environ"], capture_output=True)
            assert readable.returncode == 0  # what the node would give away without prctl
            node = subprocess.run([*drop, "cat", f"/proc/{guarded.node.proc.pid}/environ"], capture_output=True)
            assert node.returncode != 0 and NODE_SECRET.encode() not in node.stdout
        finally:
            same_user.kill()
