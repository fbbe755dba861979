"""What `spearlet.client` adds to a sync call over a raw generated stub, on the same channel kind.

    python -m bench.client_overhead [--calls 2000]      # also part of `make bench`

All call the warm Python example `greet` with `name="Ada"` on one node, in turns of 50 calls:
- `raw`: a generated stub sending a request built once, reading nothing of the answer (the least
  any caller does; the target, client p50 at most 50 µs over it, is against this one);
- `raw_packed`: a generated stub as the README's "any gRPC client" example uses it, packing the
  parameter and unpacking the result on every call;
- `client`: `Client.invoke`, which packs, checks the outcome and unpacks on every call.
Also the client's own work per call measured alone in a loop (packing and unpacking, no network).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format, struct_pb2

from bench.common import Server, percentile, start_node, table, write_results
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.client import Client, Options
from spearlet.client.messages import invoke_request, result_value
from spearlet.core.models import Mode


def _turns(calls: dict[str, Callable[[], Any]], n: int, block: int = 50, warmup: int = 100) -> dict[str, list[float]]:
    """Microseconds of `n` sequential calls of each kind, in turns of `block` calls."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    out: dict[str, list[float]] = {name: [] for name in calls}
    while len(out[next(iter(calls))]) < n:
        for name, call in calls.items():
            for _ in range(block):
                started = time.perf_counter()
                call()
                out[name].append((time.perf_counter() - started) * 1e6)
    return out


def _own_work_us(response: pb.InvokeFunctionResponse, n: int = 20000) -> float:
    """The client's work per call without the network: build and pack the request, read the answer."""
    started = time.perf_counter()
    for _ in range(n):
        invoke_request("greet", None, {"name": "Ada"}, Options(), Mode.SYNC, None).SerializeToString()
        result_value(response.result)
    return (time.perf_counter() - started) / n * 1e6


def _packed_call(stub: Any) -> Any:
    """One call as the README's raw-stub example makes it."""
    name = any_pb2.Any()
    name.Pack(struct_pb2.Value(string_value="Ada"))
    response = stub.InvokeFunction(
        pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK,
            task_id="greet",
            execution_mode=pb.EXECUTION_MODE_SYNC,
            parameters=[pb.FunctionParameter(name="name", value=name)],
        )
    )
    output = struct_pb2.Value()
    response.result.result.Unpack(output)
    return json_format.MessageToDict(output)


def client_overhead(target: str, calls: int) -> dict[str, float]:
    request = invoke_request("greet", None, {"name": "Ada"}, Options(), Mode.SYNC, None)
    with grpc.insecure_channel(target) as channel, Client(target) as client:
        stub = pb_grpc.FunctionServiceStub(channel)
        assert client.invoke("greet", name="Ada") == _packed_call(stub) == {"greeting": "Hello, Ada!"}
        times = _turns(
            {
                "raw": lambda: stub.InvokeFunction(request),
                "raw_packed": lambda: _packed_call(stub),
                "client": lambda: client.invoke("greet", name="Ada"),
            },
            calls,
        )
        own = _own_work_us(stub.InvokeFunction(request))
    raw, packed, ours = (percentile(times[k], 0.5) for k in ("raw", "raw_packed", "client"))
    return {
        "raw_stub_sync_p50_us": raw,
        "raw_stub_packing_sync_p50_us": packed,
        "client_sync_p50_us": ours,
        "client_overhead_p50_us": ours - raw,
        "client_over_packing_raw_stub_p50_us": ours - packed,
        "client_own_work_us_per_call": own,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spearlet-client-") as tmp:
        node: Server = start_node(data_dir=Path(tmp) / "data")
        try:
            figures = client_overhead(node.target, args.calls)
        finally:
            node.stop()
    print(table([(k, f"{v:,.1f}") for k, v in figures.items()]))
    print(f"wrote {write_results('client_overhead', {'calls': args.calls, **figures})}")


if __name__ == "__main__":
    main()
