"""Access control: a token on every gRPC and HTTP call, and no open node on the network."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spearlet.api.auth import TokenCheck, peer_address
from spearlet.api.grpc import spearlet_pb2 as pb
from tests.helpers import NodeProcess, existing, start_node

pytestmark = pytest.mark.timeout(60)
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(tmp_path_factory.mktemp("guarded"), env={"SPEARLET_TOKEN": TOKEN})
    yield node
    assert node.stop() == 0


def test_grpc_calls_without_or_with_a_wrong_token_are_unauthenticated(guarded: NodeProcess) -> None:
    stub = guarded.stub()
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
        with pytest.raises(grpc.RpcError) as err:
            stub.InvokeFunction(existing("hello"), metadata=metadata)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    good = (("authorization", f"Bearer {TOKEN}"),)
    assert stub.InvokeFunction(existing("hello"), metadata=good).success


def test_streams_health_and_reflection_need_the_token_too(guarded: NodeProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(guarded.stub().StreamFunction(existing("hello")))
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(guarded.grpc_target))
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest())
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    ok = health.Check(health_pb2.HealthCheckRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert ok.status == health_pb2.HealthCheckResponse.SERVING


def test_http_calls_need_the_token(guarded: NodeProcess) -> None:
    for path in ("/health", "/metrics", "/api/v1/tasks", "/openapi.json"):
        response = httpx.get(guarded.http_url + path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "UNAUTHENTICATED"
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(guarded.http_url + "/api/v1/tasks", headers={"authorization": "Bearer nope"}).status_code == 401
    ok = httpx.get(guarded.http_url + "/api/v1/tasks", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


def test_the_cli_sends_the_token_from_the_environment(guarded: NodeProcess) -> None:
    cli = [sys.executable, "-m", "spearlet", "invoke", "hello", "--target", guarded.grpc_target]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr
    ok = subprocess.run(
        cli, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "SPEARLET_TOKEN": TOKEN}
    )
    assert ok.returncode == 0, ok.stderr


def test_the_token_is_never_printed(guarded: NodeProcess) -> None:
    with pytest.raises(grpc.RpcError):
        guarded.stub().GetHealth(pb.GetHealthRequest(), metadata=(("authorization", "Bearer wrong"),))
    assert guarded.output and not any(TOKEN in line for line in guarded.output)


def test_a_token_file_works(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    node = start_node(tmp_path / "data", "--token-file", str(token_file), "--tasks", "none")
    try:
        response = httpx.get(node.http_url + "/api/v1/tasks", headers={"authorization": "Bearer from-a-file"})
        assert response.status_code == 200
        assert httpx.get(node.http_url + "/api/v1/tasks").status_code == 401
    finally:
        assert node.stop() == 0


def test_a_non_loopback_address_without_a_token_is_refused_unless_insecure(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "spearlet", "serve", "--host", "0.0.0.0", "--grpc-port", "0", "--http-port", "0",
           "--data-dir", str(tmp_path / "data"), "--tasks", "none"]  # fmt: skip
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "without a token" in refused.stderr and "--insecure" in refused.stderr
    node = start_node(tmp_path / "data", "--host", "0.0.0.0", "--insecure", "--tasks", "none")
    assert node.stop() == 0
    guarded = start_node(tmp_path / "data", "--host", "0.0.0.0", "--tasks", "none", env={"SPEARLET_TOKEN": TOKEN})
    assert guarded.stop() == 0


def test_trusted_networks_cover_addresses_by_cidr_and_nothing_else() -> None:
    check = TokenCheck("t", ["10.0.0.0/24", "::1/128"])
    assert check.trusts("10.0.0.7")
    assert check.trusts("::ffff:10.0.0.7")  # an IPv4 caller seen by a dual-stack listener
    assert check.trusts("::1")
    assert not check.trusts("10.0.1.7")
    assert not check.trusts("")
    assert not check.trusts(None)
    assert not check.trusts("not-an-address")
    assert not TokenCheck("t").trusts("127.0.0.1")


def test_peer_address_reads_grpc_peers() -> None:
    assert peer_address("ipv4:10.0.0.5:4321") == "10.0.0.5"
    assert peer_address("ipv6:[::1]:4321") == "::1"
    assert peer_address("unix:/tmp/socket") == ""


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with a token that trusts loopback callers (as a node trusts its SMS)."""
    node = start_node(
        tmp_path_factory.mktemp("trusting"),
        env={"SPEARLET_TOKEN": TOKEN, "SPEARLET_TRUSTED_NETWORKS": '["127.0.0.0/8"]'},
    )
    yield node
    assert node.stop() == 0


def test_calls_from_a_trusted_network_need_no_token_on_either_transport(trusting: NodeProcess) -> None:
    assert trusting.stub().InvokeFunction(existing("hello")).success
    assert list(trusting.stub().StreamFunction(existing("hello")))
    assert httpx.get(trusting.http_url + "/api/v1/tasks").status_code == 200


def test_calls_from_outside_the_trusted_networks_still_need_the_token(tmp_path: Path) -> None:
    node = start_node(tmp_path / "data", env={"SPEARLET_TOKEN": TOKEN, "SPEARLET_TRUSTED_NETWORKS": '["10.99.0.0/16"]'})
    try:
        with pytest.raises(grpc.RpcError) as err:
            node.stub().InvokeFunction(existing("hello"))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert httpx.get(node.http_url + "/api/v1/tasks").status_code == 401
    finally:
        assert node.stop() == 0
