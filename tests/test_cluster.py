"""Cluster mode on a real redis-server: three node processes share work, answer for each other,
cancel across nodes, and take over what a killed node held."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.store.redis import P
from tests.api.grpc.spear_client import ASYNC, COMPLETED, RUNNING, TERMINATED, SpearClient
from tests.artifacts.conftest import serve
from tests.helpers import (
    NodeProcess,
    RedisServer,
    environ_of,
    existing,
    flush_redis,
    params,
    processes_running,
    register,
    script,
    serve_refused,
    start_node,
    unpack,
)

pytestmark = pytest.mark.timeout(120)
LEASE_S = "1.5"


SLOTS = 4  # calls at once per node: small, so that filling the cluster is cheap


def start_member(
    data_dir: Path, redis_url: str, name: str, *extra: str, env: dict[str, str] | None = None
) -> NodeProcess:
    env = {"SPEARLET_LEASE_S": LEASE_S, "SPEARLET_MAX_CONCURRENCY": str(SLOTS), **(env or {})}
    return start_node(data_dir, "--store", redis_url, "--node-id", name, *extra, env=env)


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> Iterator[list[NodeProcess]]:
    flush_redis(redis_url)
    nodes = [start_member(tmp_path / f"n{i}", redis_url, f"n{i}") for i in range(3)]
    yield nodes
    for node in nodes:
        if node.proc.poll() is None:
            node.stop()


def wait_all_done(node: NodeProcess, ids: list[str], timeout: float = 60) -> dict[str, pb.ExecutionResult]:
    stub = node.stub()
    deadline = time.monotonic() + timeout
    while True:
        results = {
            e: stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=e, include_result=True)).result
            for e in ids
        }
        if all(r.status >= pb.EXECUTION_STATUS_COMPLETED for r in results.values()):
            return results
        assert time.monotonic() < deadline, Counter(r.status for r in results.values())
        time.sleep(0.1)


def test_work_spreads_across_nodes_and_any_node_answers(cluster: list[NodeProcess]) -> None:
    first = cluster[0].stub()
    ids = [
        first.InvokeFunction(
            existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=0.3))
        ).execution_id
        for _ in range(30)
    ]
    results = wait_all_done(cluster[2], ids)
    assert all(r.status == pb.EXECUTION_STATUS_COMPLETED for r in results.values())
    assert len({r.metrics["node"] for r in results.values()}) >= 2
    for node in cluster:
        listed = node.stub().ListExecutions(pb.ListExecutionsRequest(task_id="sleep", limit=100))
        assert set(ids) <= {e.execution_id for e in listed.executions}
        status = node.stub().GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=ids[0]))
        assert status.found
    sync = cluster[1].stub().InvokeFunction(existing("greet", parameters=params(name="Ann")))
    assert sync.success and sync.result.metrics["node"] == "n1"


def test_a_cancel_reaches_the_node_that_runs_it(cluster: list[NodeProcess], tmp_path: Path) -> None:
    stub = cluster[0].stub()
    accepted = stub.InvokeFunction(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=60)))
    deadline = time.monotonic() + 10
    while True:
        status = stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=accepted.execution_id)).result
        if status.status == pb.EXECUTION_STATUS_RUNNING and status.metrics.get("node"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner = status.metrics["node"]
    other = next(n for n in cluster if not n.data_dir.name.endswith(runner))
    started = time.perf_counter()
    cancel = other.stub().CancelExecution(
        pb.CancelExecutionRequest(execution_id=accepted.execution_id, reason="elsewhere")
    )
    assert time.perf_counter() - started < 1.0
    assert cancel.success and cancel.final_status == pb.EXECUTION_STATUS_CANCELLED
    assert not [
        p for p in processes_running("sleep.py") if environ_of(p).get("SPEAR_EXECUTION_ID") == accepted.execution_id
    ]


def test_a_pending_execution_cancelled_from_any_node_never_runs(cluster: list[NodeProcess], tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    body = f"#!/bin/sh\ntouch {mark}\n"
    path = script(tmp_path / "marker.sh", body)
    from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc

    tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(cluster[0].grpc_target))
    spec = pb.ArtifactSpec(artifact_type="process", location=str(path))
    tasks.RegisterTask(pb.RegisterTaskRequest(task_name="marker", artifact_spec=spec, replace=True))
    # Fill every node so the next one waits in the stream.
    blockers = [
        cluster[0].stub().InvokeFunction(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=5)))
        for _ in range(3 * SLOTS)
    ]
    queued = cluster[0].stub().InvokeFunction(existing("marker", mode=pb.EXECUTION_MODE_ASYNC))
    cancel = cluster[2].stub().CancelExecution(pb.CancelExecutionRequest(execution_id=queued.execution_id))
    assert cancel.success and cancel.final_status == pb.EXECUTION_STATUS_CANCELLED
    # Free the slots: were the queued one still around, it would run now.
    for blocker in blockers:
        cluster[0].stub().CancelExecution(pb.CancelExecutionRequest(execution_id=blocker.execution_id, force=True))
    wait_all_done(cluster[1], [b.execution_id for b in blockers])
    time.sleep(1.0)
    assert not mark.exists()


def test_a_task_replaced_or_deleted_through_one_node_is_what_the_others_use_next(
    cluster: list[NodeProcess], tmp_path: Path
) -> None:
    tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(cluster[0].grpc_target))
    other = cluster[1].stub()
    for version in ("v1", "v2", "v3"):  # each call on the other node follows the change at once
        path = script(tmp_path / f"{version}.sh", f"#!/bin/sh\necho {version}\n")
        spec = pb.ArtifactSpec(artifact_type="process", location=str(path))
        tasks.RegisterTask(pb.RegisterTaskRequest(task_name="versioned", artifact_spec=spec, replace=True))
        sync = other.InvokeFunction(existing("versioned"))
        assert sync.success and unpack(sync.result.result) == f"{version}\n"
        accepted = other.InvokeFunction(existing("versioned", mode=pb.EXECUTION_MODE_ASYNC))
        ran = wait_all_done(cluster[2], [accepted.execution_id])[accepted.execution_id]
        assert unpack(ran.result) == f"{version}\n"
    cluster[0].stub().DeleteTask(pb.DeleteTaskRequest(task_id="versioned", force=True))
    with pytest.raises(grpc.RpcError) as refused:
        other.InvokeFunction(existing("versioned"))
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


def test_an_async_execution_costs_its_node_at_most_three_redis_round_trips(tmp_path: Path, redis_url: str) -> None:
    flush_redis(redis_url)
    node = start_member(tmp_path / "n0", redis_url, "n0")
    watcher = redis.Redis.from_url(redis_url)
    sent: Counter[str] = Counter()
    try:
        stub = node.stub()
        stub.InvokeFunction(existing("greet", parameters=params(name="warm")))  # the worker, the task
        monitor = redis.Redis.from_url(redis_url)
        listening = threading.Event()

        def count() -> None:  # what clients send; MONITOR marks what a Lua script runs `lua`
            with contextlib.suppress(redis.ConnectionError, ValueError, AttributeError), monitor.monitor() as m:  # type: ignore[no-untyped-call]
                listening.set()
                for command in m.listen():
                    if command.get("client_type") != "lua":
                        sent[str(command["command"]).split(" ", 1)[0].lower()] += 1

        thread = threading.Thread(target=count, daemon=True)
        thread.start()
        assert listening.wait(10)
        calls = 60
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda _: stub.InvokeFunction(existing("greet", pb.EXECUTION_MODE_ASYNC, function_name="noop")),
                    range(calls),
                )
            )
        deadline = time.monotonic() + 30
        while watcher.xlen("spearlet:dispatch"):  # an entry is deleted once its final record is written
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monitor.connection_pool.disconnect()
        thread.join(5)
    finally:
        node.stop()
        watcher.close()
    ours = sent.pop("xlen", 0) + sent.pop("monitor", 0)
    assert ours > 0 and sent["evalsha"] >= calls
    assert sum(sent.values()) / calls <= 3, sent


def test_idempotency_keys_hold_across_nodes(cluster: list[NodeProcess]) -> None:
    keyed = {"idempotency_key": "order-7"}
    a = cluster[0].stub().InvokeFunction(existing("hello", mode=pb.EXECUTION_MODE_ASYNC, invocation_metadata=keyed))
    b = cluster[1].stub().InvokeFunction(existing("hello", mode=pb.EXECUTION_MODE_ASYNC, invocation_metadata=keyed))
    assert a.execution_id == b.execution_id


def test_a_killed_node_s_work_is_finished_by_the_others(
    cluster: list[NodeProcess], redis_url: str, tmp_path: Path
) -> None:
    stub = cluster[0].stub()
    retry = pb.ExecutionContext(max_retries=1)
    ids = {
        stub.InvokeFunction(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=6),
                                     context=retry if i % 2 else None)).execution_id: bool(i % 2)
        for i in range(12)
    }  # fmt: skip
    victim = cluster[1]
    deadline = time.monotonic() + 10
    while True:  # until all 12 run (3 nodes x SLOTS): what n1 holds is then settled
        nodes = {
            e: stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=e)).result.metrics.get("node")
            for e in ids
        }
        if all(nodes.values()):
            break
        assert time.monotonic() < deadline, f"not all started: {nodes}"
        time.sleep(0.05)
    running = [e for e, node in nodes.items() if node == "n1"]
    assert running, "n1 took no work"
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    results = wait_all_done(cluster[2], list(ids), timeout=60)
    for execution_id, had_retry in ids.items():
        result = results[execution_id]
        if execution_id in running:
            if had_retry:
                assert result.status == pb.EXECUTION_STATUS_COMPLETED and result.metrics["node"] != "n1"
            else:
                assert result.status == pb.EXECUTION_STATUS_FAILED and result.error_code == "NODE_LOST"
        else:
            assert result.status == pb.EXECUTION_STATUS_COMPLETED
    # The node comes back under its name and takes work again.
    cluster[1] = start_member(victim.data_dir, redis_url, "n1")
    # More than the other two can hold at once (2 x SLOTS): the rejoined node must take some.
    more = [
        stub.InvokeFunction(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=1))).execution_id
        for _ in range(4 * SLOTS)
    ]
    again = wait_all_done(cluster[1], more)
    assert "n1" in {r.metrics["node"] for r in again.values()}


def test_nodes_without_an_id_get_one_each_and_a_live_node_s_id_is_refused(tmp_path: Path, redis_url: str) -> None:
    flush_redis(redis_url)
    env = {"SPEARLET_LEASE_S": LEASE_S, "SPEARLET_MAX_CONCURRENCY": str(SLOTS)}
    nodes = [start_node(tmp_path / f"n{i}", "--store", redis_url, env=env) for i in range(3)]
    try:
        names = [re.search(r"spearlet node '([^']+)' serving", "\n".join(n.output)).group(1) for n in nodes]  # type: ignore[union-attr]
        assert len(set(names)) == 3
        stub = nodes[0].stub()
        ids = [
            stub.InvokeFunction(
                existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=0.3))
            ).execution_id
            for _ in range(3 * SLOTS)
        ]
        ran_on = {r.metrics["node"] for r in wait_all_done(nodes[1], ids).values()}
        assert len(ran_on) >= 2 and ran_on <= set(names)

        refused = serve_refused(
            "--data-dir", str(tmp_path / "n3"), "--store", redis_url, "--node-id", names[0], env=env
        )
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"cannot start the node: node id {names[0]!r} is held by a live node of the cluster "
            f"(host {socket.gethostname()}, pid {nodes[0].proc.pid}, heartbeat within lease_s={LEASE_S}): "
            "give this node another --node-id, or stop that one"
        ]
    finally:
        for node in nodes:
            node.stop()


def test_a_redis_outage_refuses_new_work_and_every_execution_in_flight_then_ends(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    nodes = [start_member(tmp_path / f"n{i}", redis.url, f"n{i}") for i in range(2)]
    try:
        stub = nodes[0].stub()
        with ThreadPoolExecutor(1) as pool:  # a sync call that ends while the store is away
            sync_id = str(uuid.uuid4())
            sync = pool.submit(
                nodes[1].stub().InvokeFunction,
                existing("sleep", parameters=params(seconds=2.5), context=pb.ExecutionContext(execution_id=sync_id)),
                timeout=30,
            )
            deadline = time.monotonic() + 10
            while not found(stub, sync_id):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            ids = [
                stub.InvokeFunction(
                    existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=1.0),
                             context=pb.ExecutionContext(max_retries=i % 2))
                ).execution_id
                for i in range(3 * SLOTS)
            ]  # fmt: skip
            while sum(running_on(stub, ids).values()) < 2 * SLOTS - 1:  # every other slot taken, the rest queued
                assert time.monotonic() < deadline
                time.sleep(0.02)

            redis.kill()
            with pytest.raises(grpc.RpcError) as refused:
                stub.InvokeFunction(existing("hello", mode=pb.EXECUTION_MODE_ASYNC), timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert redis.url in refused.value.details() and "unreachable" in refused.value.details()
            over_http = httpx.post(
                f"{nodes[1].http_url}/api/v1/invoke", json={"invocation_type": 2, "task_id": "hello"}
            )
            assert over_http.status_code == 503 and over_http.json()["error"]["code"] == "UNAVAILABLE"
            health = stub.GetHealth(pb.GetHealthRequest())
            assert health.status == "unhealthy" and redis.url in health.message
            answered = sync.result()  # its end could not be stored: answered all the same
            assert answered.result.status == pb.EXECUTION_STATUS_COMPLETED
        time.sleep(float(LEASE_S))  # away longer than a lease: every held entry looks abandoned

        redis.start()
        results = wait_all_done(nodes[1], [*ids, answered.execution_id], timeout=30)
        assert {execution_id: r.status for execution_id, r in results.items()} == dict.fromkeys(
            results, pb.EXECUTION_STATUS_COMPLETED
        )  # the ends held while the store was away, written; nothing rerun or failed
        assert stub.GetHealth(pb.GetHealthRequest()).status == "healthy"
        after = stub.InvokeFunction(existing("hello", mode=pb.EXECUTION_MODE_ASYNC)).execution_id
        assert wait_all_done(nodes[0], [after])[after].status == pb.EXECUTION_STATUS_COMPLETED
    finally:
        for node in nodes:
            node.stop()
        redis.kill()


def found(stub: pb_grpc.FunctionServiceStub, execution_id: str) -> bool:
    return stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=execution_id)).found


def running_on(stub: pb_grpc.FunctionServiceStub, ids: list[str]) -> Counter[str]:
    """How many of `ids` run on each node now."""
    statuses = [stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=e)).result for e in ids]
    return Counter(r.metrics["node"] for r in statuses if r.status == pb.EXECUTION_STATUS_RUNNING)


WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 64) "\\"from B\\"")
  (func (export "_start") (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 8))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def test_a_task_registered_from_one_node_s_disk_runs_on_another_after_that_node_is_gone(
    tmp_path: Path, redis_url: str
) -> None:
    flush_redis(redis_url)
    source = tmp_path / "a-src"
    script(source / "shout.sh", "#!/bin/sh\ntr a-z A-Z\n")
    package = source / "greeter"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from greeter.words import word\n\ndef handler(name):\n    return word(name)\n"
    )
    (package / "words.py").write_text("def word(name):\n    return f'hi {name}'\n")
    (source / "b.wat").write_text(WAT)
    web_root = tmp_path / "www"
    script(web_root / "served.sh", "#!/bin/sh\necho served\n")
    web, httpd = serve(web_root)
    a = start_member(tmp_path / "a", redis_url, "a", "--tasks", "none")
    try:
        for name, kind, location in [
            ("shout", "process", source / "shout.sh"),
            ("greeter", "python", package),
            ("b", "wasm", source / "b.wat"),
        ]:
            register(a.grpc_target, name, location, kind)
        spec = pb.ArtifactSpec(artifact_type="process", location=web.url("served.sh"))
        tasks = pb_grpc.TaskServiceStub(grpc.insecure_channel(a.grpc_target))
        tasks.RegisterTask(pb.RegisterTaskRequest(task_name="served", artifact_spec=spec))
    finally:
        assert a.stop() == 0
    shutil.rmtree(source)
    shutil.rmtree(tmp_path / "a")  # nothing of A is left on this machine
    b = start_member(tmp_path / "b", redis_url, "b", "--tasks", "none")
    try:
        stub = b.stub()
        answers = {
            "shout": stub.InvokeFunction(existing("shout", parameters=params(w="x"))),
            "greeter": stub.InvokeFunction(existing("greeter", parameters=params(name="Bo"))),
            "b": stub.InvokeFunction(existing("b")),
            "served": stub.InvokeFunction(existing("served")),
        }
        for name, answer in answers.items():
            assert answer.success, (name, answer.result.error_message, "\n".join(b.output))
        assert [unpack(a.result.result) for a in answers.values()] == [{"W": "X"}, "hi Bo", "from B", "served\n"]
        assert web.requests == ["/served.sh", "/served.sh"]  # an http(s) artifact: each node fetches its own
    finally:
        assert b.stop() == 0
        httpd.shutdown()
        httpd.server_close()


def test_a_local_artifact_over_the_cluster_s_blob_limit_is_refused_pointing_to_http(
    tmp_path: Path, redis_url: str
) -> None:
    big = script(tmp_path / "src" / "big.sh", "#!/bin/sh\n" + "#" * (2 << 20))
    node = start_member(
        tmp_path / "n", redis_url, "big", "--tasks", "none", env={"SPEARLET_ARTIFACT_BLOB_LIMIT_MB": "1"}
    )
    try:
        with pytest.raises(grpc.RpcError) as refused:
            register(node.grpc_target, "big", big)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "artifact_blob_limit_mb" in (refused.value.details() or "")
        assert "http(s) location" in (refused.value.details() or "")
    finally:
        assert node.stop() == 0


def test_a_node_killed_and_restarted_within_its_lease_takes_its_id_back(tmp_path: Path, redis_url: str) -> None:
    """Its heartbeat key still lives, but nobody renews it: the new run waits it out (at most one
    lease) instead of taking it for a live twin, and serves under the same id."""
    flush_redis(redis_url)
    lease = {"SPEARLET_LEASE_S": "8"}  # longer than a restart takes
    node = start_member(tmp_path / "n0", redis_url, "n0", env=lease)
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(10)
    with redis.Redis.from_url(redis_url) as client:
        assert client.pttl(f"{P}node:n0") > 0  # the dead run's heartbeat is still there
    restarted = start_member(node.data_dir, redis_url, "n0", env=lease)
    try:
        assert "spearlet node 'n0' serving" in "\n".join(restarted.output)
        done = wait_all_done(
            restarted, [restarted.stub().InvokeFunction(existing("hello", mode=pb.EXECUTION_MODE_ASYNC)).execution_id]
        )
        assert [r.metrics["node"] for r in done.values()] == ["n0"]
    finally:
        restarted.stop()


def running_elsewhere(cluster: list[NodeProcess], clients: list[SpearClient], execution_id: str) -> tuple[Any, int]:
    """The execution once it runs, and the index of a node that does not run it."""
    deadline = time.monotonic() + 10
    while (execution := clients[2].get(execution_id)).status != RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status = cluster[0].stub().GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id=execution_id))
    runner = status.result.metrics["node"]
    return execution, next(i for i, n in enumerate(cluster) if not n.data_dir.name.endswith(runner))


def test_spears_current_services_answer_and_terminate_from_any_node(cluster: list[NodeProcess]) -> None:
    clients = [SpearClient(node.grpc_target) for node in cluster]
    try:
        invocation = str(uuid.uuid4())
        sleep = ("application/json", b'{"seconds": 60}')
        accepted = clients[0].invoke("sleep", input=sleep, mode=ASYNC, invocation_id=invocation)
        second = clients[0].invoke("sleep", input=sleep, mode=ASYNC, invocation_id=invocation)
        execution, other = running_elsewhere(cluster, clients, accepted.execution_id)
        assert execution.instance_id == f"own-{accepted.execution_id}" and execution.invocation_id == invocation
        for client in clients:
            listed = client.list(invocation_id=invocation).executions
            assert [e.execution_id for e in listed] == [second.execution_id, accepted.execution_id]
        ended = clients[other].terminate(accepted.execution_id, reason="from elsewhere")
        assert ended.success and ended.final_status == TERMINATED
        # The other one through its instance, from a node that does not run it.
        execution, other = running_elsewhere(cluster, clients, second.execution_id)
        assert clients[other].destroy(execution.instance_id).success
        assert clients[0].get(second.execution_id).status == TERMINATED
        assert clients[1].invoke("echo", input=("application/json", b'{"n": 1}')).status == COMPLETED
    finally:
        for client in clients:
            client.close()
