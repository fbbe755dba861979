"""spearlet.client.Client against a real node process: every method, and each error as its exception."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from spearlet.client import (
    AlreadyExists,
    Client,
    EventKind,
    ExecutionNotFound,
    FailedPrecondition,
    FunctionFailed,
    InvalidArgument,
    Options,
    Overloaded,
    Status,
    TaskNotFound,
    Unauthenticated,
    Unavailable,
)
from tests.client.conftest import TOKEN, Guarded, max_overlap, timed_inputs
from tests.helpers import NodeProcess, metric, open_path, script

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(tasks: NodeProcess) -> Any:
    with Client(tasks.grpc_target) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- invoke ------------------------------------------------------------------------------------


def test_invoke_returns_plain_values_json_text_bytes_and_lists(client: Client) -> None:
    assert client.invoke("hello", name="Ada") == {"greeting": "Hello, Ada!"}
    assert client.invoke("hello", "shout", {"name": "Ada"}) == {"greeting": "HELLO, ADA!"}
    assert client.invoke("greet", "count", n=3) == [0, 1, 2]
    assert client.invoke("binary") == b"\xff\x00\x01"
    assert client.invoke("env", options=Options(environment={"GREETING": "plain text"})) == "plain text"


def test_parameters_are_packed_by_the_nodes_rules(client: Client) -> None:
    # bytes as BytesValue (base64 on a process's stdin), everything else as a Value; a mapping takes
    # names a keyword cannot (`options`)
    sent = client.invoke("echo", None, {"options": [1, 2.5, None]}, b=b"\x00\xff", s="text", t=True)
    assert sent == {"options": [1, 2.5, None], "b": "AP8=", "s": "text", "t": True}


@pytest.mark.parametrize("bad", [float("nan"), [1, float("inf")], {"deep": {"x": -float("inf")}}])
def test_nan_and_infinity_are_refused_before_anything_is_sent(bad: Any) -> None:
    nobody_there = Client(f"127.0.0.1:{free_port()}")  # a send would fail UNAVAILABLE
    with nobody_there, pytest.raises(InvalidArgument, match="parameter 'x': NaN and infinity") as refused:
        nobody_there.invoke("echo", x=bad)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_a_value_json_cannot_hold_is_refused_naming_the_parameter(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="parameter 'when'"):
        client.invoke("echo", when={"nested": b"bytes"})


def test_a_function_name_that_is_not_a_string_is_a_type_error(client: Client) -> None:
    with pytest.raises(TypeError, match="mapping after the function"):
        client.invoke("echo", {"x": 1})  # type: ignore[arg-type]


def test_a_failed_function_raises_function_failed_with_its_code_message_and_logs(client: Client) -> None:
    with pytest.raises(FunctionFailed) as failed:
        client.invoke("fail")
    failure = failed.value
    assert failure.status is Status.FAILED and failure.error_code == "NONZERO_EXIT"
    assert "the example always fails" in failure.message
    assert failure.logs == ["something went wrong: the example always fails"]
    assert client.execution(failure.execution_id).status() is Status.FAILED


def test_options_timeout_and_retries_reach_the_node(client: Client) -> None:
    with pytest.raises(FunctionFailed) as timed_out:
        client.invoke("sleep", options=Options(timeout=0.3), seconds=10)
    assert timed_out.value.status is Status.TIMEOUT and timed_out.value.error_code == "TIMEOUT"
    with pytest.raises(FunctionFailed) as failed:
        client.invoke("fail", options=Options(retries=1))
    assert client.execution(failed.value.execution_id).query().result.metrics["attempts"] == "2"


def test_a_clients_default_timeout_applies_unless_the_call_says_otherwise(tasks: NodeProcess) -> None:
    with Client(tasks.grpc_target, timeout=0.3) as hurried:
        with pytest.raises(FunctionFailed, match="TIMEOUT"):
            hurried.invoke("sleep", seconds=10)
        assert hurried.invoke("sleep", options=Options(timeout=5), seconds=0.5) == {
            "slept": pytest.approx(0.5, abs=0.3)
        }


def test_an_execution_id_or_idempotency_key_runs_the_function_once(client: Client) -> None:
    mine = Options(execution_id=f"mine-{time.time_ns()}")
    first = client.submit("sleep", options=mine, seconds=0.2)
    assert first.id == mine.execution_id
    assert client.submit("sleep", options=mine, seconds=0.2).id == first.id
    keyed = Options(idempotency_key=f"key-{time.time_ns()}")
    assert client.submit("hello", options=keyed).id == client.submit("hello", options=keyed).id
    assert client.invoke("sleep", options=mine, seconds=0.2) == {"slept": pytest.approx(0.2, abs=0.3)}


def test_a_callback_url_gets_the_final_record(client: Client) -> None:
    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/done"
        execution = client.submit("hello", options=Options(callback_url=url), name="Hook")
        execution.result()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received and execution.id.encode() in received[0]
    finally:
        server.shutdown()


# --- requests refused --------------------------------------------------------------------------


def test_request_errors_are_typed_and_keep_the_grpc_status(client: Client, tmp_path: Path) -> None:
    with pytest.raises(TaskNotFound) as unknown:
        client.invoke("no-such-task")
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND and "no-such-task" in unknown.value.details
    with pytest.raises(TaskNotFound):
        client.tasks.get("no-such-task")
    with pytest.raises(TaskNotFound):
        client.tasks.delete("no-such-task")
    for call in (
        lambda e: e.status(),
        lambda e: e.result(),
        lambda e: e.cancel(),
        lambda e: e.logs(),
        lambda e: list(e),
    ):
        with pytest.raises(ExecutionNotFound, match="'nope' not found"):
            call(client.execution("nope"))
    with pytest.raises(InvalidArgument, match="artifact_type"):
        client.tasks.register("bad", tmp_path, "cobol")
    path = script(open_path(tmp_path) / "t.sh", "#!/bin/sh\necho 1\n")
    client.tasks.register("twice", path)
    with pytest.raises(AlreadyExists):
        client.tasks.register("twice", path)
    busy = client.submit("sleep", seconds=30)
    try:
        with pytest.raises(FailedPrecondition):
            client.tasks.delete("sleep")
    finally:
        busy.cancel()
    with Client(f"127.0.0.1:{free_port()}") as nobody_there, pytest.raises(Unavailable):
        nobody_there.health()


def test_token_and_tls_from_arguments_or_the_clis_variables(guarded: Guarded, monkeypatch: pytest.MonkeyPatch) -> None:
    with guarded.client() as client:
        assert client.health().status == "healthy"
    with Client(guarded.target, tls_ca=guarded.certs.ca) as no_token, pytest.raises(Unauthenticated):
        no_token.health()
    with Client(guarded.target, token=TOKEN) as plaintext, pytest.raises(Unavailable):
        plaintext.health()  # a TLS node does not speak plaintext
    monkeypatch.setenv("SPEARLET_TARGET", guarded.target)
    monkeypatch.setenv("SPEARLET_TOKEN", TOKEN)
    monkeypatch.setenv("SPEARLET_TLS_CA", str(guarded.certs.ca))
    with Client() as from_environment:
        assert from_environment.invoke("hello", name="env") == {"greeting": "Hello, env!"}


def test_a_full_queue_is_overloaded(guarded: Guarded) -> None:
    with guarded.client() as client:
        running = [client.submit("sleep", seconds=30)]
        try:
            with pytest.raises(Overloaded) as refused:
                for _ in range(5):  # one runs, one waits: the next is refused
                    running.append(client.submit("sleep", seconds=30))
            assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for execution in running:
                execution.cancel(force=True)


def test_a_sync_call_handed_off_by_the_node_is_waited_for(guarded: Guarded) -> None:
    with guarded.client() as client:
        response = client.call("sleep", None, {"seconds": 1.5})
        assert response.result.status == Status.RUNNING  # the node's 1 s wait ran out
        assert client.invoke("sleep", seconds=1.5) == {"slept": pytest.approx(1.5, abs=0.3)}


# --- submit and Execution ----------------------------------------------------------------------


def test_submit_gives_an_execution_to_query_follow_and_wait_for(client: Client) -> None:
    execution = client.submit("sleep", seconds=0.5)
    assert execution.accepted is not None and execution.accepted.status_endpoint.endswith(f"{execution.id}/status")
    assert execution.status() in (Status.PENDING, Status.RUNNING) and not execution.done()
    events = list(execution)
    assert events[0].kind is EventKind.STATUS and events[-1].kind is EventKind.FINAL
    assert events[-1].status is Status.COMPLETED
    assert execution.result() == {"slept": pytest.approx(0.5, abs=0.3)} and execution.done()
    assert any(line.startswith("slept") for line in execution.logs())


def test_result_waits_on_the_watch_stream_without_polling(client: Client, tasks: NodeProcess) -> None:
    queries, watches = (
        metric(tasks, "spearlet_status_queries_total", transport="grpc"),
        metric(tasks, "spearlet_grpc_requests_total", method="WatchExecution"),
    )
    execution = client.submit("greet", "wait", seconds=3)
    assert execution.result() == {"waited": pytest.approx(3, abs=0.5)}
    assert metric(tasks, "spearlet_status_queries_total", transport="grpc") == queries  # not one query
    assert metric(tasks, "spearlet_grpc_requests_total", method="WatchExecution") == watches + 1


def test_result_with_a_timeout_raises_timeout_error_and_the_execution_goes_on(client: Client) -> None:
    execution = client.submit("sleep", seconds=1.5)
    with pytest.raises(TimeoutError):
        execution.result(timeout=0.3)
    assert execution.result(timeout=10) == {"slept": pytest.approx(1.5, abs=0.3)}


def test_cancel_stops_it_and_result_raises_cancelled(client: Client) -> None:
    execution = client.submit("sleep", seconds=30)
    assert execution.cancel(reason="changed my mind").success
    with pytest.raises(FunctionFailed) as cancelled:
        execution.result(timeout=10)
    assert cancelled.value.status is Status.CANCELLED and cancelled.value.error_code == "CANCELLED"
    assert not execution.cancel().success  # over already


def test_future_is_a_concurrent_futures_future(client: Client) -> None:
    futures: list[Future[Any]] = [client.submit("hello", name=str(i)).future() for i in range(3)]
    assert [f.result(timeout=20) for f in futures] == [{"greeting": f"Hello, {i}!"} for i in range(3)]
    failing = client.submit("fail").future()
    assert isinstance(failing.exception(timeout=20), FunctionFailed)


def test_an_execution_by_id_from_elsewhere(client: Client, tasks: NodeProcess) -> None:
    execution_id = client.submit("sleep", seconds=0.3).id
    with Client(tasks.grpc_target) as other:
        assert other.execution(execution_id).result() == {"slept": pytest.approx(0.3, abs=0.3)}


# --- stream ------------------------------------------------------------------------------------


def test_stream_yields_chunks_as_produced_then_holds_the_outcome(client: Client) -> None:
    stream = client.stream("greet", "count", n=4)
    assert list(stream) == [0, 1, 2, 3]
    assert stream.status is Status.COMPLETED and stream.execution_id
    with pytest.raises(FunctionFailed, match="NONZERO_EXIT"):
        list(client.stream("fail"))
    with pytest.raises(TaskNotFound):
        list(client.stream("no-such-task"))


def test_leaving_a_stream_early_cancels_the_execution(client: Client) -> None:
    stream = client.stream("drip")
    for chunk in stream:
        assert chunk == "line 0\n"  # a process's stdout line, as the node packs it
        break
    with pytest.raises(FunctionFailed) as ended:
        client.execution(stream.execution_id).result(timeout=10)  # the drip had 30 s to go
    assert ended.value.status is Status.CANCELLED


# --- map ---------------------------------------------------------------------------------------


def test_map_keeps_input_order_and_its_bound(client: Client) -> None:
    durations = [0.9, 0.2, 0.6, 0.2, 0.5, 0.2]
    results = list(client.map("timed", timed_inputs(durations), max_in_flight=2))
    assert [r["i"] for r in results] == list(range(len(durations)))
    assert max_overlap([(r["start"], r["end"]) for r in results]) == 2


def test_map_raises_a_failure_when_its_turn_comes(client: Client) -> None:
    results = client.map("echo", [{"n": 1}, {"n": float("nan")}])
    assert next(results) == {"n": 1}
    with pytest.raises(InvalidArgument):
        next(results)
    with pytest.raises(ValueError, match="max_in_flight"):
        list(client.map("echo", [{}], max_in_flight=0))


# --- tasks, executions, the node ---------------------------------------------------------------


def test_tasks_register_list_get_delete(client: Client, tmp_path: Path) -> None:
    path = script(
        open_path(tmp_path) / "double.py",
        "#!/usr/bin/env python3\nimport json,sys\nprint(json.load(sys.stdin)['x'] * 2)\n",
    )
    registered = client.tasks.register("double", path, description="doubles x", timeout_ms=5000)
    assert registered.created and registered.task.artifact_spec.metadata == {"timeout_ms": "5000"}
    assert client.invoke("double", x=21) == 42
    assert "double" in [t.task_id for t in client.tasks.list(page_size=2)]  # paged, every task
    shown = client.tasks.get("double", executions=5)
    assert shown.task.task_id == "double" and len(shown.executions) == 1
    removed = client.tasks.delete("double", cleanup=True)
    assert removed.deleted and removed.cleaned_executions == 1
    with pytest.raises(TaskNotFound):
        client.tasks.get("double")


def test_executions_list_pages_transparently_and_filters(client: Client) -> None:
    ids = {client.submit("hello", name=str(i)).id for i in range(5)}
    for execution_id in ids:
        client.execution(execution_id).result()
    listed = [e.execution_id for e in client.executions.list(task="hello", status="completed", page_size=2)]
    assert ids <= set(listed) and len(listed) == len(set(listed))
    assert not ids & {e.execution_id for e in client.executions.list(task="hello", status=Status.FAILED)}
    with pytest.raises(ValueError, match="unknown status"):
        client.executions.page(status="bogus")


def test_health_and_stats(client: Client) -> None:
    health = client.health()
    assert health.status == "healthy" and health.details.system_info["node"]
    with pytest.raises(FunctionFailed):
        client.invoke("fail")
    stats = client.stats(hours=1)
    assert stats.execution_stats.failed_executions >= 1
