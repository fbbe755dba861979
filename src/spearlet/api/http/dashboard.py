"""The web dashboard: its static pages (ui/, served at / and /ui/) and the endpoints that only a live
view needs (the node-wide event stream, recent time series, pools, cluster peers, re-run).

The pages are plain ES modules shipped in the package: no build step, nothing from the internet.
They load without a token (they hold no data) and ask for one when the API answers 401; every API
call, event streams included, then sends `Authorization: Bearer`. The event streams are read with
fetch(), not EventSource, which cannot send that header: a token in the URL would land in access
logs, proxies and the browser's history.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from spearlet.api.service import FunctionApi
from spearlet.api.views import record_json
from spearlet.core.errors import NotFound
from spearlet.core.lifecycle import Lifecycle
from spearlet.core.models import Mode
from spearlet.engine.invoker import IDEMPOTENCY_KEY, InvocationType, InvokeRequest
from spearlet.observability.feed import ExecutionFeed
from spearlet.observability.recent import RecentExecutions

UI = Path(__file__).with_name("ui")
# The pages run only their own files, and nothing else may frame them: they hold the token.
UI_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag): a node upgraded serves its new pages at once
}
# A quiet stream still says something now and then, so that proxies keep it and the page sees it live.
KEEPALIVE_S = 15.0
# Changes are gathered this long before each message: one message for a burst, however large.
BATCH_S = 0.2


def is_page(path: str) -> bool:
    """The dashboard's static files, which load without a token."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


class Pool(Protocol):
    """What the dashboard reads of a runtime's pool of warm instances (runtimes/pool.py): the state
    of each task's instances, as dataclasses."""

    def states(self) -> Sequence[Any]: ...


class Cluster(Protocol):
    """What the dashboard reads of a cluster (cluster.py): its members."""

    async def peers(self) -> list[dict[str, Any]]: ...


@dataclasses.dataclass(slots=True)
class Dashboard:
    """What the dashboard's endpoints read besides the FunctionApi."""

    feed: ExecutionFeed
    recent: RecentExecutions
    pools: Mapping[str, Pool]  # runtime -> its pool of warm instances
    cluster: Cluster | None = None

    @classmethod
    def attach(
        cls, lifecycle: Lifecycle, pending: Callable[[], int], pools: Mapping[str, Pool], cluster: Cluster | None
    ) -> Dashboard:
        """A dashboard that hears every lifecycle event of the node from now on; `pending` counts
        the executions waiting to run."""
        dashboard = cls(
            ExecutionFeed(lambda record: record_json(record, include_result=False)),
            RecentExecutions(pending),
            pools,
            cluster,
        )
        lifecycle.subscribe(dashboard.feed.on_event)
        lifecycle.subscribe(dashboard.recent.on_event)
        return dashboard


class _Pages(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(UI_HEADERS)
        return response


def mount(app: FastAPI, api: FunctionApi, dashboard: Dashboard) -> None:
    pages = _Pages(directory=UI, html=True)
    app.mount("/ui", pages, name="ui")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index(request: Request) -> Response:
        return await pages.get_response("index.html", request.scope)

    app.include_router(_router(api, dashboard))


def _router(api: FunctionApi, dashboard: Dashboard) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/events", tags=["node"], response_model=None)
    async def events() -> StreamingResponse:
        """Every execution change this node sees (accepted, started, finished) as Server-Sent Events:
        `executions` with `{"executions": [...]}`, each the record view of /api/v1/executions/{id}
        without result, the latest of each execution gathered over a moment; `lagged` when this
        reader fell too far behind (reload what you show)."""
        dashboard.feed.check_room()  # too many readers is a 429, not a stream that ends at once
        return StreamingResponse(
            _feed_events(dashboard.feed), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @router.get("/api/v1/timeseries", tags=["node"])
    async def timeseries(window_s: int = Query(900, ge=10, le=3600)) -> dict[str, Any]:
        """This node's last `window_s` seconds in steps: executions accepted; finished completed,
        failed (timeouts included) and cancelled; p50/p95 execution time (ms, null when none ran);
        the longest queue. The current step, still filling, comes last."""
        recent = dashboard.recent
        return {"step_s": recent.step_s, "window_s": window_s, "points": recent.series(window_s)}

    @router.get("/api/v1/pools", tags=["node"])
    async def pools() -> dict[str, Any]:
        """Warm instances per task: instances, idle, starting, callers waiting, calls served warm,
        instances started, and the task's min/max."""
        return {
            "pools": [
                {"runtime": runtime, **dataclasses.asdict(state)}
                for runtime, pool in dashboard.pools.items()
                for state in pool.states()
            ]
        }

    @router.get("/api/v1/cluster", tags=["node"])
    async def cluster() -> dict[str, Any]:
        """This node's id, and in cluster mode (a Redis store) every member with a live heartbeat
        or not yet declared lost."""
        node_id = api.node_id
        if dashboard.cluster is None:
            return {"mode": "single", "node_id": node_id, "peers": []}
        return {"mode": "cluster", "node_id": node_id, "peers": await dashboard.cluster.peers()}

    @router.post("/api/v1/executions/{execution_id}/rerun", tags=["executions"])
    async def rerun(execution_id: str) -> dict[str, Any]:
        """Run an execution again, asynchronously: the same task, function, parameters (bytes kept
        bytes), timeout, retries, environment and metadata, less its idempotency key, plus
        `rerun_of`. Answers as an async /api/v1/invoke, with the new execution's id."""
        record = await api.invoker.get(execution_id)
        if record is None:
            raise NotFound(f"execution {execution_id!r} not found")
        metadata = {k: v for k, v in record.metadata.items() if k != IDEMPOTENCY_KEY}
        outcome = await api.invoker.invoke(
            InvokeRequest(
                InvocationType.EXISTING_TASK,
                Mode.ASYNC,
                task_id=record.task_id,
                function_name=record.function_name,
                params=record.params,
                timeout_ms=record.timeout_ms,
                max_retries=record.max_retries,
                environment=record.environment,
                metadata={**metadata, "rerun_of": execution_id},
            )
        )
        return {
            "execution_id": outcome.record.execution_id,
            "status": outcome.record.status.name,
            "status_endpoint": outcome.status_endpoint,
            "rerun_of": execution_id,
        }

    return router


async def _feed_events(feed: ExecutionFeed) -> AsyncIterator[bytes]:
    # Subscribed here, not in the route: a body never iterated (the client left first) must not
    # keep a subscription that nothing closes.
    with feed.subscribe() as subscription:
        yield b": live\n\n"  # the headers and a first byte now: the reader knows it is connected
        while True:
            views = await subscription.next(KEEPALIVE_S)
            if views is None:
                yield b"event: lagged\ndata: {}\n\n"
            elif views:
                yield f"event: executions\ndata: {json.dumps({'executions': views})}\n\n".encode()
            else:
                yield b": keep-alive\n\n"
            await asyncio.sleep(BATCH_S)
