"""Crash safety: SIGKILL the node at random moments while async executions of every runtime are
pending and running; restart it; repeat. Then check that every accepted execution ended in exactly
one terminal state, none was lost or stuck, no function process was orphaned, and the SQLite file
passes its integrity check. Run by tests/e2e/test_crash_safety.py, and at full size by
`python -m bench.crash_safety`.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psutil

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.helpers import existing, params

TERMINAL = {pb.EXECUTION_STATUS_COMPLETED, pb.EXECUTION_STATUS_FAILED, pb.EXECUTION_STATUS_CANCELLED,
            pb.EXECUTION_STATUS_TIMEOUT}  # fmt: skip
WORK = "#!/bin/sh\ncat > /dev/null\nsleep 0.$(( $$ % 3 ))\necho '{\"ok\": true}'\n"
# (task, function, parameters) of the mix: a process, a warm Python function, a WASM module.
MIX: list[tuple[str, str, dict[str, float]]] = [
    ("crash-work", "", {}),
    ("greet", "wait", {"seconds": 0.05}),
    ("wasm-echo", "", {"n": 1}),
]


class Node:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""

    def start(self) -> None:
        cmd = [sys.executable, "-m", "spearlet", "serve", "--data-dir", str(self.data_dir), "--grpc-port", "0",
               "--http-port", "0"]  # fmt: skip
        env = {**os.environ, "SPEARLET_LOG_LEVEL": "ERROR", "SPEARLET_MAX_PENDING": "100000"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip().startswith("gRPC"):
                self.target = line.split()[1]
            if line.strip().startswith("data"):
                break
        if not self.target:
            raise RuntimeError(f"node did not start: {self.proc.wait()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)

    def stub(self) -> pb_grpc.FunctionServiceStub:
        return pb_grpc.FunctionServiceStub(grpc.insecure_channel(self.target))


def _statuses(node: Node, ids: list[str]) -> dict[str, int]:
    stub = node.stub()

    def one(execution_id: str) -> tuple[str, int]:
        response = stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=execution_id), timeout=30)
        return execution_id, response.result.status if response.found else -1

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, ids))


def _marked_processes(data_dir: Path) -> list[psutil.Process]:
    mark = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SPEAR_NODE") == mark:
                found.append(process)
        except psutil.Error:
            continue
    return found


def run(executions: int, kills: int, seed: int, data_dir: Path, deadline_s: float = 600) -> dict[str, Any]:
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for directory in (data_dir, *data_dir.parents):  # the function user must reach the node's artifacts
        directory.chmod(directory.stat().st_mode | 0o111)
    work = data_dir.parent / "crash-work.sh"
    work.write_text(WORK)
    work.chmod(0o755)
    node = Node(data_dir)
    node.start()
    tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(node.target))
    spec = pb.ArtifactSpec(artifact_type="process", location=str(work), metadata={"max_concurrency": "8"})
    tasks.RegisterTask(pb.RegisterTaskRequest(task_name="crash-work", artifact_spec=spec, replace=True))

    accepted: list[str] = []
    refused = 0
    stub = node.stub()

    def submit(i: int) -> str | None:
        task, function, values = MIX[i % len(MIX)]
        context = pb.ExecutionContext(max_retries=i % 2, timeout_ms=30_000)
        request = existing(
            task, pb.EXECUTION_MODE_ASYNC, function_name=function, parameters=params(**values), context=context
        )
        try:
            return str(stub.InvokeFunction(request, timeout=30).execution_id)
        except grpc.RpcError:
            return None

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for execution_id in pool.map(submit, range(executions)):
            if execution_id:
                accepted.append(execution_id)
            else:
                refused += 1
    accept_s = time.monotonic() - started

    first_terminal: dict[str, int] = {}
    changed_after_terminal = 0
    orphans_seen = 0
    for _ in range(kills):
        time.sleep(rng.uniform(0.2, 1.5))
        node.kill()
        time.sleep(0.3)
        orphans_seen += len(_marked_processes(data_dir))  # grandchildren; the next start kills them
        node.start()
        for execution_id, status in _statuses(node, accepted).items():
            if execution_id in first_terminal and first_terminal[execution_id] != status:
                changed_after_terminal += 1
            if status in TERMINAL:
                first_terminal.setdefault(execution_id, status)

    end = time.monotonic() + deadline_s
    while True:
        final = _statuses(node, accepted)
        if all(s in TERMINAL for s in final.values()) or time.monotonic() > end:
            break
        time.sleep(0.5)
    for execution_id, status in final.items():
        if execution_id in first_terminal and first_terminal[execution_id] != status:
            changed_after_terminal += 1
    records = node.stub().ListExecutions(pb.ListExecutionsRequest(limit=1))  # the node still answers
    node.stop()
    orphans_left = len(_marked_processes(data_dir))
    with sqlite3.connect(data_dir / "spearlet.db") as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        failed_codes = dict(
            db.execute(
                "SELECT error_code, count(*) FROM executions WHERE status = ? GROUP BY error_code",
                (pb.EXECUTION_STATUS_FAILED,),
            ).fetchall()
        )
        # INTERNAL is the node's own failure, a bug: its messages say where.
        internal = [row[0] for row in db.execute("SELECT error_message FROM executions WHERE error_code = 'INTERNAL'")]
    codes = Counter(pb.ExecutionStatus.Name(s).removeprefix("EXECUTION_STATUS_") if s >= 0 else "NOT_FOUND"
                    for s in final.values())  # fmt: skip
    return {
        "executions_submitted": executions,
        "accepted": len(accepted),
        "refused": refused,
        "accept_seconds": round(accept_s, 2),
        "kills": kills,
        "lost": sum(1 for s in final.values() if s == -1),
        "stuck": sum(1 for s in final.values() if s not in TERMINAL and s != -1),
        "changed_after_terminal": changed_after_terminal,
        "final_statuses": dict(codes),
        "failed_error_codes": failed_codes,
        "internal_errors": internal[:5],
        "orphans_after_a_kill": orphans_seen,
        "orphans_left": orphans_left,
        "integrity_check": integrity,
        "answered_after": bool(records.executions),
        "seconds": round(time.monotonic() - started, 1),
    }
