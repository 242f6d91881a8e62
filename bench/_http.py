"""A lean keep-alive HTTP/1.1 client for load generation on the same box as the server.

The load generator shares the machine's two cores with the server it measures, so every millisecond it
spends per request is taken from the server. httpx costs about 1.5 ms of CPU per request; this client
(asyncio streams + httptools' C parser, one connection per simulated user, no redirects followed, no
cookie jar) costs a small fraction of that. It speaks just enough HTTP for the benchmarks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httptools


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class _Collector:
    """httptools callbacks: header names lower-cased, the body in chunks, done when the message completes."""

    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    done: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class Connection:
    """One persistent connection to `host:port`; requests on it run one after another."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.default_headers = {"Host": f"{host}:{port}", **(headers or {})}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._reader = self._writer = None

    async def request(
        self, method: str, path: str, *, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        body = urlencode(form).encode() if form is not None else b""
        all_headers = {**self.default_headers, **(headers or {}), "Content-Length": str(len(body))}
        if form is not None:
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items()) + "\r\n"
        if self._writer is None:
            await self._open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(head.encode("latin-1") + body)
        collector = _Collector()
        parser = httptools.HttpResponseParser(collector)
        while not collector.done:
            data = await self._reader.read(65536)
            if not data:
                await self.close()
                raise ConnectionError(f"{method} {path}: the server closed the connection")
            parser.feed_data(data)
        reply = Reply(parser.get_status_code(), collector.headers, b"".join(collector.chunks))
        # HTTP/1.1 keeps the connection unless the server says otherwise. (httptools' should_keep_alive()
        # cannot tell: once a message is complete it answers False, which made every request reconnect.)
        if collector.headers.get("connection", "").lower() == "close":
            await self.close()
        return reply
