"""TLS on both transports, with a private CA made here: a TLS client is served, a plaintext one is not."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.config import Settings
from spearlet.node import Node
from tests.helpers import Certificates, make_certificates

pytestmark = pytest.mark.timeout(60)
TOKEN = "s3cret-for-tls"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> AsyncIterator[Node]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("node") / "data",
        grpc_port=0,
        http_port=0,
        tls_cert=certs.cert,
        tls_key=certs.key,
        token=TOKEN,
    )
    node = Node(settings)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


AUTH = (("authorization", f"Bearer {TOKEN}"),)


async def test_grpc_speaks_tls_only(node: Node, certs: Certificates) -> None:
    target = f"127.0.0.1:{node.grpc_port}"
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    async with grpc.aio.secure_channel(target, credentials) as channel:
        health = await pb_grpc.FunctionServiceStub(channel).GetHealth(pb.GetHealthRequest(), metadata=AUTH)
        assert health.status == "healthy"
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.FunctionServiceStub(channel).GetHealth(pb.GetHealthRequest(), metadata=AUTH, timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_http_speaks_tls_only(node: Node, certs: Certificates) -> None:
    assert node.http_url.startswith("https://")
    trusting = ssl.create_default_context(cafile=str(certs.ca))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(verify=trusting) as client:
        answer = await client.get(f"{node.http_url}/health", headers=headers)
        assert answer.status_code == 200 and answer.json()["status"] == "healthy"
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"http://127.0.0.1:{node.http_port}/health", headers=headers)
    async with httpx.AsyncClient() as client:  # TLS, but not trusting the private CA
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"{node.http_url}/health", headers=headers)


async def cli(node: Node, *args: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "spearlet", *args, "invoke", "hello", "-p", "name=Ada"]
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--target",
        f"127.0.0.1:{node.grpc_port}",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"SPEARLET_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
    )
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()


async def test_the_cli_trusts_a_private_ca_with_tls_ca(node: Node, certs: Certificates) -> None:
    code, out = await cli(node, "--tls-ca", str(certs.ca))
    assert code == 0 and '"greeting": "Hello, Ada!"' in out, out
    code, out = await cli(node)  # plaintext to a TLS node
    assert code == 2 and "UNAVAILABLE" in out
