"""A wheel installed in a fresh environment (not the editable install the other tests use) starts a
node that serves every bundled example task."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import grpc
import httpx
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.helpers import existing, params, start_node, unpack

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {  # task: (parameters, status, result)
    "hello": ({"name": "Ada"}, pb.EXECUTION_STATUS_COMPLETED, {"greeting": "Hello, Ada!"}),
    "echo": ({"x": 1}, pb.EXECUTION_STATUS_COMPLETED, {"x": 1}),
    "sleep": ({"seconds": 0}, pb.EXECUTION_STATUS_COMPLETED, {"slept": 0}),  # a longer sleep reports its own time
    "fail": ({}, pb.EXECUTION_STATUS_FAILED, None),
    "greet": ({"name": "Ada"}, pb.EXECUTION_STATUS_COMPLETED, {"greeting": "Hello, Ada!"}),
    "wasm-echo": ({"x": 1}, pb.EXECUTION_STATUS_COMPLETED, {"x": 1}),
    "wasm-hello": ({}, pb.EXECUTION_STATUS_COMPLETED, {"hello": "wasm"}),
}


def build_wheel(out: Path, scratch: Path) -> Path:
    """The wheel, built from a copy of the tree: setuptools reuses a `build/` directory it finds
    (stale file modes and all), and the work tree stays clean."""
    source = scratch / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    # Offline: this environment's setuptools builds it (no isolated build environment to download).
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)]
    subprocess.run(pip, check=True, capture_output=True, timeout=120)
    return next(out.glob("spearlet-*.whl"))


def fresh_environment(where: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed; its dependencies are borrowed from this environment's
    site-packages (read as plain directories: the editable install's .pth there is not run)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60)
    python = where / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=120)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def test_an_installed_wheel_serves_each_bundled_task(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    python = fresh_environment(tmp_path / "venv", wheel)
    where = subprocess.run([str(python), "-c", "import spearlet; print(spearlet.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout  # fmt: skip
    installed = Path(where).parent
    assert installed.is_relative_to(tmp_path / "venv")  # the wheel, not the work tree
    bundled = tomllib.loads((installed / "examples" / "tasks.toml").read_text())
    assert {t["name"] for t in bundled["task"]} == set(EXPECTED)

    node = start_node(tmp_path / "run" / ".spearlet", cwd=tmp_path / "run", python=str(python))
    try:
        stub = pb_grpc.FunctionServiceStub(grpc.insecure_channel(node.grpc_target))
        listed = stub.ListTasks(pb.ListTasksRequest()).tasks
        assert all(Path(t.artifact_spec.location).is_relative_to(installed) for t in listed)
        for task, (arguments, status, result) in EXPECTED.items():
            response = stub.InvokeFunction(existing(task, parameters=params(**arguments)), timeout=30)
            assert response.result.status == status, (task, response.result.error_message)
            if status == pb.EXECUTION_STATUS_COMPLETED:
                assert unpack(response.result.result) == result, task
            else:
                assert response.result.error_code == "NONZERO_EXIT", task
        for page in ("/", "/ui/js/main.js", "/ui/style.css"):  # the dashboard ships in the wheel
            assert httpx.get(node.http_url + page, timeout=30).status_code == 200, page
    finally:
        assert node.stop() == 0, "\n".join(node.output)
