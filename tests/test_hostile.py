"""Hostile input against a real server: each reproduction closes only the offending connection,
with the documented code, and leaves the room, a fresh joiner and the store agreeing."""

from __future__ import annotations

import asyncio
import socket
import struct
import urllib.request
from collections.abc import Callable

import pytest
import websockets

from collab import crdt, gate, protocol
from collab.protocol import AwarenessEntry
from collab.store import open_store
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


# --- what the engine must never see -------------------------------------------------------------


def rss(server: ServerProcess) -> int:
    """The server's resident memory, in bytes."""
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def stored_text(store: str, room: str) -> str:
    """The text of ``room`` as a fresh instance would load it from the store, read now."""
    async def read() -> str:
        backing = open_store(store)
        await backing.open()
        try:
            return crdt.document_from((await backing.load(room)).updates).text()
        finally:
            await backing.close()

    return asyncio.run(read())


async def assert_agree(server: ServerProcess, room: str, writer: PyClient) -> None:
    """The writer, a fresh joiner and the store hold the same text."""
    fresh = await connect(server, room)
    try:
        await fresh.wait_text(writer.text())
    finally:
        await fresh.close()
    for _ in range(100):  # the store takes the writer's last update within its commit window
        stored = await asyncio.to_thread(stored_text, server.store, room)
        if stored == writer.text():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stored {stored!r}, the room has {writer.text()!r}")


async def send_and_expect_close(server: ServerProcess, room: str, frame: bytes) -> int | None:
    async with websockets.connect(f"{server.ws_url}/{room}", max_size=None) as ws:
        await ws.send(protocol.encode_sync_step1(b"\x00"))
        await ws.send(frame)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


def engine_client_update(client_id: int, text: str) -> bytes:
    import pycrdt

    doc = pycrdt.Doc(client_id=client_id)
    doc.get("text", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


async def test_the_24_byte_panic_update_is_refused_before_the_engine(server: ServerProcess) -> None:
    writer = await connect(server, "doc")
    # The engine panics on it once the document holds client 777's text.
    async with websockets.connect(f"{server.ws_url}/doc") as ws:
        await ws.send(protocol.encode_sync_update(engine_client_update(777, "hello world")))
    await writer.wait_text("hello world")
    panic = bytes.fromhex("0101959aef3affffffff0f418906000301959aef3a010003")
    assert await send_and_expect_close(server, "doc", protocol.encode_sync_update(panic)) == 1007
    assert "clock 4294967295 is past" in server.log()
    await writer.insert("!")
    await assert_agree(server, "doc", writer)
    assert writer.close_codes == []
    await writer.close()


async def test_the_silent_update_waits_outside_the_document(server: ServerProcess) -> None:
    """A struct at clock 42 of a client with no earlier clocks, its origins inside existing
    text: the engine would take it in, report nothing and hand it to every new joiner."""
    writer = await connect(server, "doc")
    await writer.insert("hello world")
    [client] = writer.doc.clocks()
    silent = (b"\x01\x01" + gate._write_uint(99) + gate._write_uint(42) + b"\xc4"
              + gate._write_uint(client) + b"\x04" + gate._write_uint(client) + b"\x05"
              + b"\x02xx" + b"\x00")
    assert len(silent) <= 28  # 27 or 28 bytes, as the writer's client id takes 7 or 8
    sender = await connect(server, "doc", reconnect=False)
    await sender.send_raw(protocol.encode_sync_update(silent))
    await writer.insert("!")
    await sender.wait_text("hello world!")  # still connected: the update waits, unrefused
    await assert_agree(server, "doc", writer)
    assert writer.text() == "hello world!"
    await sender.close()
    await writer.close()


@pytest.mark.parametrize(("label", "frame"), [
    ("10-byte step 1 with a huge count", protocol.encode_sync_step1(b"\xff\xff\xff\xff\x0f\x01\x01")),
    ("38-byte update with a huge value count", protocol.encode_sync_update(
        b"\x01\x01\x01\x00\x08\x01\x04text" + b"\xff\xff\xff\xff\x0f" + b"\x75\xff\xff\xff\xff\x0f"
        + b"\x7e" * 12 + b"\x00")),
])
async def test_small_frames_with_huge_counts_allocate_nothing(server: ServerProcess, label: str,
                                                              frame: bytes) -> None:
    writer = await connect(server, "doc")
    await writer.insert("safe")
    before = rss(server)
    for _ in range(20):
        assert await send_and_expect_close(server, "doc", frame) == 1007, label
    grown = rss(server) - before
    assert grown < 16 * 1024 * 1024, f"{label}: the server grew by {grown / 2**20:.0f} MiB"
    await assert_agree(server, "doc", writer)
    await writer.close()


async def test_a_flood_of_null_presence_is_refused_at_once(server: ServerProcess) -> None:
    writer = await connect(server, "doc")
    await writer.insert("safe")
    entry = b"\x01\x01" + protocol.write_var_string("null")
    flood = protocol.encode_awareness(protocol.write_var_uint(1_500_000) + entry * 1_500_000)
    before = rss(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await send_and_expect_close(server, "doc", flood) == 1002
    assert loop.time() - started < 2.0
    assert rss(server) - before < 64 * 1024 * 1024
    assert server.log().count("awareness entries; at most") == 1
    await assert_agree(server, "doc", writer)
    await writer.close()


async def test_deep_presence_json_is_a_bad_message_with_one_log_line(server: ServerProcess) -> None:
    writer = await connect(server, "doc")
    await writer.insert("safe")
    deep = "[" * 5000 + "]" * 5000
    frame = protocol.encode_awareness(protocol.encode_awareness_payload([AwarenessEntry(5, 1, deep)]))
    assert await send_and_expect_close(server, "doc", frame) == 1002
    log = server.log()
    assert log.count("nested deeper than") == 1 and "Traceback" not in log
    await assert_agree(server, "doc", writer)
    await writer.close()


@pytest.mark.node
async def test_an_item_with_inconsistent_origins_is_refused_and_a_stock_writer_agrees(
        server: ServerProcess) -> None:
    """The divergence the long fuzzing campaign found: an item whose right origin lies to the
    left of its origin. Relayed, a stock Yjs writer typing concurrently placed it elsewhere than
    the server for good; now it is refused (1007) and never relayed."""
    from tests.jsclient import js_clients, need_node

    need_node()
    async with js_clients() as js:
        writer = await js.start(server.ws_url, "origins")
        await writer.wait_synced()
        await writer.append("abcdef")
        reader = await connect(server, "origins")
        await reader.wait_text("abcdef")
        cid = writer.client_id
        hostile = (b"\x01\x01" + gate._write_uint(2) + b"\x00" + b"\xc4"
                   + gate._write_uint(cid) + b"\x04" + gate._write_uint(cid) + b"\x01"
                   + b"\x01H" + b"\x00")
        assert await send_and_expect_close(server, "origins", protocol.encode_sync_update(hostile)) == 1007
        assert "right origin" in server.log() or "origins" in server.log()
        await writer.insert(1, "z")  # where the item would have raced the writer's edit
        await writer.append("!")
        text = await writer.wait_text("z", "!")
        assert "H" not in text
        await reader.wait_text(text)
        await assert_agree(server, "origins", reader)
        await reader.close()
