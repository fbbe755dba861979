"""Shared test helpers: a real node process, value packing, small artifacts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.api.grpc.convert import tidy_numbers

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "spearlet" / "examples"


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
    return tasks.RegisterTask(pb.RegisterTaskRequest(task_name=name, artifact_spec=spec, replace=True))


def existing(task_id: str, mode: int = pb.EXECUTION_MODE_SYNC, **kwargs: Any) -> pb.InvokeFunctionRequest:
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
) -> NodeProcess:
    """`spearlet serve` as a real process on free ports; returns once it listens. With `cwd`,
    the node runs there with its default (relative) data dir, `data_dir` being where that lands."""
    if open_data_dir:
        open_path(data_dir if cwd is None else cwd)
    where = [] if cwd is not None else ["--data-dir", str(data_dir)]
    cmd = [sys.executable, "-m", "spearlet", "serve", *where, "--grpc-port", "0", "--http-port", "0", *extra]
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


def as_json(message: Any) -> dict[str, Any]:
    return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))


def environ_of(process: psutil.Process) -> dict[str, str]:
    """A process's environment, or nothing if it is gone or out of reach."""
    try:
        return process.environ()
    except psutil.Error:
        return {}
