"""A small fault-injecting proxy in front of the real model server: each queued fault answers one chat
request in its own bad way; with none queued, requests pass through to the server unchanged."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

FAULTS = ("429", "503", "hang", "empty", "garbage")


class FaultProxy:
    def __init__(self, upstream_root: str) -> None:
        self.upstream = upstream_root
        self.faults: deque[str] = deque()
        self.seen: list[str] = []  # what each chat request got: a fault's name or "pass"
        self.lock = threading.Lock()
        self.server: uvicorn.Server | None = None
        self.url = ""

    def queue(self, *faults: str) -> None:
        assert all(f in FAULTS for f in faults), faults
        with self.lock:
            self.faults.extend(faults)

    def _next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    async def _chat(self, request: Request) -> Response:
        fault = self._next_fault()
        self.seen.append(fault or "pass")
        body = await request.body()
        if fault == "429":
            return JSONResponse({"error": {"message": "slow down"}}, 429, headers={"Retry-After": "1"})
        if fault == "503":
            return JSONResponse({"error": {"message": "overloaded"}}, 503)
        if fault == "hang":
            await asyncio.sleep(60)  # longer than the client's timeout
            return JSONResponse({"error": {"message": "hung"}}, 504)
        if fault == "garbage":
            return PlainTextResponse("<html>proxy error</html>", 200)
        async with httpx.AsyncClient(timeout=600) as client:
            upstream = await client.post(f"{self.upstream}/v1/chat/completions", content=body,
                                         headers={"content-type": "application/json"})
        if fault == "empty":
            data = upstream.json()
            data["choices"][0]["message"]["content"] = ""
            return JSONResponse(data, upstream.status_code)
        return Response(upstream.content, upstream.status_code, media_type="application/json")

    def start(self) -> str:
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fault proxy did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
