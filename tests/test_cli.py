"""The `spearlet` command against a real node, as a script would use it (JSON on a pipe)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import NodeProcess, metric, script, start_node

pytestmark = pytest.mark.timeout(60)


def cli(node: NodeProcess, *args: str, expect: int = 0) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "spearlet", *args, "--target", node.grpc_target],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == expect, result.stdout + result.stderr
    return json.loads(result.stdout) if result.stdout.strip().startswith("{") else result


def test_invoke_prints_the_response_as_json(node: NodeProcess) -> None:
    out = cli(node, "invoke", "hello", "-p", "name=Ada", "--function", "shout")
    assert out["success"] is True
    assert out["result"]["result"]["value"] == {"greeting": "HELLO, ADA!"}


def test_invoke_parses_json_values_and_keeps_other_text(node: NodeProcess) -> None:
    out = cli(node, "invoke", "echo", "-p", "n=3", "-p", 'o={"a": [1]}', "-p", "s=plain words")
    assert out["result"]["result"]["value"] == {"n": 3, "o": {"a": [1]}, "s": "plain words"}


def test_failed_function_exits_1_and_refused_request_exits_2(node: NodeProcess) -> None:
    failed = cli(node, "invoke", "fail", expect=1)
    assert failed["result"]["error_code"] == "NONZERO_EXIT"
    assert cli(node, "status", failed["execution_id"], expect=1)["result"]["status"] == "EXECUTION_STATUS_FAILED"
    refused = cli(node, "invoke", "no-such-task", expect=2)
    assert "NOT_FOUND" in refused.stderr


def test_version_prints_the_installed_version() -> None:
    result = subprocess.run([sys.executable, "-m", "spearlet", "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"spearlet {importlib.metadata.version('spearlet')}\n"


@pytest.mark.parametrize(
    "args",
    [
        ("status", "nope"),
        ("status", "nope", "--wait"),
        ("task", "show", "nope"),
        ("cancel", "nope"),
        ("invoke", "nope"),
    ],
    ids=" ".join,
)
def test_an_unknown_task_or_execution_is_a_refused_request_exit_2(node: NodeProcess, args: tuple[str, ...]) -> None:
    result = cli(node, *args, expect=2)
    assert "NOT_FOUND" in result.stderr and "'nope'" in result.stderr


def test_invoking_an_unknown_task_points_at_task_add(node: NodeProcess) -> None:
    stderr = cli(node, "invoke", "nope", "--stream", expect=2).stderr
    assert "spearlet task add nope PATH" in " ".join(stderr.split())
    assert "create_if_not_exists" not in stderr  # the CLI has no such option


def test_stats_prints_the_execution_figures_by_their_contract_names(node: NodeProcess) -> None:
    cli(node, "invoke", "fail", expect=1)
    figures = cli(node, "stats", "--hours", "1")
    assert figures["execution_stats"]["failed_executions"] >= 1
    assert set(figures["execution_stats"]) >= {"running_executions", "pending_executions", "completed_executions"}
    assert "fail" in [t["task_id"] for t in figures["task_stats"]["most_active_tasks"]]


def test_timeout_option_is_honoured(node: NodeProcess) -> None:
    out = cli(node, "invoke", "sleep", "-p", "seconds=10", "--timeout", "300", expect=1)
    assert out["result"]["status"] == "EXECUTION_STATUS_TIMEOUT"


def test_async_then_status_wait_then_executions(node: NodeProcess) -> None:
    accepted = cli(node, "invoke", "sleep", "-p", "seconds=0.2", "--async")
    execution_id = accepted["execution_id"]
    assert accepted["status_endpoint"].endswith(f"{execution_id}/status")
    final = cli(node, "status", execution_id, "--wait")
    assert final["result"]["status"] == "EXECUTION_STATUS_COMPLETED"
    listed = cli(node, "executions", "--task", "sleep", "--status", "completed")
    assert execution_id in [e["execution_id"] for e in listed["executions"]]


def test_wait_follows_the_watch_stream_and_queries_the_status_once(node: NodeProcess) -> None:
    accepted = cli(node, "invoke", "sleep", "-p", "seconds=2", "--async")
    queries = metric(node, "spearlet_status_queries_total", transport="grpc")
    final = cli(node, "status", accepted["execution_id"], "--wait")
    assert final["result"]["status"] == "EXECUTION_STATUS_COMPLETED"
    assert metric(node, "spearlet_status_queries_total", transport="grpc") == queries + 1  # the end, with logs


def test_a_parameter_given_twice_is_refused(node: NodeProcess) -> None:
    refused = cli(node, "invoke", "echo", "-p", "n=1", "-p", "n=2", expect=2)
    assert "parameter 'n' is given more than once" in refused.stderr


def test_async_wait_follows_to_the_end(node: NodeProcess) -> None:
    out = cli(node, "invoke", "hello", "--async", "--wait")
    assert out["result"]["status"] == "EXECUTION_STATUS_COMPLETED"
    assert out["logs"] == ["greeting world"]


def test_cancel_a_running_execution(node: NodeProcess) -> None:
    accepted = cli(node, "invoke", "sleep", "-p", "seconds=60", "--async")
    out = cli(node, "cancel", accepted["execution_id"], "--reason", "changed my mind")
    assert out["success"] is True and out["final_status"] == "EXECUTION_STATUS_CANCELLED"
    again = cli(node, "cancel", accepted["execution_id"], expect=1)
    assert again["success"] is False and "already finished" in again["message"]  # a false success is printed


def test_task_add_ls_show_rm(node: NodeProcess, tmp_path: Path) -> None:
    path = script(
        tmp_path / "twice.py", "#!/usr/bin/env python3\nimport json,sys\nprint(json.load(sys.stdin)['x'] * 2)\n"
    )
    added = cli(node, "task", "add", "twice", str(path), "--meta", "timeout_ms=5000", "--description", "doubles x")
    assert added["created"] is True
    assert added["task"]["artifact_spec"]["metadata"] == {"timeout_ms": "5000"}
    cli(node, "task", "add", "twice", str(path), expect=2)  # exists, no --replace
    assert cli(node, "invoke", "twice", "-p", "x=21")["result"]["result"]["value"] == 42
    listed = cli(node, "task", "ls", "--prefix", "tw")
    assert [t["task_id"] for t in listed["tasks"]] == ["twice"]
    shown = cli(node, "task", "show", "twice")
    assert shown["task"]["execution_count"] == 1 and len(shown["executions"]) == 1
    removed = cli(node, "task", "rm", "twice", "--cleanup")
    assert removed["deleted"] is True and removed["cleaned_executions"] == 1
    cli(node, "task", "show", "twice", expect=2)  # gone: an unknown task


def test_task_ls_pages(node: NodeProcess) -> None:
    first = cli(node, "task", "ls", "--limit", "2")
    assert len(first["tasks"]) == 2 and first["has_more"] is True
    rest = cli(node, "task", "ls", "--start-after", first["next_start_after"])
    assert not {t["task_id"] for t in first["tasks"]} & {t["task_id"] for t in rest["tasks"]}


def test_serve_reads_a_config_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[spearlet]\nnode_id = "from-file"\ntasks = "none"\nmax_sync_wait_s = 30\n')
    node = start_node(tmp_path / "data", "--config", str(config), env={"SPEARLET_NODE_ID": "from-env"})
    try:
        assert any("'from-env'" in line for line in node.output)
        assert cli(node, "task", "ls").get("tasks", []) == []  # `tasks = "none"` from the file
    finally:
        assert node.stop() == 0
