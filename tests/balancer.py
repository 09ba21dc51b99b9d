"""A round-robin TCP load balancer for tests: no affinity, so a client that reconnects really
lands on the next instance. Backends can be added and removed while it runs; a backend that
refuses the connection is skipped, as a platform's health check would skip it.

With ``http=True`` it reads each request's head and sends every HTTP request to the next
instance: one request per connection (it asks the backend to close after its answer, so a
browser's keep-alive cannot pin a client to one instance). WebSocket upgrades are passed
through, or refused with 403 (``refuse_upgrades=True``), as by a proxy that strips them.

In-process::

    async with Balancer([("127.0.0.1", 8001), ("127.0.0.1", 8002)]) as lb:
        url = lb.ws_url

As a subprocess: ``python -m tests.balancer --port 9000 [--http] [--refuse-upgrades]
127.0.0.1:8001 127.0.0.1:8002``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections import Counter
from types import TracebackType

Backend = tuple[str, int]

CHUNK = 64 * 1024
MAX_HEAD = 64 * 1024


class Balancer:
    def __init__(self, backends: list[Backend] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, max_connections: int = 512, connect_timeout: float = 2.0,
                 http: bool = False, refuse_upgrades: bool = False) -> None:
        self.backends: list[Backend] = list(backends or [])
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.http = http
        self.refuse_upgrades = refuse_upgrades
        self.routed: Counter[Backend] = Counter()
        """Connections handed to each backend so far."""
        self.requests: list[tuple[str, str, Backend | None]] = []
        """In HTTP mode: every request's method, target and backend (None when refused)."""
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], Backend] = {}

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(self, backend: Backend) -> None:
        if backend not in self.backends:
            self.backends.append(backend)

    def remove(self, backend: Backend, *, cut: bool = False) -> None:
        """Stop routing to ``backend``; with ``cut``, also close its open connections."""
        if backend in self.backends:
            self.backends.remove(backend)
        if cut:
            for task, target in list(self._links.items()):
                if target == backend:
                    task.cancel()

    async def start(self) -> Balancer:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Balancer:
        return await self.start()

    async def __aexit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._links) >= self.max_connections:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        try:
            head = b""
            if self.http:
                head = await self._request_head(reader, writer)
                if head is None:
                    return
            upstream = await self._connect_next()
            if upstream is None:
                return
            backend, (up_reader, up_writer) = upstream
            self._links[task] = backend
            self.routed[backend] += 1
            if self.http:
                method, target = _request_line(head)
                self.requests.append((method, target, backend))
                up_writer.write(head)
            try:
                await _splice(reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
        except asyncio.CancelledError:
            pass
        finally:
            self._links.pop(task, None)
            writer.close()

    async def _request_head(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> bytes | None:
        """The request's head, rewritten to end its connection after the answer; None when the
        request was answered here (a refused upgrade) or the client sent no whole head."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return None
        lines = head[:-4].split(b"\r\n")
        headers = [line for line in lines[1:] if line]
        names = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip().lower()
                 for line in headers if b":" in line}
        if names.get(b"upgrade") == b"websocket":
            if self.refuse_upgrades:
                method, target = _request_line(head)
                self.requests.append((method, target, None))
                body = b"WebSocket upgrades are not allowed here\n"
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
                with contextlib.suppress(OSError):
                    await writer.drain()
                return None
            return head  # a WebSocket: one long connection, passed through as it is
        kept = [line for line in headers
                if line.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
        return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n"

    async def _connect_next(self) -> tuple[Backend, tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None:
        """The next backend in turn that accepts a connection, or None if none does."""
        for _ in range(len(self.backends)):
            if not self.backends:
                break
            backend = self.backends[next(self._turn) % len(self.backends)]
            try:
                streams = await asyncio.wait_for(asyncio.open_connection(*backend), self.connect_timeout)
            except (OSError, asyncio.TimeoutError):
                continue
            return backend, streams
        return None


async def _splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """Copy both ways until either side closes; ``drain`` bounds what is buffered."""
    pumps = [asyncio.ensure_future(_pump(reader, up_writer)), asyncio.ensure_future(_pump(up_reader, writer))]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()


def _request_line(head: bytes) -> tuple[str, str]:
    method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
    return method, rest.rsplit(" ", 1)[0]


def _parse_backend(text: str) -> Backend:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(port: int, backends: list[Backend], *, http: bool, refuse_upgrades: bool) -> None:
    balancer = await Balancer(backends, port=port, http=http, refuse_upgrades=refuse_upgrades).start()
    print(f"balancing 127.0.0.1:{balancer.port} over {len(backends)} backends", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await balancer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="round-robin TCP balancer for tests (loopback only)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--http", action="store_true",
                        help="one HTTP request per connection, each to the next backend")
    parser.add_argument("--refuse-upgrades", action="store_true",
                        help="answer WebSocket upgrades with 403 (with --http)")
    parser.add_argument("backends", nargs="+", metavar="HOST:PORT")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, [_parse_backend(b) for b in args.backends], http=args.http,
                           refuse_upgrades=args.refuse_upgrades))


if __name__ == "__main__":
    main()
