"""The task registry inside a real node (SQLite store, real runtimes): a refused registration leaves
nothing behind, deleting or replacing a task frees what only it used, and what callers are told is
in their terms (no paths of the node, no tracebacks, no quotes of fetched content)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from spearlet.config import Settings
from spearlet.core.errors import InvalidArgument, Unavailable
from spearlet.core.models import ArtifactSpec, Mode, Status, Task
from spearlet.engine.invoker import InvocationType, InvokeRequest
from spearlet.node import Node
from spearlet.runtimes.wasm import WasmRuntime
from tests.artifacts.conftest import FileServer, serve
from tests.helpers import open_path, script

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(Settings(data_dir=open_path(tmp_path / "data"), grpc_port=0, http_port=0, tasks="none"))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    found, httpd = serve(root)
    yield found
    httpd.shutdown()
    httpd.server_close()


def cached(node: Node) -> list[Path]:
    """Every file the node keeps of artifacts and compiled modules."""
    roots = [node.tasks.fetcher.cache.root, node.settings.data_dir / "wasm-cache"]
    return sorted(p for root in roots if root.exists() for p in root.rglob("*") if p.is_file())


def node_paths(node: Node) -> list[str]:
    return [str(node.settings.data_dir), str(node.shared_dir), "python_worker", "Traceback"]


async def refused(node: Node, name: str, kind: str, location: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        await node.tasks.register(name, ArtifactSpec(kind, location))
    return str(caught.value)


async def test_work_queued_or_running_keeps_the_artifact_it_was_accepted_with(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = open_path(tmp_path / "code")
    monkeypatch.setattr("spearlet.engine.registry.UNUSED_GRACE_S", 0.0)
    await node.tasks.register(
        "v", ArtifactSpec("process", str(script(code / "v1.sh", "#!/bin/sh\nsleep 1; echo v1\n")))
    )
    running = await node.invoker.invoke(InvokeRequest(InvocationType.EXISTING_TASK, Mode.ASYNC, task_id="v"))
    await node.tasks.register("v", ArtifactSpec("process", str(script(code / "v2.sh", "#!/bin/sh\necho v2\n"))))
    assert len(cached(node)) == 2  # v1's copy stays while its call runs
    record = await node.store.get_execution(running.record.execution_id)
    while record is not None and not record.done:
        await asyncio.sleep(0.05)
        record = await node.store.get_execution(running.record.execution_id)
    assert record is not None and record.output == b"v1\n"
    await node.tasks.collect()
    assert [p.name for p in cached(node)] == ["v2.sh"]


async def test_a_refused_registration_leaves_nothing_in_the_cache(node: Node, tmp_path: Path, web: FileServer) -> None:
    code = open_path(tmp_path / "code")
    (code / "plain.sh").write_text("#!/bin/sh\necho not executable\n")
    (code / "broken.py").write_text("def handler(:\n")
    web.publish("meta", b"ami-id\ninstance-id\n")  # what an instance metadata service might answer
    for kind, location in [
        ("process", str(code / "plain.sh")),
        ("python", str(code / "broken.py")),
        ("python", web.url("meta")),
        ("wasm", str(script(code / "bad.wat", "(module (func (export"))),
    ]:
        await refused(node, "t", kind, location)
        assert cached(node) == [], (kind, location)


async def test_a_script_made_executable_after_its_refusal_registers_and_runs(node: Node, tmp_path: Path) -> None:
    code = open_path(tmp_path / "code")
    plain = code / "late.sh"
    plain.write_text("#!/bin/sh\necho runs\n")
    assert "not executable" in await refused(node, "late", "process", str(plain))
    plain.chmod(0o755)  # the user's fix after "not executable (chmod +x it)", on the same data dir
    await node.tasks.register("late", ArtifactSpec("process", str(plain)))
    result = await node.invoker.invoke(InvokeRequest(InvocationType.EXISTING_TASK, Mode.SYNC, task_id="late"))
    assert (result.record.status, result.record.output) == (Status.COMPLETED, b"runs\n")


async def test_a_failed_python_artifact_from_a_url_is_not_quoted(node: Node, web: FileServer) -> None:
    secret = "aws_secret_access_key = AKIAEXAMPLESECRET"
    message = await refused(node, "t", "python", web.publish("creds.py", f"{secret}\n".encode()))
    assert message.endswith("NameError (creds.py, line 1)")  # what and where, not the content
    assert "AKIA" not in message and "aws_secret" not in message
    message = await refused(node, "t", "wasm", web.publish("creds.wat", f"{secret}\n".encode()))
    assert "not a valid module" in message and "AKIA" not in message and "aws_secret" not in message


async def test_a_local_artifact_that_does_not_load_is_explained_without_node_paths(node: Node, tmp_path: Path) -> None:
    code = open_path(tmp_path / "code")
    (code / "needs.py").write_text("import no_such_module_here\n\ndef handler():\n    return 1\n")
    message = await refused(node, "t", "python", str(code / "needs.py"))
    assert "ModuleNotFoundError: No module named 'no_such_module_here' (needs.py, line 1)" in message
    assert not [p for p in node_paths(node) if p in message], message


async def test_failures_of_a_call_are_told_in_the_caller_s_terms(node: Node, tmp_path: Path) -> None:
    code = open_path(tmp_path / "code")
    (code / "fails.py").write_text("import json\n\ndef handler():\n    return json.loads('{')\n")
    await node.tasks.register("fails", ArtifactSpec("python", str(code / "fails.py")))
    script(code / "interp.sh", "#!/no/such/interpreter\n")
    await node.tasks.register("interp", ArtifactSpec("process", str(code / "interp.sh")))
    logs = {}
    for task, code_expected in [("fails", "FUNCTION_ERROR"), ("interp", "SPAWN_FAILED")]:
        result = await node.invoker.invoke(InvokeRequest(InvocationType.EXISTING_TASK, Mode.SYNC, task_id=task))
        record = result.record
        assert record.status is Status.FAILED and record.error_code == code_expected, record.error_message
        told = record.error_message + record.logs
        assert not [p for p in node_paths(node)[:3] if p in told], told
        logs[task] = record.logs
    assert 'File "fails.py", line 4, in handler' in logs["fails"]
    assert "interp.sh" in logs["interp"]  # the caller's own name for it


def wat(n: int) -> str:
    return f'(module (func (export "_start")) (func (export "n") (result i32) (i32.const {n})))'


async def test_deleting_or_replacing_a_task_frees_what_only_it_used(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = open_path(tmp_path / "code")
    wasm = node.runtimes["wasm"]
    assert isinstance(wasm, WasmRuntime)
    for n in range(3):
        await node.tasks.register(f"w{n}", ArtifactSpec("wasm", str(script(code / f"m{n}.wat", wat(n)))))
    await node.tasks.register("shared", ArtifactSpec("wasm", str(code / "m0.wat")))  # same code as w0
    assert len(wasm._modules) == 3 and len(cached(node)) == 6  # each: the artifact, its compiled form
    for n in range(3):
        await node.tasks.delete(f"w{n}", cleanup_executions=False)
    digest = hashlib.sha256(wat(0).encode()).hexdigest()
    assert list(wasm._modules) == [digest]  # `shared` still uses it
    assert len(cached(node)) == 2
    await node.tasks.register("shared", ArtifactSpec("wasm", str(code / "m1.wat")))  # replaced by other code
    assert len(wasm._modules) == 2 and len(cached(node)) == 4  # calls that found the old one may still start
    monkeypatch.setattr("spearlet.engine.registry.UNUSED_GRACE_S", 0.0)  # ... for a while
    await node.tasks.collect()
    assert list(wasm._modules) == [hashlib.sha256(wat(1).encode()).hexdigest()]
    assert len(cached(node)) == 2
    await node.tasks.delete("shared", cleanup_executions=False)
    assert wasm._modules == {} and cached(node) == []


async def test_an_unknown_task_comes_from_the_source_once_for_concurrent_first_calls(
    node: Node, tmp_path: Path
) -> None:
    echo = script(tmp_path / "echo.sh", "#!/bin/sh\necho sourced\n")
    asked: list[str] = []
    release = asyncio.Event()

    async def source(task_id: str) -> Task | None:
        asked.append(task_id)
        await release.wait()  # every first call is waiting by now
        if task_id != "from-sms":
            return None
        return await node.tasks.register(task_id, ArtifactSpec("process", str(echo)), for_caller=False)

    node.tasks.source = source
    assert await node.tasks.find("from-sms") is None and asked == []  # a look-up does not fetch
    calls = [asyncio.create_task(node.tasks.resolve("from-sms")) for _ in range(5)]
    await asyncio.sleep(0.05)
    release.set()
    found = await asyncio.gather(*calls)
    assert asked == ["from-sms"]
    assert all(t is not None and t.task_id == "from-sms" for t in found)
    assert await node.tasks.find("from-sms") is not None and asked == ["from-sms"]  # now it is known
    assert await node.tasks.resolve("nowhere") is None
    result = await node.invoker.invoke(
        InvokeRequest(task_id="from-sms", invocation_type=InvocationType.EXISTING_TASK, mode=Mode.SYNC)
    )
    record = result.record
    assert record.status is Status.COMPLETED and b"sourced" in record.output


async def test_a_failing_source_fails_each_waiting_call_and_is_asked_again_later(node: Node) -> None:
    asked = 0

    async def source(task_id: str) -> Task | None:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0.05)
        raise Unavailable("the SMS is out of reach")

    node.tasks.source = source
    results = await asyncio.gather(*(node.tasks.resolve("x") for _ in range(3)), return_exceptions=True)
    assert asked == 1 and all(isinstance(r, Unavailable) for r in results)
    with pytest.raises(Unavailable):
        await node.tasks.resolve("x")
    assert asked == 2
