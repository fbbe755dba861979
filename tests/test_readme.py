"""The README is the reference: its CLI walkthrough runs as written (its commands are read from the
README itself), and the code points at it rather than at documents outside the repository."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, open_path

pytestmark = pytest.mark.timeout(90)

README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough() -> list[list[str]]:
    """The `$ spearlet ...` commands of the CLI worked example, without their comments."""
    section = README.read_text().split("## Worked example: the CLI", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line[2:], comments=True)[1:] for line in section.splitlines() if line.startswith("$ spearlet ")]


def command(*words: str) -> list[str]:
    """The walkthrough's one command that has all these words."""
    found = [c for c in walkthrough() if set(words) <= set(c)]
    assert len(found) == 1, f"the README's walkthrough has no single command with {words}: {found}"
    return found[0]


def spearlet(node: NodeProcess, args: list[str], execution_id: str = "") -> list[str]:
    filled = [execution_id if a == "<execution-id>" else a for a in args]
    return [sys.executable, "-m", "spearlet", *filled, "--target", node.grpc_target]


def test_the_walkthrough_cancels_the_sleep_while_it_is_watched_and_then_lists_it(node: NodeProcess) -> None:
    accepted = subprocess.run(
        spearlet(node, command("invoke", "sleep", "--async")), capture_output=True, text=True, timeout=30
    )
    assert accepted.returncode == 0, accepted.stderr
    execution_id = json.loads(accepted.stdout)["execution_id"]
    watch = subprocess.Popen(
        spearlet(node, command("status", "--watch"), execution_id), stdout=subprocess.PIPE, text=True
    )
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())  # the watch shows the sleep before the cancel
        assert first["status"] in ("EXECUTION_STATUS_PENDING", "EXECUTION_STATUS_RUNNING") and not first["is_final"]
        started = time.monotonic()
        cancelled = subprocess.run(
            spearlet(node, command("cancel"), execution_id), capture_output=True, text=True, timeout=30
        )
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        assert json.loads(cancelled.stdout)["final_status"] == "EXECUTION_STATUS_CANCELLED"
        rest = [json.loads(line) for line in watch.stdout]
        assert rest[-1]["is_final"] and rest[-1]["status"] == "EXECUTION_STATUS_CANCELLED"
        assert watch.wait(10) == 1  # the watched execution did not complete
        assert time.monotonic() - started < 10  # the sleep was stopped, not waited for
    finally:
        watch.kill()
        watch.wait()
    listing = subprocess.run(
        spearlet(node, command("executions", "CANCELLED")), capture_output=True, text=True, timeout=30
    )
    assert execution_id in [e["execution_id"] for e in json.loads(listing.stdout)["executions"]]


def test_the_walkthrough_sleeps_long_enough_to_be_cancelled_by_hand() -> None:
    seconds = re.search(r"seconds=(\d+)", " ".join(command("invoke", "sleep", "--async")))
    assert seconds and int(seconds.group(1)) >= 30  # time to type the cancel in another terminal


def test_sources_and_tests_cite_no_design_document_outside_the_repository() -> None:
    outside = "DESIGN" + ".md"  # spelled apart so that this file does not cite it
    root = README.parent
    files = [p for d in ("src", "tests", "bench", "scripts") for p in (root / d).rglob("*") if p.is_file()]
    citing = [
        str(p.relative_to(root))
        for p in files
        if p.suffix in (".py", ".proto", ".toml", ".md", ".sh", ".pyi") and outside in p.read_text(errors="replace")
    ]
    assert citing == [], "point at README sections instead"


def test_the_architecture_map_names_only_files_that_exist() -> None:
    """Every file or folder ARCHITECTURE.md names exists (its recipes name the files one would add)."""
    text = (README.parent / "ARCHITECTURE.md").read_text()
    text = text.split("## Extension points", 1)[0] + text.split("## Invariants", 1)[1]
    named = set(re.findall(r"\b([a-z_]+(?:/[a-z_]+)*(?:\.py|\.proto|\.md|/))(?=[\s`,):;.]|$)", text, re.MULTILINE))
    paths = [p.relative_to(README.parent).as_posix() for p in README.parent.glob("[!.]*/**/*")]
    paths += [f"{p}/" for p in paths] + [p.name + "/" * p.is_dir() for p in README.parent.iterdir()]
    missing = [name for name in sorted(named) if not any(p == name or p.endswith("/" + name) for p in paths)]
    assert len(named) > 40 and missing == []


def python_blocks(heading: str) -> list[str]:
    section = README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize(
    ("heading", "index", "expected"),
    [
        ("Worked example: Python", 0, ["{'greeting': 'Hello, Ada!'}", "{'slept': 1", "NONZERO_EXIT ['something"]),
        ("Python client", 1, ["{'greeting': 'Hello, Ada!'}", "{'slept': 1", "0\n1\n2\n", "[{'greeting': 'Hello, a!'}"]),
        (
            "SPEAR today: InvocationService, ExecutionService, InstanceService",
            0,
            ["EXECUTION_STATUS_COMPLETED {'greeting': 'Hello, Ada!'}\nTrue\nTrue\n"],
        ),
    ],
)
def test_the_python_client_examples_run_as_written(
    node: NodeProcess, heading: str, index: int, expected: list[str]
) -> None:
    code = python_blocks(heading)[index].replace('"127.0.0.1:50052"', repr(node.grpc_target))
    env = {**os.environ, "SPEARLET_TARGET": node.grpc_target}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert ran.returncode == 0, ran.stderr
    for text in expected:
        assert text in ran.stdout, ran.stdout


def curl_commands() -> list[str]:
    """The `curl` commands of the HTTP worked example, in order, each a logical line (a quoted body
    may span lines)."""
    section = README.read_text().split("## Worked example: HTTP", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            if pending.startswith("curl "):
                commands.append(pending)
            pending = ""
    return commands


def test_the_http_examples_run_as_written(node: NodeProcess, tmp_path: Path) -> None:
    """Each curl line of the README, against a node with the example tasks: the answer is a 2xx
    (`-f`, each curl of a line), the `<id>` is the async call's, the task registered is a real script. Streams that a
    reader stops by hand (the node-wide feed) must have said something before they are cut."""
    script = open_path(tmp_path / "scripts") / "shout.sh"
    script.write_text("#!/bin/sh\ntr a-z A-Z\n")
    script.chmod(0o755)
    commands = curl_commands()
    assert len(commands) >= 15 and any("<id>" in c for c in commands)
    execution_id = ""
    for line in commands:
        assert "<id>" not in line or execution_id, f"{line!r} comes before the call whose id it uses"
        shell = line.replace("<id>", execution_id).replace("/abs/shout.sh", str(script))
        shell = shell.replace("curl -s", "curl -f --max-time 5 -s")
        env = {**os.environ, "H": node.http_url}
        ran = subprocess.run(["bash", "-ec", shell], capture_output=True, text=True, timeout=30, env=env)
        if ran.returncode == 28 and "-sN" in line:  # still streaming after 5 s: cut, as by hand
            assert ran.stdout.startswith(("event:", "data:", ":")), f"{line!r} said nothing in 5 s"
            continue
        assert ran.returncode == 0, f"{line!r} exit {ran.returncode}: {ran.stderr or ran.stdout}"
        if '"EXECUTION_MODE_ASYNC"' in line:
            execution_id = json.loads(ran.stdout)["execution_id"]
