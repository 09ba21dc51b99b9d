"""The test load balancer itself: round robin, no affinity, dead backends skipped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.balancer import Backend, Balancer

LIMIT = 4 * 1024 * 1024


@contextlib.asynccontextmanager
async def tagged_echo(tag: bytes) -> AsyncIterator[Backend]:
    """A backend that answers every line with its tag and the line."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(tag + b":" + line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=LIMIT)
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def ask(balancer: Balancer, line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port, limit=LIMIT)
    try:
        writer.write(line + b"\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_round_robin_add_remove_and_skip_dead() -> None:
    async with tagged_echo(b"a") as a, tagged_echo(b"b") as b, Balancer([a, b]) as balancer:
        answers = [await ask(balancer, b"x") for _ in range(4)]
        assert answers == [b"a:x\n", b"b:x\n", b"a:x\n", b"b:x\n"]
        balancer.remove(a)
        assert {await ask(balancer, b"y") for _ in range(2)} == {b"b:y\n"}
        async with tagged_echo(b"c") as c:
            balancer.add(c)
            assert {await ask(balancer, b"z") for _ in range(2)} == {b"b:z\n", b"c:z\n"}
        # c is gone now but still listed: its turn falls to the next live backend
        assert {await ask(balancer, b"w") for _ in range(3)} == {b"b:w\n"}
        assert balancer.routed[a] == 2 and balancer.routed[c] == 1


async def test_large_transfer_passes_intact() -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB, no newline until the end
    async with tagged_echo(b"t") as t, Balancer([t]) as balancer:
        assert await ask(balancer, blob.replace(b"\n", b"")) == b"t:" + blob.replace(b"\n", b"") + b"\n"


async def test_cut_closes_open_connections_of_a_backend() -> None:
    async with tagged_echo(b"a") as a, Balancer([a]) as balancer:
        reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port, limit=LIMIT)
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"a:hello\n"
        balancer.remove(a, cut=True)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_http_mode_sends_every_request_to_the_next_backend_and_can_refuse_upgrades(
        server_factory) -> None:  # type: ignore[no-untyped-def]
    from collab.loadtest.http import HttpClient

    first, second = server_factory("memory://"), server_factory("memory://")
    backends = [("127.0.0.1", first.port), ("127.0.0.1", second.port)]
    async with Balancer(backends, http=True, refuse_upgrades=True) as balancer:
        client = HttpClient("127.0.0.1", balancer.port, timeout=10)  # keep-alive on its side
        for _ in range(4):
            response = await client.post("/poll/doc?client=abcdefgh", b"")
            assert response.status == 200 and response.headers["connection"] == "close"
        instances = [backend for _method, _target, backend in balancer.requests]
        assert instances == [backends[0], backends[1], backends[0], backends[1]]
        client.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port)
        writer.write(b"GET /ws/doc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 403")
        writer.close()
        assert balancer.requests[-1] == ("GET", "/ws/doc", None)
