"""Hostile input against a real server: each reproduction closes only the offending connection,
with the documented code, and leaves the room, a fresh joiner and the store agreeing."""

from __future__ import annotations

import asyncio
import socket
import struct
import urllib.request
from collections.abc import Callable

import websockets

from collab import protocol
from tests.pyclient import PyClient
from tests.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]


async def connect(server: ServerProcess, room: str, **kwargs: object) -> PyClient:
    return await PyClient(server.ws_url, room, **kwargs).start()  # type: ignore[arg-type]


def alive(server: ServerProcess) -> bool:
    with urllib.request.urlopen(server.http_url + "/liveness_check", timeout=1) as response:
        return response.status == 200


def reset(ws: websockets.ClientConnection) -> None:
    """Close the socket with SO_LINGER 0: the kernel sends RST, and the server's next write to it
    fails with EPIPE (SIGPIPE, were it not ignored)."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def test_a_peer_that_resets_mid_reply_is_an_ordinary_disconnect(server: ServerProcess) -> None:
    writer = await connect(server, "big")
    await writer.insert("twenty kilobytes of text. " * 800)
    for attempt in range(3):
        ws = await websockets.connect(server.ws_url + "/big", max_size=None)
        step1 = protocol.encode_sync_step1(b"\x00")  # three bytes; each answered with ~20 kB
        for _ in range(2000):
            await ws.send(step1)
        await asyncio.sleep(0.05 * attempt)  # reset at different points of the server's replies
        reset(ws)
    await asyncio.sleep(0.2)
    assert server.process is not None and server.process.poll() is None, server.log()
    assert alive(server)
    fresh = await connect(server, "big")
    assert fresh.text() == writer.text()
    await fresh.close()
    await writer.close()
