"""The direct WebSocket layer's own parts: server frames, the frame cache, the lean queue and
flag that stand in for uvicorn's asyncio.Queue and asyncio.Event, the settings kept once per
server and the keepalive pings from one timer."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.frames import Frame, Opcode

from collab import Collab, Settings, codes, crdt, protocol
from collab.transport.direct import (
    FRAME_CACHE_MAX,
    DirectWebSocketProtocol,
    Flag,
    FrameCache,
    Mailbox,
    frame_binary,
)
from collab.transport.guard import GuardedHttpToolsProtocol, RequestGuard
from collab.transport.websocket import BROADCAST_CHUNK
from tests.pyclient import PyClient
from tests.servers import free_port


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_frame_is_what_websockets_serializes(size: int) -> None:
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])
    assert frame_binary(message) == expected


def test_the_cache_frames_a_broadcast_once_and_keeps_no_large_message() -> None:
    cache = FrameCache()
    message = b"\x00\x02\x03abc"
    first = cache.frame(message)
    assert cache.frame(message) is first  # the same bytes object for every receiver
    other = b"\x00\x02\x03abd"
    assert cache.frame(other) == frame_binary(other)
    large = bytes(FRAME_CACHE_MAX + 1)
    assert cache.frame(large) == frame_binary(large)
    assert cache.message is other  # a large one is not kept alive


async def test_the_mailbox_keeps_order_and_says_when_it_is_empty() -> None:
    box = Mailbox(asyncio.get_running_loop())
    assert box.empty()
    box.put_nowait(1)
    box.put_nowait(2)
    assert not box.empty()
    assert await box.get() == 1
    assert await box.get() == 2
    assert box.empty() and box.items is None  # nothing held while nothing waits
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()
    box.put_nowait(3)
    assert not box.empty()  # until the getter runs, as an asyncio.Queue
    assert await asyncio.wait_for(getter, 5) == 3
    waiting = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    box.put_nowait(4)
    assert await box.get() == 4


async def test_the_flag_wakes_a_waiting_writer() -> None:
    flag = Flag(asyncio.get_running_loop())
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    flag.set()
    await asyncio.wait_for(waiter, 5)
    assert flag.waiters is None


class _Echo:
    """An ASGI app that accepts a WebSocket and echoes binary messages, remembering the
    protocol that served it."""

    def __init__(self) -> None:
        self.protocols: list[DirectWebSocketProtocol] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        self.protocols.append(send.__self__)
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _serve(app: Any, **config: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", ws=DirectWebSocketProtocol, **config))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(15):
        while not server.started:
            await asyncio.sleep(0.02)
    return server, task, port


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, 20)


async def test_a_connection_keeps_few_attribute_names_and_a_second_server_its_own_settings() -> None:
    """Instances of a class stay compact only while they use at most 29 attribute names in
    all (CPython); uvicorn's settings are kept once per server on the class."""
    first, second = _Echo(), _Echo()
    served = [await _serve(first, ws_ping_interval=30.0), await _serve(second, ws_ping_interval=40.0)]
    try:
        for _server, _task, port in served:
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as client:
                await client.send(b"x")
                assert await asyncio.wait_for(client.recv(), 5) == b"x"
        a, b = first.protocols[0], second.protocols[0]
        assert a.ping_interval == 30.0 and b.ping_interval == 40.0
        assert a.config is not b.config and a.config.ws_ping_interval == 30.0
        names = set(vars(a)) | set(vars(b))
        assert len(names) <= 29, sorted(names)
    finally:
        for server, task, _port in served:
            await _stop(server, task)


async def test_keepalive_pings_a_client_that_answers_and_drops_one_that_does_not() -> None:
    app = _Echo()
    server, task, port = await _serve(app, ws_ping_interval=0.2, ws_ping_timeout=0.3)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as client:
            await client.send(b"x")
            assert await asyncio.wait_for(client.recv(), 5) == b"x"
            protocol = app.protocols[0]
            async with asyncio.timeout(10):
                while protocol.last_ping_rtt == 0.0:  # the client answers the server's pings
                    await asyncio.sleep(0.05)
            first_ping = protocol.ping_sent_at
            async with asyncio.timeout(10):
                while protocol.ping_sent_at == first_ping:  # and is pinged again
                    await asyncio.sleep(0.05)
            await client.send(b"y")
            assert await asyncio.wait_for(client.recv(), 5) == b"y"
        # A client that completes the handshake and never answers a ping: dropped.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        received = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        assert received[:1] == b"\x89"  # a ping came first, then the close after no pong
        assert b"\x88" in received[6:]
        writer.close()
        assert len(app.protocols) == 2 and app.protocols[1].disconnected
    finally:
        await _stop(server, task)


def _connection_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of uvicorn's that serve a WebSocket (one per connection while the app runs)."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").endswith("run_asgi")]


async def test_an_idle_connection_holds_no_task_and_is_served_and_closed_as_before() -> None:
    """As ``collab serve`` runs it: its app straight under uvicorn, with this protocol."""
    collab = Collab(Settings(store="memory://", log_level="warning"))
    clients: list[PyClient] = []
    async with collab.lifespan():
        server, task, port = await _serve(collab.app)  # type: ignore[arg-type]
        try:
            await _served_without_tasks(collab, f"ws://127.0.0.1:{port}/ws", clients)
        finally:
            for c in clients:
                await c.close()
            await _stop(server, task)


async def _served_without_tasks(collab: Collab, url: str, clients: list[PyClient]) -> None:
    clients += [await PyClient(url, "idle", reconnect=False, acks=False).start()
                for _ in range(5)]
    await clients[0].insert("hello")
    for c in clients:
        await c.wait_text("hello")
    sockets = collab.sockets
    assert len(sockets.peers) == 5 and _connection_tasks() == []  # no task per connection
    await clients[1].close()  # a client leaves: its member leaves the room
    async with asyncio.timeout(10):
        while len(sockets.peers) > 4:
            await asyncio.sleep(0.02)
    await clients[2].send_raw("text")  # refused as on the read loop: closed with its code
    assert await clients[2].wait_closed() == codes.TEXT_FRAME.close
    await clients[3].insert(" world")
    await clients[0].wait_text("hello world")
    sockets.close_all(codes.SERVICE_RESTART.close, "restarting")  # the server closes them
    for c in (clients[0], clients[3], clients[4]):
        assert await c.wait_closed() == codes.SERVICE_RESTART.close
    async with asyncio.timeout(10):
        while sockets.peers or collab.admission.limits.total:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
    closes = sockets.traffic.closes
    assert closes[(codes.SERVICE_RESTART.close, "server")] == 3
    assert closes[(codes.TEXT_FRAME.close, "server")] == 1


async def test_an_upgraded_connection_leaves_no_http_protocol_for_the_cyclic_collector() -> None:
    """Once the WebSocket layer has the connection, the guarded HTTP protocol is freed by
    reference counting alone: left to the cyclic collector, a storm of connections made it
    traverse every one of them (and their parsers) twice."""
    made: list[weakref.ref[GuardedHttpToolsProtocol]] = []

    class Recording(RequestGuard):
        def protocol(self, *args: Any, **kwargs: Any) -> GuardedHttpToolsProtocol:
            protocol = super().protocol(*args, **kwargs)
            made.append(weakref.ref(protocol))
            return protocol

    app = _Echo()
    server, task, port = await _serve(app, http=Recording().protocol)
    gc.disable()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as client:
            await client.send(b"x")
            assert await asyncio.wait_for(client.recv(), 5) == b"x"
            assert made and all(ref() is None for ref in made)
            assert app.protocols[0].open_for_messages()
    finally:
        gc.enable()
        await _stop(server, task)


class _RecordingTransport:
    """A connection's real transport that also keeps every write it is given."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _messages(data: bytes) -> list[bytes]:
    """The messages of the server's (unmasked, unfragmented) binary frames in ``data``."""
    messages, at = [], 0
    while at < len(data):
        assert data[at] == 0x82
        length, at = data[at + 1], at + 2
        if length == 126:
            length, at = int.from_bytes(data[at:at + 2], "big"), at + 2
        messages.append(data[at:at + length])
        at += length
    return messages


@pytest.mark.parametrize("observers", [BROADCAST_CHUNK // 2, 2 * BROADCAST_CHUNK + 5])
async def test_a_tick_writes_each_socket_once_and_a_large_broadcast_as_it_goes(observers: int) -> None:
    """Three updates in one tick: a socket of a small room takes them in one write at the end
    of the tick; in a large room, the first broadcast is written in chunks while the room still
    hands it out, so a socket of a full chunk takes it alone, then the other two in one write,
    and the rest of the room all three at the end of the tick."""
    collab = Collab(Settings(store="memory://", log_level="warning"))
    clients: list[PyClient] = []
    async with collab.lifespan():
        # as `collab serve` runs it: without compression, every socket takes the same frames
        server, task, port = await _serve(collab.app, ws_per_message_deflate=False)  # type: ignore[arg-type]
        try:
            clients += await asyncio.gather(*(PyClient(f"ws://127.0.0.1:{port}/ws", "big", reconnect=False,
                                                       acks=False).start() for _ in range(observers)))
            peers = list(collab.sockets.peers)
            assert len(peers) == observers and all(peer.direct is not None for peer in peers)
            recorders = []
            for peer in peers:
                assert peer.direct is not None
                recorders.append(recorder := _RecordingTransport(peer.direct.transport))
                peer.direct.transport = recorder
            source = crdt.Document()
            updates = [source.edit_text(0, "c"), source.edit_text(0, "b"), source.edit_text(0, "a")]
            room = collab.rooms.rooms["big"]
            for update in updates:  # one tick
                assert update is not None
                room.apply(update)
            for client in clients:
                await client.wait_text("abc")
            written = [list(r.writes) for r in recorders]
        finally:
            for client in clients:
                await client.close()
            await _stop(server, task)
    shapes = [[len(_messages(write)) for write in writes] for writes in written]
    early = observers // BROADCAST_CHUNK * BROADCAST_CHUNK  # the chunks written as it went
    assert shapes.count([1, 2]) == early and shapes.count([3]) == observers - early
    sent = {b"".join(writes) for writes in written}
    assert len(sent) == 1  # the same bytes, in the same order
    replica = crdt.Document()
    texts = []
    for message in _messages(sent.pop()):
        decoded = protocol.decode_message(message)
        assert isinstance(decoded, protocol.SyncUpdate)
        replica.apply(decoded.update)
        texts.append(replica.text())
    assert texts == ["c", "bc", "abc"]
