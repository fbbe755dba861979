"""The HTTP gateway over real HTTP against a real node: JSON messages, SSE, callbacks, metrics."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tests.helpers import NodeProcess, script, start_node

pytestmark = pytest.mark.timeout(60)

STRING = "type.googleapis.com/google.protobuf.StringValue"
VALUE = "type.googleapis.com/google.protobuf.Value"


def invoke_body(task: str, mode: str = "SYNC", function: str = "", **params: Any) -> dict[str, Any]:
    return {
        "invocation_type": "INVOCATION_TYPE_EXISTING_TASK",
        "task_id": task,
        "function_name": function,
        "execution_mode": f"EXECUTION_MODE_{mode}",
        "parameters": [{"name": k, "value": {"@type": VALUE, "value": v}} for k, v in params.items()],
    }


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


@pytest.fixture(scope="module")
def http(node: NodeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.http_url, timeout=30) as client:
        yield client


def wait_status(http: httpx.Client, execution_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = http.get(f"/api/v1/executions/{execution_id}").json()
        if record["completed"]:
            return record
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sync_invoke_takes_and_gives_proto3_json(http: httpx.Client) -> None:
    body = invoke_body("hello", name="Ada")
    body["parameters"][0]["value"] = {"@type": STRING, "value": "Ada"}
    response = http.post("/api/v1/invoke", json=body)
    assert response.status_code == 200
    out = response.json()
    assert out["success"] is True
    assert out["result"]["status"] == "EXECUTION_STATUS_COMPLETED"
    assert out["result"]["result"] == {"@type": VALUE, "value": {"greeting": "Hello, Ada!"}}


def test_async_invoke_then_status_endpoint_and_record(http: httpx.Client) -> None:
    accepted = http.post("/api/v1/invoke", json=invoke_body("greet", "ASYNC", name="Bo")).json()
    assert accepted["result"]["status"] == "EXECUTION_STATUS_PENDING"
    record = wait_status(http, accepted["execution_id"])
    assert record["status"] == "COMPLETED" and record["result"] == {"greeting": "Hello, Bo!"}
    status = http.get(accepted["status_endpoint"]).json()
    assert status["found"] is True and status["result"]["result"]["value"] == {"greeting": "Hello, Bo!"}


def test_stream_sends_status_chunks_and_a_final_result(http: httpx.Client) -> None:
    with http.stream("POST", "/api/v1/invoke", json=invoke_body("greet", "STREAM", "count", n=3)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "result"
    assert [data["chunk_data"]["value"] for kind, data in events if kind == "chunk"] == [0, 1, 2]
    assert events[-1][1]["is_final"] is True and events[-1][1]["status"] == "EXECUTION_STATUS_COMPLETED"


def test_process_stdout_lines_stream_as_they_are_written(node: NodeProcess, http: httpx.Client, tmp_path: Path) -> None:
    ticker = script(tmp_path / "ticker.sh", '#!/bin/sh\nfor i in 1 2 3; do echo "{\\"tick\\": $i}"; sleep 0.3; done\n')
    http.post(
        "/api/v1/tasks",
        json={
            "task_name": "ticker",
            "artifact_spec": {"artifact_type": "process", "location": str(ticker)},
            "replace": True,
        },
    )
    arrivals = []
    started = time.monotonic()
    with http.stream("POST", "/api/v1/stream", json=invoke_body("ticker")) as response:
        for kind, data in sse_events(response):
            if kind == "chunk":
                arrivals.append((time.monotonic() - started, data["chunk_data"]["value"]))
    assert [v for _, v in arrivals] == [{"tick": 1}, {"tick": 2}, {"tick": 3}]
    assert arrivals[2][0] - arrivals[0][0] >= 0.5  # they came as produced, not all at the end


def test_closing_a_stream_cancels_the_execution(http: httpx.Client) -> None:
    with http.stream("POST", "/api/v1/stream", json=invoke_body("sleep", seconds=30)) as response:
        _, first = next(sse_events(response))
    execution_id = first["execution_id"]
    record = wait_status(http, execution_id, timeout=10)
    assert record["status"] == "CANCELLED"


def test_events_of_a_running_execution_start_with_its_current_state(http: httpx.Client) -> None:
    accepted = http.post("/api/v1/invoke", json=invoke_body("sleep", "ASYNC", seconds=0.6)).json()
    time.sleep(0.3)
    with http.stream("GET", f"/api/v1/executions/{accepted['execution_id']}/events") as response:
        events = list(sse_events(response))
    assert events[0][0] == "status" and events[0][1]["status"] == "EXECUTION_STATUS_RUNNING"
    assert events[-1][0] == "result" and events[-1][1]["status"] == "EXECUTION_STATUS_COMPLETED"
    # A watcher that comes after the end gets the result at once.
    with http.stream("GET", f"/api/v1/executions/{accepted['execution_id']}/events") as response:
        late = list(sse_events(response))
    assert [kind for kind, _ in late] == ["result"]


def test_cancel_over_http(http: httpx.Client) -> None:
    accepted = http.post("/api/v1/invoke", json=invoke_body("sleep", "ASYNC", seconds=30)).json()
    out = http.post(
        f"/api/v1/executions/{accepted['execution_id']}/cancel", json={"reason": "no", "force": True}
    ).json()
    assert out["success"] is True and out["final_status"] == "EXECUTION_STATUS_CANCELLED"
    again = http.post(f"/api/v1/executions/{accepted['execution_id']}/cancel").json()
    assert again.get("success", False) is False


def test_task_crud(http: httpx.Client, tmp_path: Path) -> None:
    path = script(tmp_path / "t.sh", "#!/bin/sh\necho '{\"t\": 1}'\n")
    spec = {"task_name": "crud", "artifact_spec": {"artifact_type": "process", "location": str(path)}}
    assert http.post("/api/v1/tasks", json=spec).status_code == 201
    conflict = http.post("/api/v1/tasks", json=spec)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "ALREADY_EXISTS"
    assert http.post("/api/v1/tasks", json={**spec, "replace": True}).status_code == 200
    assert "crud" in [t["task_id"] for t in http.get("/api/v1/tasks", params={"prefix": "cr"}).json()["tasks"]]
    http.post("/api/v1/invoke", json=invoke_body("crud"))
    task = http.get("/api/v1/tasks/crud").json()
    assert task["found"] is True and len(task["executions"]) == 1
    removed = http.delete("/api/v1/tasks/crud", params={"cleanup_executions": True}).json()
    assert removed["deleted"] is True and removed["cleaned_executions"] == 1
    assert http.get("/api/v1/tasks/crud").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/v1/invoke", {"invocation_typ": 2}, 400, "INVALID_ARGUMENT"),
        ("POST", "/api/v1/invoke", {"invocation_type": 2}, 400, "INVALID_ARGUMENT"),
        ("POST", "/api/v1/invoke", {"invocation_type": 2, "task_id": "nope"}, 404, "NOT_FOUND"),
        ("POST", "/api/v1/invoke", {"invocation_type": 2, "task_id": "echo", "parameters": [{"name": "x", "value": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"}}]}, 400, "INVALID_ARGUMENT"),
        ("POST", "/api/v1/stream", {"invocation_type": 2, "task_id": "nope"}, 404, "NOT_FOUND"),
        ("GET", "/api/v1/executions/nope", None, 404, "NOT_FOUND"),
        ("GET", "/api/v1/executions/nope/status", None, 404, "NOT_FOUND"),
        ("GET", "/api/v1/executions/nope/events", None, 404, "NOT_FOUND"),
        ("POST", "/api/v1/executions/nope/cancel", None, 404, "NOT_FOUND"),
        ("GET", "/api/v1/executions?status=SLEEPING", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/api/v1/executions?limit=many", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/api/v1/stats?time_range_hours=-1", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/api/v1/no-such-route", None, 404, "NOT_FOUND"),
        ("DELETE", "/api/v1/invoke", None, 405, "METHOD_NOT_ALLOWED"),
    ],
)  # fmt: skip
def test_errors_are_json_with_a_code_and_the_right_status(
    http: httpx.Client, method: str, path: str, body: Any, status: int, code: str
) -> None:
    response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"code": code, "message": response.json()["error"]["message"]}}
    assert response.json()["error"]["message"]


def test_a_validation_error_names_the_parameter(http: httpx.Client) -> None:
    response = http.get("/api/v1/stats", params={"time_range_hours": -1})
    assert response.status_code == 400
    assert "time_range_hours" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "application/octet-stream", None, "application/json"],
)
def test_a_body_is_read_as_json_whatever_its_content_type_says(http: httpx.Client, content_type: str | None) -> None:
    body = json.dumps(invoke_body("hello", name="Ada")).encode()
    headers = {"content-type": content_type} if content_type else {}
    response = http.post("/api/v1/invoke", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["result"]["value"] == {"greeting": "Hello, Ada!"}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"name=Ada", "not JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"invocation_type": 2, "task_id": "echo", "parameters": {"x": NaN}}', "NaN"),
        (b"\xff\xfe{", "not JSON"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(http: httpx.Client, body: bytes, says: str) -> None:
    response = http.post("/api/v1/invoke", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert says in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "parameters",
    [
        [{"name": "s", "value": "Ada"}, {"name": "n", "value": 3}, {"name": "o", "value": {"a": [1, None]}}],
        {"s": "Ada", "n": 3, "o": {"a": [1, None]}},
        [{"name": "s", "value": {"@type": STRING, "value": "Ada"}}, {"name": "n", "value": {"@type": VALUE, "value": 3}},
         {"name": "o", "value": {"@type": VALUE, "value": {"a": [1, None]}}}],
    ],
    ids=["plain-values", "an-object", "proto3-json"],
)  # fmt: skip
def test_parameters_may_be_plain_json_values_or_an_object(http: httpx.Client, parameters: Any) -> None:
    body = {"invocation_type": "INVOCATION_TYPE_EXISTING_TASK", "task_id": "echo", "parameters": parameters}
    response = http.post("/api/v1/invoke", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["result"]["value"] == {"s": "Ada", "n": 3, "o": {"a": [1, None]}}


def test_an_unknown_field_is_named_in_snake_case_with_the_fields_there_are(http: httpx.Client) -> None:
    message = http.post("/api/v1/invoke", json={"invocation_typ": 2}).json()["error"]["message"]
    assert "'invocation_typ'" in message and "invocation_type, task_name" in message
    assert "invocationType" not in message
    nested = http.post("/api/v1/invoke", json={"invocation_type": 2, "context": {"timeout": 5}}).json()
    assert "timeout_ms" in nested["error"]["message"] and "timeoutMs" not in nested["error"]["message"]


def test_responses_print_fields_that_hold_their_default_value(
    node: NodeProcess, http: httpx.Client, tmp_path: Path
) -> None:
    path = script(tmp_path / "fresh.sh", "#!/bin/sh\necho 1\n")
    http.post(
        "/api/v1/tasks",
        json={"task_name": "no-history", "artifact_spec": {"artifact_type": "process", "location": str(path)}},
    )
    accepted = http.post("/api/v1/invoke", json=invoke_body("no-history", "ASYNC")).json()
    assert accepted["estimated_completion_ms"] == "0"  # int64: a string in the proto3 JSON mapping
    assert accepted["instance_id"] == "" and accepted["result"]["error_code"] == ""
    wait_status(http, accepted["execution_id"])
    again = http.post(f"/api/v1/executions/{accepted['execution_id']}/cancel").json()
    assert again["success"] is False and again["final_status"] == "EXECUTION_STATUS_COMPLETED"


def test_an_oversized_body_is_413(http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/invoke", content=b"{" + b" " * (9 << 20) + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_full_queue_is_429(tmp_path: Path) -> None:
    node = start_node(tmp_path / "data", env={"SPEARLET_MAX_PENDING": "1", "SPEARLET_MAX_CONCURRENCY": "1"})
    try:
        with httpx.Client(base_url=node.http_url, timeout=30) as http:
            codes = [
                http.post("/api/v1/invoke", json=invoke_body("sleep", "ASYNC", seconds=5)).status_code for _ in range(4)
            ]
            assert codes[:2] == [200, 200] and codes[2:] == [429, 429]
            refused = http.post("/api/v1/invoke", json=invoke_body("sleep", "ASYNC", seconds=5))
            assert refused.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    finally:
        assert node.stop() == 0


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    failures_left = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if _Receiver.failures_left > 0:
            _Receiver.failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        _Receiver.received.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/done"
    server.shutdown()


def test_a_callback_posts_the_final_record_once_retrying_failures(http: httpx.Client, receiver: str) -> None:
    _Receiver.failures_left = 1  # the first delivery fails: it is retried
    body = invoke_body("hello", "ASYNC", name="Cy")
    body["invocation_metadata"] = {"callback_url": receiver}
    accepted = http.post("/api/v1/invoke", json=body).json()
    deadline = time.monotonic() + 15
    while not _Receiver.received:
        assert time.monotonic() < deadline, "no callback arrived"
        time.sleep(0.05)
    time.sleep(0.3)
    assert len(_Receiver.received) == 1
    record = _Receiver.received[0]
    assert record["execution_id"] == accepted["execution_id"]
    assert record["status"] == "COMPLETED" and record["result"] == {"greeting": "Hello, Cy!"}


def test_a_callback_outside_the_allow_list_is_refused(http: httpx.Client) -> None:
    body = invoke_body("hello", "ASYNC")
    body["invocation_metadata"] = {"callback_url": "http://192.0.2.10/hook"}
    response = http.post("/api/v1/invoke", json=body)
    assert response.status_code == 400 and "callback_allow" in response.json()["error"]["message"]
    body["invocation_metadata"] = {"callback_url": "ftp://127.0.0.1/x"}
    assert http.post("/api/v1/invoke", json=body).status_code == 400


def test_metrics_expose_execution_grpc_and_pool_figures(node: NodeProcess, http: httpx.Client) -> None:
    from spearlet.api.grpc import spearlet_pb2 as pb
    from tests.helpers import existing

    stub = node.stub()
    stub.InvokeFunction(existing("greet"))
    stub.InvokeFunction(existing("fail"))
    stub.GetExecutionStatus(pb.GetExecutionStatusRequest(execution_id="x"))
    text = http.get("/metrics").text
    assert 'spearlet_executions_total{function="",status="completed",task="greet"}' in text
    assert 'spearlet_executions_total{function="",status="failed",task="fail"}' in text
    assert 'spearlet_execution_duration_seconds_bucket{function="",le="0.005",task="greet"}' in text
    assert 'spearlet_grpc_requests_total{code="OK",method="InvokeFunction"}' in text
    assert 'spearlet_grpc_request_duration_seconds_count{method="InvokeFunction"}' in text
    assert 'spearlet_status_queries_total{transport="grpc"}' in text
    for name in ("spearlet_running_executions", "spearlet_queue_length", "spearlet_pending_executions",
                 "spearlet_completion_rate", "spearlet_queue_wait_seconds_count", "spearlet_pool_warm_hits_total"):  # fmt: skip
        assert name in text
    assert 'spearlet_pool_instances{runtime="python",task="greet"} 1.0' in text


def test_health_and_stats(http: httpx.Client) -> None:
    assert http.get("/health").json()["status"] == "healthy"
    health = http.get("/api/v1/health").json()
    assert health["details"]["active_tasks"] >= 4
    stats = http.get("/api/v1/stats", params={"time_range_hours": 1}).json()
    assert int(stats["service_stats"]["total_tasks"]) >= 4
    assert stats["execution_stats"]["failed_executions"] >= 0  # printed even when 0


def test_openapi_and_docs_are_served_and_every_route_answers(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert http.get("/docs").status_code == 200
    accepted = http.post("/api/v1/invoke", json=invoke_body("hello", "ASYNC")).json()
    wait_status(http, accepted["execution_id"])
    ids = {"execution_id": accepted["execution_id"], "task_id": "hello"}
    bodies = {"/api/v1/invoke": invoke_body("hello"), "/api/v1/stream": invoke_body("hello"),
              "/api/v1/tasks": {"task_name": "hello", "artifact_spec": {"artifact_type": "process", "location": "/bin/true"}}}  # fmt: skip
    checked = 0
    for path, methods in spec["paths"].items():
        for method in methods:
            if method == "delete":
                continue  # deleting would remove the task the others use; DeleteTask is tested in test_task_crud
            url = path.format(**ids)
            # Streamed, the body left unread: /api/v1/events (every execution change) never ends.
            with http.stream(method.upper(), url, json=bodies.get(path)) as response:
                assert response.status_code < 500 and response.status_code != 405, (method, url, response.status_code)
            checked += 1
    assert checked >= 13


def test_docs_load_swagger_ui_from_the_node_and_nothing_from_elsewhere(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assert "://" not in page.text  # no CDN, no favicon from a web site
    assert '"validatorUrl": null' in page.text  # Swagger UI's default sends the spec's URL to an online validator
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert {"/docs/swagger-ui/swagger-ui-bundle.js", "/docs/swagger-ui/swagger-ui.css", "/openapi.json"} <= set(urls)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert http.get(url).status_code == 200, url
    bundle = http.get("/docs/swagger-ui/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert "SwaggerUIBundle" in bundle.text
