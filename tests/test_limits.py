"""Every resource one client can make the server hold is bounded: real servers, real sockets.

Volumes are shrunk from what an attacker would use where the assertion means the same (a
document limit of 4 MB instead of 16 MiB, a request timeout of 2 s instead of 10 s, a stalled
reader for 8 s instead of 20 s): each limit is reached many times over either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import resource
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from collab import crdt, protocol
from collab.admission import AdmissionStats
from collab.room import RoomStats
from collab.transport.guard import GuardStats
from collab.transport.websocket import SocketStats
from tests.metrics import scrape
from tests.pyclient import PyClient
from tests.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]


def stats(server: ServerProcess) -> dict[str, Any]:
    """The counters of admission, the rooms, the WebSocket transport and the request guard, by
    field name, read from /metrics."""
    parsed = scrape(server.http_url)
    parts = {"admission": (AdmissionStats, "collab_admission_"), "rooms": (RoomStats, "collab_"),
             "websocket": (SocketStats, "collab_websocket_"), "requests": (GuardStats, "collab_requests_")}
    counters: dict[str, Any] = {
        part: {f.name: parsed.value(f"{prefix}{f.name}_total") for f in dataclasses.fields(kind)}
        for part, (kind, prefix) in parts.items()}
    counters["peers"] = parsed.value("collab_connections", transport="websocket")
    return counters


def rss_bytes(server: ServerProcess) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def client(server: ServerProcess, room: str = "doc", **kwargs: object) -> PyClient:
    return await PyClient(server.ws_url, room, **kwargs).start()  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def joined(server: ServerProcess, room: str = "doc", **kwargs: object) -> websockets.ClientConnection:
    """A raw connection past the handshake (the server's step 1 read, ours sent)."""
    ws = await websockets.connect(f"{server.ws_url}/{room}", max_size=None, **kwargs)  # type: ignore[arg-type]
    await ws.recv()
    await ws.send(protocol.encode_sync_step1(b"\x00"))
    return ws


async def closed_with(ws: websockets.ClientConnection, timeout: float = 10.0) -> int | None:
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


# --- document and presence size ---------------------------------------------------------------


async def test_thirty_large_updates_stop_at_the_document_limit(server_factory: ServerFactory,
                                                                tmp_path: Path) -> None:
    limit = 4_000_000
    store = f"sqlite:///{tmp_path / 'big.db'}"
    server = server_factory(store, args=["--max-document-size", str(limit),
                                         "--max-message-size", "2000000"])
    watcher = await client(server, acks=False)
    before = rss_bytes(server)
    codes = []
    attacker = crdt.Document()
    ws = await joined(server)
    for n in range(30):  # 30 updates of 1 MB; after each refusal the attacker comes back
        update = attacker.edit_text(0, chr(ord("a") + n % 26) * 1_000_000)
        assert update is not None
        await ws.send(protocol.encode_sync_update(update))
        if n >= 3:
            codes.append(await closed_with(ws))
            ws = await joined(server)
    await ws.close()
    await watcher.wait_for(lambda: len(watcher.text()) == 3_000_000)
    assert codes == [4413] * 27
    assert watcher.close_codes == []  # an ordinary watcher is not dropped
    assert rss_bytes(server) - before < 64 * 1024 * 1024  # 30 MB were sent; the document is 3 MB
    assert stats(server)["rooms"]["updates_too_large_for_document"] == 27
    await watcher.close()
    assert server.terminate() == 0
    again = server_factory(store)
    reader = await client(again, acks=False)
    assert len(reader.text()) == 3_000_000 and len(reader.doc.full_state()) <= limit
    await reader.close()


async def test_deletions_count_near_the_document_limit(server_factory: ServerFactory) -> None:
    server = server_factory("memory://", args=["--max-document-size", "300000"])
    writer = await client(server, acks=False)
    for _ in range(20):  # 2 MB typed and deleted again: the document stays small
        await writer.insert("y" * 100_000, index=0)
        update = writer.doc.edit_text(0, delete=100_000)
        assert update is not None
        await writer.send_raw(protocol.encode_sync_update(update))
    await writer.insert("end")
    fresh = await client(server, acks=False)
    await fresh.wait_text("end")
    assert writer.close_codes == []
    for c in (writer, fresh):
        await c.close()


@pytest.mark.usefixtures("websocket_layer")
async def test_presence_past_its_limits_is_refused_and_never_relayed(server_factory: ServerFactory) -> None:
    server = server_factory("memory://", args=["--max-presence-state", "1024",
                                               "--max-presence-entries", "4"])
    watcher = await client(server, acks=False)
    big = protocol.AwarenessEntry(1, 1, json.dumps({"user": {"name": "x" * 2000}}))
    many = [protocol.AwarenessEntry(1000 + i, 1, '{"n":1}') for i in range(1000)]
    fine = protocol.AwarenessEntry(7, 1, '{"user":{"name":"ok"}}')
    for entries in ([big], many):
        ws = await joined(server)
        await ws.send(protocol.encode_awareness(protocol.encode_awareness_payload(entries)))
        assert await closed_with(ws) == 4413
    ws = await joined(server)
    await ws.send(protocol.encode_awareness(protocol.encode_awareness_payload([fine])))
    newcomer = await client(server, acks=False)

    def seen(c: PyClient) -> set[int]:
        return {e.client_id for m in c.received if isinstance(m, protocol.AwarenessUpdate)
                for e in protocol.decode_awareness_payload(m.payload) if not e.is_removal}

    await until(lambda: 7 in seen(watcher) and 7 in seen(newcomer))
    assert seen(watcher) == seen(newcomer) == {7}
    counters = stats(server)["rooms"]
    assert counters["presence_states_too_large"] == 1 and counters["presence_entries_refused"] == 1
    await ws.close()
    for c in (watcher, newcomer):
        await c.close()


# --- rate -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("websocket_layer")
async def test_a_flood_is_throttled_then_closed_and_the_others_keep_everything_in_order(
        server_factory: ServerFactory) -> None:
    rate, burst, patience = 100, 100, 1.5
    server = server_factory("memory://", args=[
        "--max-message-rate", str(rate), "--message-burst", str(burst),
        "--flood-patience", str(patience), "--durable-acks", "false"])
    reader = await client(server, acks=False)
    writer = await client(server, acks=False)
    flooder_doc = crdt.Document()
    flooder = await joined(server)
    started = time.monotonic()

    async def flood() -> float:
        with contextlib.suppress(websockets.ConnectionClosed):
            for n in range(20_000):
                update = flooder_doc.edit_text(0, f"[{n}]")
                assert update is not None
                await flooder.send(protocol.encode_sync_update(update))
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(flooder.recv(), 10)
        return time.monotonic() - started

    async def type_slowly() -> list[str]:
        tokens = []
        for n in range(40):
            tokens.append(f"<w{n}>")
            await writer.insert(tokens[-1])  # appended: the order is the text's order
            await asyncio.sleep(0.02)
        return tokens

    flooded_for, tokens = await asyncio.wait_for(asyncio.gather(flood(), type_slowly()), 60)
    assert flooder.close_code == 4429
    await reader.wait_for(lambda: all(t in reader.text() for t in tokens), 10)
    text = reader.text()
    positions = [text.index(t) for t in tokens]
    assert positions == sorted(positions)  # the writer's updates arrived complete and in order
    accepted = text.count("[")
    assert 0 < accepted < 20_000
    assert accepted <= burst + rate * (flooded_for + 1)  # held to the rate until closed
    fresh = await client(server, acks=False)
    assert fresh.text() == reader.text() == writer.text()
    counters = stats(server)["websocket"]
    assert counters["floods_closed"] == 1 and counters["messages_throttled"] > 0
    for c in (reader, writer, fresh):
        await c.close()


# --- slow readers -----------------------------------------------------------------------------


class Editor:
    """Pushes 20 KB updates that insert a chunk and delete the previous one (the document stays
    small while the traffic is heavy) into its own text field, and times the other's arrivals."""

    def __init__(self, name: str, other: str) -> None:
        self.name = name
        self.other = other
        self.doc = crdt.Document()
        self.sent_at: dict[int, float] = {}
        self.seen_at: dict[int, float] = {}
        self.ws: websockets.ClientConnection | None = None

    async def connect(self, server: ServerProcess) -> None:
        self.ws = await websockets.connect(f"{server.ws_url}/doc", max_size=None)
        await self.ws.send(protocol.encode_sync_step1(self.doc.state_vector()))

    async def read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.ws:
                message = protocol.decode_message(frame)  # type: ignore[arg-type]
                if isinstance(message, protocol.SyncStep1):
                    await self.ws.send(protocol.encode_sync_step2(self.doc.diff(message.state_vector)))
                elif isinstance(message, (protocol.SyncStep2, protocol.SyncUpdate)):
                    self.doc.apply(message.update)
                    head = self.doc.text(self.other)[:32]
                    if head.startswith("<"):
                        n = int(head[1:head.index(">")])
                        self.seen_at.setdefault(n, time.monotonic())

    async def push(self, count: int, rate: float) -> None:
        assert self.ws is not None
        filler = self.name * 20_000
        previous = 0
        start = time.monotonic()
        for n in range(count):
            chunk = f"<{n}>" + filler
            update = self.doc.edit_text(0, chunk, delete=previous, field=self.name)
            previous = len(chunk)
            assert update is not None
            self.sent_at[n] = time.monotonic()
            await self.ws.send(protocol.encode_sync_update(update))
            await asyncio.sleep(max(0.0, start + (n + 1) / rate - time.monotonic()))

    def latencies(self, sender: Editor) -> list[float]:
        return [self.seen_at[n] - sender.sent_at[n] for n in self.seen_at if n in sender.sent_at]


@pytest.mark.usefixtures("websocket_layer")
async def test_a_reader_that_stalls_costs_little_is_closed_and_resyncs(
        server_factory: ServerFactory, tmp_path: Path) -> None:
    # SQLite, so that the log is not held in memory as memory:// holds it; and no compaction
    # during the run: folding a log of deleted content costs memory of its own, which is not
    # what this measures.
    server = server_factory(f"sqlite:///{tmp_path / 'stall.db'}",
                            args=["--durable-acks", "false", "--compact-threshold", "1000000"])
    alice, bob = Editor("a", "b"), Editor("b", "a")
    for editor in (alice, bob):
        await editor.connect(server)
    readers = [asyncio.create_task(e.read()) for e in (alice, bob)]
    stalled_doc = crdt.Document()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stalled = await websockets.connect(f"{server.ws_url}/doc", sock=sock, max_size=None, max_queue=1)
    await stalled.send(protocol.encode_sync_step1(stalled_doc.state_vector()))

    async def told_to_reconnect() -> None:
        """Once the server has given up on it, the stalled client reads again: what its socket
        still held, then the close telling it to reconnect."""
        while (await asyncio.to_thread(stats, server))["websocket"]["slow_clients_closed"] < 1:
            await asyncio.sleep(0.05)
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in stalled:
                message = protocol.decode_message(frame)  # type: ignore[arg-type]
                if isinstance(message, (protocol.SyncStep2, protocol.SyncUpdate)):
                    stalled_doc.apply(message.update)

    reading = asyncio.create_task(told_to_reconnect())
    await asyncio.gather(alice.push(20, 50), bob.push(20, 50))  # warm up
    before = rss_bytes(server)
    peak = before
    duration, rate = 8.0, 100

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_bytes(server))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(alice.push(int(duration * rate), rate), bob.push(int(duration * rate), rate))
    sampler.cancel()
    traffic = 2 * duration * rate * 20_000
    growth = peak - before
    assert growth < 8 * 1024 * 1024, f"grew {growth / 2**20:.1f} MiB for {traffic / 2**20:.0f} MiB sent"
    await asyncio.wait_for(reading, 120)
    assert stalled.close_code == 1013  # it reconnects, resyncs and has everything
    async with websockets.connect(f"{server.ws_url}/doc", max_size=None) as again:
        await again.send(protocol.encode_sync_step1(stalled_doc.state_vector()))
        while True:
            message = protocol.decode_message(await asyncio.wait_for(again.recv(), 10))  # type: ignore[arg-type]
            if isinstance(message, protocol.SyncStep2):
                stalled_doc.apply(message.update)
                break
    await until(lambda: len(alice.seen_at) > 0 and alice.doc.text("b") == bob.doc.text("b"))
    await until(lambda: bob.doc.text("a") == alice.doc.text("a"))
    for field in ("a", "b"):
        assert stalled_doc.text(field) == alice.doc.text(field) == bob.doc.text(field)
    latencies = alice.latencies(bob) + bob.latencies(alice)
    assert len(latencies) > duration * rate  # the editors heard each other throughout
    worst = max(latencies)
    assert worst < 2.0, f"p50 {statistics.median(latencies) * 1000:.0f} ms, worst {worst * 1000:.0f} ms"
    assert stats(server)["websocket"]["slow_clients_closed"] == 1
    for editor in (alice, bob):
        assert editor.ws is not None
        await editor.ws.close()
    await asyncio.gather(*readers)


# --- connections and requests -----------------------------------------------------------------


async def test_connection_limits_per_document_address_and_instance(server_factory: ServerFactory) -> None:
    server = server_factory("memory://", args=["--max-connections-per-document", "2",
                                               "--max-connections-per-address", "3",
                                               "--max-connections", "4"])

    async def refused(room: str, source: str = "127.0.0.1") -> str:
        with pytest.raises(websockets.InvalidStatus) as refusal:
            await websockets.connect(f"{server.ws_url}/{room}", local_addr=(source, 0))
        assert refusal.value.response.status_code == 503
        return refusal.value.response.body.decode()

    def open_(room: str, source: str = "127.0.0.1") -> object:
        return websockets.connect(f"{server.ws_url}/{room}", local_addr=(source, 0))

    a1, a2 = await open_("a"), await open_("a")  # type: ignore[misc]
    assert "document" in await refused("a", "127.0.0.2")
    b1 = await open_("b")  # type: ignore[misc]
    assert "address" in await refused("c")
    c1 = await open_("c", "127.0.0.2")  # type: ignore[misc]
    assert "full" in await refused("d", "127.0.0.3")
    await a1.close()  # type: ignore[attr-defined]
    await until(lambda: stats(server)["peers"] == 3)
    a3 = await open_("a")  # type: ignore[misc]  # a slot given back is taken again
    assert stats(server)["admission"]["refused_full"] == 3
    for ws in (a2, a3, b1, c1):
        await ws.close()  # type: ignore[attr-defined]


def _raise_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_silent_sockets_and_partial_heads_are_closed_in_time_while_clients_get_in(
        server_factory: ServerFactory) -> None:
    timeout, silent_count, partial_count = 2.0, 1000, 300
    _raise_files_limit(2 * (silent_count + partial_count) + 256)
    server = server_factory("memory://", args=["--request-timeout", str(timeout)])

    async def open_for(reader: asyncio.StreamReader, opened: float) -> float:
        """How long the server kept this connection open (until it ended the stream)."""
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(reader.read(4096), 60):
                pass
        return time.monotonic() - opened

    async def open_one(head: bytes = b"") -> tuple[asyncio.StreamWriter, asyncio.Task[float]]:
        """A connection, watched from the moment it opens (opening them all takes a while)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        return writer, asyncio.create_task(open_for(reader, time.monotonic()))

    silent = [await open_one() for _ in range(silent_count)]
    partial = [await open_one(b"GET /ws/doc HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
               for _ in range(partial_count)]

    async def trickle() -> None:
        while True:
            for writer, _watch in partial:
                if not writer.is_closing():
                    writer.write(b"z")
            await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    waiting = asyncio.gather(*(watch for _writer, watch in silent + partial))
    served = 0
    while not waiting.done() or served < 3:  # good clients get in for as long as the others wait
        async with websockets.connect(f"{server.ws_url}/doc", open_timeout=30) as ws:
            assert isinstance(protocol.decode_message(await ws.recv()), protocol.SyncStep1)  # type: ignore[arg-type]
        served += 1
        await asyncio.sleep(0.1)
    lifetimes = await waiting
    trickling.cancel()
    # Closed by the deadline, counted from the connection's start: a deadline that each byte
    # renewed would keep the trickling heads open for as long as they trickle (here until the
    # 60 s read bound), and no deadline the silent ones. The margin is for a busy machine
    # noticing the close late, not for the server.
    longest = max(lifetimes)
    assert longest < 3 * timeout, f"a waiting connection was kept {longest:.1f} s"
    counters = stats(server)["requests"]
    closed = counters["requests_timed_out"] + counters["waiting_connections_closed"]
    assert closed >= silent_count + partial_count
    for writer, _watch in silent + partial:
        writer.close()


async def test_a_request_body_that_trickles_is_cut_at_the_request_timeout(
        server_factory: ServerFactory) -> None:
    server = server_factory("memory://", args=["--request-timeout", "1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /poll/doc?client=abcdefgh HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 1000\r\n\r\n" + b"\x00" * 10)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing():
                writer.write(b"\x00")
                await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    answer = await asyncio.wait_for(reader.read(), 30)  # to the end: the server closes it
    trickling.cancel()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert stats(server)["requests"]["requests_timed_out"] == 1
    writer.close()


async def test_request_heads_past_the_bounds_get_431_and_are_closed(server: ServerProcess) -> None:
    async def answer(head: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        response = await asyncio.wait_for(reader.read(), 5)  # read to the end: it is closed
        writer.close()
        return response

    upgrade = (b"GET /ws/doc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n")
    heads = {
        "a 20 KB head": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",
        "an endless head": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 200_000,
        "200 headers": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
            b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
        "a 9 KB cookie on an upgrade": upgrade + b"Cookie: c=" + b"c" * 9000 + b"\r\n\r\n",
    }
    for label, head in heads.items():
        response = await answer(head)
        assert response.startswith(b"HTTP/1.1 431 "), (label, response[:80])
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{server.ws_url}/doc", additional_headers={"X-Big": "b" * 20_000})
    assert refused.value.response.status_code == 431
    assert stats(server)["requests"]["heads_too_large"] == len(heads) + 1
    async with websockets.connect(f"{server.ws_url}/doc") as ws:  # an ordinary client still gets in
        await ws.recv()


@pytest.mark.usefixtures("websocket_layer")
async def test_a_message_past_the_size_limit_closes_with_1009_and_is_counted(
        server_factory: ServerFactory) -> None:
    server = server_factory("memory://", args=["--max-message-size", "65536"])
    ws = await joined(server)
    await ws.send(protocol.encode_sync_update(b"\x00" * 70_000))
    assert await closed_with(ws) == 1009
    await until(lambda: stats(server)["websocket"]["messages_too_large"] == 1)
