"""What the client tests share: small tasks registered on the module's node, and a guarded node
(token, TLS, tiny queue, short sync wait) for the errors and settings a default node cannot show."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from spearlet.client import Client
from tests.helpers import Certificates, NodeProcess, make_certificates, open_path, register, script, start_node

# Each call sleeps `s`, then reports when it ran: the map tests read concurrency from these times.
TIMED = """#!/usr/bin/env python3
import json, sys, time
p = json.load(sys.stdin)
start = time.time()
time.sleep(p["s"])
print(json.dumps({"i": p["i"], "start": start, "end": time.time()}))
"""
# A line every 0.1 s for 30 s: a stream that is still going when its client leaves.
DRIP = """#!/bin/sh
i=0
while [ $i -lt 300 ]; do echo "line $i"; i=$((i + 1)); sleep 0.1; done
"""
BINARY = "#!/bin/sh\nprintf '\\377\\000\\001'\n"
ENV = '#!/bin/sh\nprintf "%s" "$GREETING"\n'
TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def tasks(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> NodeProcess:
    """The module's node with the client tests' own tasks registered."""
    where = open_path(tmp_path_factory.mktemp("tasks"))
    for name, body in (("timed", TIMED), ("drip", DRIP), ("binary", BINARY), ("env", ENV)):
        register(node.grpc_target, name, script(where / f"{name}.sh", body))
    return node


@dataclass
class Guarded:
    node: NodeProcess
    certs: Certificates
    target: str  # by name, as the certificate says

    def client(self, **kwargs: object) -> Client:
        return Client(self.target, token=TOKEN, tls_ca=self.certs.ca, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    """A node with a token and TLS, one call at a time, one waiting, and sync calls handed off after 1 s."""
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    env = {"SPEARLET_TOKEN": TOKEN, "SPEARLET_MAX_CONCURRENCY": "1", "SPEARLET_MAX_PENDING": "1",
           "SPEARLET_MAX_SYNC_WAIT_S": "1"}  # fmt: skip
    tls = ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    node = start_node(tmp_path_factory.mktemp("guarded"), *tls, env=env)
    yield Guarded(node, certs, node.grpc_target)
    assert node.stop() == 0, "\n".join(node.output)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def timed_inputs(durations: list[float]) -> list[dict[str, float]]:
    return [{"i": i, "s": s} for i, s in enumerate(durations)]
