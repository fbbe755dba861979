"""What one caller can make a node hold, against a real node with small bounds: request bodies
whatever their framing, open streams and watches, the size of what a call carries, listing pages,
and the label values of the metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.api.http.test_gateway import invoke_body, sse_events
from tests.helpers import NodeProcess, existing, params, start_node

pytestmark = pytest.mark.timeout(60)

BOUNDS = {
    "SPEARLET_MAX_STREAMS": "2",
    "SPEARLET_MAX_PAGE_BYTES": "20000",
    "SPEARLET_MAX_METADATA_BYTES": "4096",
    "SPEARLET_MAX_ENVIRONMENT_BYTES": "4096",
    "SPEARLET_MAX_PARAMETERS_BYTES": "65536",
    "SPEARLET_METRICS_MAX_FUNCTIONS": "3",
}


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("bounded"), env=BOUNDS)
    yield node
    assert node.stop() == 0, "\n".join(node.output)


@pytest.fixture(scope="module")
def http(bounded: NodeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bounded.http_url, timeout=30) as client:
        yield client


def test_a_chunked_body_over_the_limit_is_413_like_a_declared_one(http: httpx.Client) -> None:
    head = b'{"invocation_type": 2, "task_id": "echo", "parameters": [{"name": "p", "value": '
    head += b'{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "'

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body arrives chunked
        yield head
        for _ in range(9 * 16):
            yield b"x" * 65536
        yield b'"}}]}'

    response = http.post("/api/v1/invoke", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert http.get("/api/v1/health").status_code == 200


def test_open_streams_are_capped_and_a_closed_one_frees_its_place(bounded: NodeProcess, http: httpx.Client) -> None:
    stub = bounded.stub()
    running = stub.InvokeFunction(existing("sleep", mode=pb.EXECUTION_MODE_ASYNC, parameters=params(seconds=20)))
    watcher = pb_grpc.WatchServiceStub(grpc.insecure_channel(bounded.grpc_target))
    request = pb.WatchExecutionRequest(execution_id=running.execution_id)
    url = f"/api/v1/executions/{running.execution_id}/events"
    try:
        with http.stream("GET", url) as first, http.stream("GET", url) as second:
            events = [sse_events(watch) for watch in (first, second)]  # kept: dropping one closes it
            assert [next(e)[0] for e in events] == ["status", "status"]  # both hold their place
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(watcher.WatchExecution(request, timeout=10)))
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams" in (refused.value.details() or "")
            third = http.get(url)
            assert third.status_code == 429 and third.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
            stream_body = invoke_body("echo", "STREAM")
            assert http.post("/api/v1/stream", json=stream_body).status_code == 429
        deadline = time.monotonic() + 10  # both closed: their places come back
        while True:
            try:
                assert next(iter(watcher.WatchExecution(request, timeout=10))).execution_id == running.execution_id
                break
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        stub.CancelExecution(pb.CancelExecutionRequest(execution_id=running.execution_id, force=True))


@pytest.mark.parametrize(
    ("field", "setting"),
    [
        ("metadata", "max_metadata_bytes"),
        ("environment", "max_environment_bytes"),
        ("parameters", "max_parameters_bytes"),
    ],
)
def test_what_a_call_carries_is_bounded_by_its_setting(bounded: NodeProcess, field: str, setting: str) -> None:
    big = "x" * 5000 if field != "parameters" else "x" * 70_000
    request = existing("echo")
    if field == "metadata":
        request.invocation_metadata["note"] = big
    elif field == "environment":
        request.context.environment["NOTE"] = big
    else:
        request.parameters.extend(params(note=big))
    with pytest.raises(grpc.RpcError) as refused:
        bounded.stub().InvokeFunction(request)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and setting in (refused.value.details() or "")


def test_listings_are_paged_by_bytes_as_well_as_count(bounded: NodeProcess) -> None:
    stub = bounded.stub()
    ours = set()
    for i in range(8):
        request = existing("echo", mode=pb.EXECUTION_MODE_ASYNC)
        request.invocation_metadata["note"] = f"{i}" * 3000  # about 3 KB a record
        ours.add(stub.InvokeFunction(request).execution_id)
    seen: list[str] = []
    start_after = ""
    while True:
        page = stub.ListExecutions(pb.ListExecutionsRequest(task_id="echo", limit=100, start_after=start_after))
        assert page.ByteSize() <= 20000 + 4000  # the budget, overshot by at most the record that fills it
        seen += [e.execution_id for e in page.executions]
        if not page.has_more:
            break
        start_after = page.next_start_after
    assert ours <= set(seen) and len(seen) == len(set(seen))
    assert len(seen) > 6  # more than one page's worth came, page after page


def test_function_names_beyond_the_bound_share_one_metrics_label(bounded: NodeProcess, http: httpx.Client) -> None:
    stub = bounded.stub()
    for i in range(12):
        stub.InvokeFunction(existing("hello", function_name=f"caller-chosen-{i}"))
    exposition = http.get("/metrics").text
    labels = set(
        re.findall(r'spearlet_executions_total\{function="([^"]*)",status="[a-z]+",task="hello"\}', exposition)
    )
    assert labels == {"caller-chosen-0", "caller-chosen-1", "caller-chosen-2", "_other"}


def test_the_cache_of_a_node_is_closed_to_other_users(bounded: NodeProcess) -> None:
    artifacts = Path(bounded.data_dir) / "artifacts"
    assert artifacts.is_dir() and artifacts.stat().st_mode & 0o044 == 0  # not listable by others
