"""The dashboard's pages and the endpoints only it needed, over real HTTP against a node in this
process (one per module): the node-wide event stream, listing by time as records, parameters in
the record view, time series, pools, cluster peers, re-run."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spearlet.config import Settings
from spearlet.node import Node
from spearlet.observability.feed import ExecutionFeed
from tests.helpers import flush_redis

pytestmark = pytest.mark.timeout(60)

BYTES_VALUE = "type.googleapis.com/google.protobuf.BytesValue"


@pytest.fixture(scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    n = Node(Settings(data_dir=tmp_path_factory.mktemp("dash") / "data", grpc_port=0, http_port=0, node_id="dash-1"))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def http(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}", timeout=30) as client:
        yield client


async def invoke(http: httpx.AsyncClient, task: str, mode: str = "SYNC", **body: Any) -> dict[str, Any]:
    response = await http.post(
        "/api/v1/invoke",
        json={
            "invocation_type": "INVOCATION_TYPE_EXISTING_TASK",
            "task_id": task,
            "execution_mode": f"EXECUTION_MODE_{mode}",
            **body,
        },
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    kind = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


async def test_the_pages_are_served_at_the_root_and_under_ui_with_a_policy_that_runs_only_their_own_files(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/", "/ui/", "/ui/index.html"):
        page = await http.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/js/main.js">' in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    script = await http.get("/ui/js/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert (await http.get("/ui/js/nothing.js")).status_code == 404


async def test_executions_list_as_records_created_since_a_time_newest_first(http: httpx.AsyncClient) -> None:
    before = await invoke(http, "hello", parameters={"name": "old"})
    await asyncio.sleep(0.01)
    since = int(time.time() * 1000)
    newer = [(await invoke(http, "hello", parameters={"name": f"n{i}"}))["execution_id"] for i in range(3)]

    listed = (
        await http.get("/api/v1/executions", params={"task_id": "hello", "view": "record", "since_ms": since})
    ).json()

    assert [r["execution_id"] for r in listed["executions"]] == newer[::-1]
    assert listed["has_more"] is False
    row = listed["executions"][0]
    assert row["status"] == "COMPLETED" and row["created_at_ms"] >= since and "result" not in row
    info = (await http.get("/api/v1/executions", params={"task_id": "hello", "since_ms": since})).json()
    assert [e["execution_id"] for e in info["executions"]] == newer[::-1]  # the proto view filters alike
    everything = (await http.get("/api/v1/executions", params={"task_id": "hello", "view": "record"})).json()
    assert before["execution_id"] in {r["execution_id"] for r in everything["executions"]}
    bad = await http.get("/api/v1/executions", params={"view": "table"})
    assert bad.status_code == 400 and "view" in bad.json()["error"]["message"]


async def test_a_record_shows_its_parameters_on_request_bytes_as_base64(http: httpx.AsyncClient) -> None:
    blob = b"\x00\xffdata"
    parameters = [
        {"name": "blob", "value": {"@type": BYTES_VALUE, "value": base64.b64encode(blob).decode()}},
        {"name": "n", "value": 3},
    ]
    done = await invoke(http, "echo", parameters=parameters)
    path = f"/api/v1/executions/{done['execution_id']}"

    shown = (await http.get(path, params={"include_params": "true"})).json()

    assert shown["parameters"] == {"blob": {"bytes_base64": base64.b64encode(blob).decode()}, "n": 3}
    assert "parameters" not in (await http.get(path)).json()


async def test_the_event_stream_shows_an_execution_from_acceptance_to_its_end(http: httpx.AsyncClient) -> None:
    async with http.stream("GET", "/api/v1/events") as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = sse(response)
        accepted = await invoke(http, "greet", "ASYNC", parameters={"name": "Live"})
        seen: list[str] = []
        async with asyncio.timeout(20):
            async for kind, data in events:
                assert kind == "executions"
                mine = [v for v in data["executions"] if v["execution_id"] == accepted["execution_id"]]
                seen += [v["status"] for v in mine]
                if "COMPLETED" in seen:
                    break
        view = mine[-1]
        assert view["task_id"] == "greet" and view["execution_mode"] == "ASYNC" and view["completed"] is True
        assert "result" not in view and "parameters" not in view


async def test_event_streams_beyond_the_limit_are_refused_with_429(node: Node, http: httpx.AsyncClient) -> None:
    real = node.dashboard.feed
    node.dashboard.feed = ExecutionFeed(real._view, max_subscribers=1)
    try:
        async with http.stream("GET", "/api/v1/events") as first:
            assert first.status_code == 200
            await anext(first.aiter_lines())  # subscribed once the body starts
            refused = await http.get("/api/v1/events")
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        deadline = time.monotonic() + 10
        while True:  # the closed stream frees its place
            async with http.stream("GET", "/api/v1/events") as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        node.dashboard.feed = real


async def test_time_series_count_what_finished_in_the_current_step(http: httpx.AsyncClient) -> None:
    start = (await http.get("/api/v1/timeseries", params={"window_s": 60})).json()["points"][-1]
    await invoke(http, "hello", parameters={"name": "a"})
    await invoke(http, "fail")

    series = (await http.get("/api/v1/timeseries", params={"window_s": 60})).json()

    assert series["step_s"] == 10 and series["window_s"] == 60 and len(series["points"]) == 6
    now = series["points"][-1]
    if now["t_ms"] == start["t_ms"]:  # the same step (a step boundary may fall between the reads)
        assert now["completed"] == start["completed"] + 1 and now["failed"] == start["failed"] + 1
    assert now["completed"] >= 1 and now["failed"] >= 1 and now["p95_ms"] >= now["p50_ms"] >= 0
    assert (await http.get("/api/v1/timeseries", params={"window_s": 5})).status_code == 400


async def test_pools_show_the_warm_python_task_and_its_warm_hits(http: httpx.AsyncClient) -> None:
    def greet(pools: dict[str, Any]) -> dict[str, Any]:
        return next(p for p in pools["pools"] if p["task_id"] == "greet")

    before = greet((await http.get("/api/v1/pools")).json())
    await invoke(http, "greet", parameters={"name": "warm"})

    after = greet((await http.get("/api/v1/pools")).json())

    assert after["runtime"] == "python" and after["instances"] >= 1 and after["min_instances"] == 1
    assert after["warm_hits"] == before["warm_hits"] + 1
    assert after["idle"] == after["instances"]


async def test_cluster_says_single_for_a_node_with_its_own_store(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/v1/cluster")).json() == {"mode": "single", "node_id": "dash-1", "peers": []}


async def test_a_rerun_runs_the_same_call_again_as_a_new_async_execution(node: Node, http: httpx.AsyncClient) -> None:
    blob = base64.b64encode(b"\x01\x02").decode()
    first = await invoke(
        http,
        "echo",
        parameters=[{"name": "blob", "value": {"@type": BYTES_VALUE, "value": blob}}, {"name": "n", "value": 1}],
        context={"timeout_ms": "4321", "environment": {"COLOUR": "blue"}},
        invocation_metadata={"idempotency_key": "once", "team": "ops"},
    )

    again = (await http.post(f"/api/v1/executions/{first['execution_id']}/rerun")).json()

    assert again["rerun_of"] == first["execution_id"] and again["execution_id"] != first["execution_id"]
    assert again["status_endpoint"].endswith(f"/api/v1/executions/{again['execution_id']}/status")
    original = await node.store.get_execution(first["execution_id"])
    rerun = await node.store.get_execution(again["execution_id"])
    assert original is not None and rerun is not None
    assert rerun.params == original.params == {"blob": b"\x01\x02", "n": 1}
    assert (rerun.task_id, rerun.timeout_ms, rerun.environment) == ("echo", 4321, {"COLOUR": "blue"})
    assert rerun.metadata == {"team": "ops", "rerun_of": first["execution_id"]}
    missing = await http.post("/api/v1/executions/nope/rerun")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


async def test_cluster_lists_every_member_with_its_heartbeat(tmp_path: Path, redis_url: str) -> None:
    flush_redis(redis_url)
    nodes = [
        Node(Settings(data_dir=tmp_path / name, grpc_port=0, http_port=0, store=redis_url, node_id=name, tasks="none"))
        for name in ("c-1", "c-2")
    ]
    for n in nodes:
        await n.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{nodes[0].http_port}", timeout=30) as http:
            cluster = (await http.get("/api/v1/cluster")).json()
    finally:
        for n in nodes:
            await n.stop()

    assert cluster["mode"] == "cluster" and cluster["node_id"] == "c-1"
    assert cluster["peers"] == [
        {"node_id": "c-1", "alive": True, "running_here": 0, "self": True},
        {"node_id": "c-2", "alive": True, "running_here": 0, "self": False},
    ]
