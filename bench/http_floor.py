"""The floor for the HTTP door: a bare FastAPI app on uvicorn (uvloop, and httptools when installed,
as the node), in the same venv as the node, with the two routes the suite loads: an invoke that
reads its JSON body and a status GET, each answering a fixed, realistic JSON object as a user's
first FastAPI app would (a returned dict). Prints its URL, serves until killed."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import uvicorn
import uvloop
from fastapi import FastAPI, Request

INVOKED = {
    "success": True,
    "execution_id": "01a22739-353b-78ab-a5d6-c55f0cb9a71d",
    "task_id": "greet",
    "instance_id": "greet/1",
    "result": {"status": "EXECUTION_STATUS_COMPLETED", "execution_time_ms": "1", "metrics": {"attempts": "1"}},
}
STATUS = {"found": True, "execution_id": INVOKED["execution_id"], "result": INVOKED["result"]}


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/api/v1/invoke")
    async def invoke(request: Request) -> dict[str, Any]:
        json.loads(await request.body())
        return INVOKED

    @app.get("/api/v1/executions/{execution_id}/status")
    async def status(execution_id: str, include_result: bool = True) -> dict[str, Any]:
        return STATUS

    return app


async def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", lifespan="off", access_log=False))
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    print(f"HTTP  http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await serving


if __name__ == "__main__":
    uvloop.run(main())  # the loop the node runs on
