"""A round-robin TCP load balancer for tests: no affinity, so a client that reconnects really
lands on the next instance. Backends can be added and removed while it runs; a backend that
refuses the connection is skipped, as a platform's health check would skip it.

In-process::

    async with Balancer([("127.0.0.1", 8001), ("127.0.0.1", 8002)]) as lb:
        url = lb.ws_url

As a subprocess: ``python -m tests.balancer --port 9000 127.0.0.1:8001 127.0.0.1:8002``.
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


class Balancer:
    def __init__(self, backends: list[Backend] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, max_connections: int = 512, connect_timeout: float = 2.0) -> None:
        self.backends: list[Backend] = list(backends or [])
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.routed: Counter[Backend] = Counter()
        """Connections handed to each backend so far."""
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
            upstream = await self._connect_next()
            if upstream is None:
                return
            backend, (up_reader, up_writer) = upstream
            self._links[task] = backend
            self.routed[backend] += 1
            try:
                await _splice(reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
        except asyncio.CancelledError:
            pass
        finally:
            self._links.pop(task, None)
            writer.close()

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


def _parse_backend(text: str) -> Backend:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(port: int, backends: list[Backend]) -> None:
    balancer = await Balancer(backends, port=port).start()
    print(f"balancing 127.0.0.1:{balancer.port} over {len(backends)} backends", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await balancer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="round-robin TCP balancer for tests (loopback only)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("backends", nargs="+", metavar="HOST:PORT")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, [_parse_backend(b) for b in args.backends]))


if __name__ == "__main__":
    main()
