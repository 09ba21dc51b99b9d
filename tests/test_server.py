"""A real ``collab serve`` on loopback, driven by Python WebSocket clients."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
import websockets

from collab import crdt, protocol
from tests.metrics import scrape
from tests.pyclient import PyClient
from tests.servers import ServerProcess

pytestmark = pytest.mark.usefixtures("websocket_layer")

ServerFactory = Callable[..., ServerProcess]


async def connect(server: ServerProcess, room: str, **kwargs: object) -> PyClient:
    return await PyClient(server.ws_url, room, **kwargs).start()  # type: ignore[arg-type]


async def wait_until_async(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait until ``predicate`` holds, asking it off the event loop (it may block)."""
    async def poll() -> None:
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_clients_converge_and_a_late_joiner_gets_everything(server: ServerProcess) -> None:
    alice, bob = await connect(server, "doc"), await connect(server, "doc")
    await alice.insert("hello ")
    await bob.wait_text("hello ")
    await bob.insert("world")
    await alice.wait_text("hello world")
    late = await connect(server, "doc")
    assert late.text() == "hello world"
    other = await connect(server, "other-doc")
    assert other.text() == ""
    for client in (alice, bob, late, other):
        await client.close()


async def test_many_clients_joining_a_new_document_at_once_all_sync(server: ServerProcess) -> None:
    clients = await asyncio.gather(*(connect(server, "storm") for _ in range(40)))
    await clients[0].insert("x")
    await asyncio.gather(*(c.wait_text("x") for c in clients))
    await asyncio.gather(*(c.close() for c in clients))


BAD_FRAMES: list[tuple[str, bytes | str, int]] = [
    ("garbage", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 1002),
    ("text frame", "hello", 1003),
    ("unknown message type", b"\x07\x00", 1002),
    ("unknown sync type", b"\x00\x09\x00", 1002),
    ("truncated varint", b"\x00\x02\x85", 1002),
    ("length beyond the frame", b"\x00\x02\xff\x7f\x01", 1002),
    ("corrupt update", protocol.encode_sync_update(b"\x05\x03garbage-update"), 1007),
    ("corrupt step 2", protocol.encode_sync_step2(b"\x01\x01\x01"), 1007),
    ("corrupt state vector", protocol.encode_sync_step1(b"\x09\x01"), 1007),
    ("awareness not JSON", protocol.encode_awareness(
        protocol.encode_awareness_payload([protocol.AwarenessEntry(1, 1, "{oops")])), 1002),
    ("oversized frame", b"\x00\x02" + b"\x00" * 70_000, 1009),
]


@pytest.mark.parametrize(("label", "frame", "code"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
async def test_bad_input_closes_only_that_client(server_factory: ServerFactory, label: str,
                                                 frame: bytes | str, code: int) -> None:
    server = server_factory(args=["--max-message-size", "65536"])
    good = await connect(server, "doc")
    await good.insert("safe")
    bad = await connect(server, "doc", reconnect=False)
    await bad.wait_text("safe")
    await bad.send_raw(frame)
    assert await bad.wait_closed() == code, label
    # The document is untouched, and a well-behaved client still syncs both ways.
    await good.insert("!")
    fresh = await connect(server, "doc")
    assert fresh.text() == "safe!"
    await fresh.insert("?")
    await good.wait_text("safe!?")
    await good.close()
    await fresh.close()


@pytest.mark.parametrize(("path", "reason"), [
    ("/ws/" + "x" * 256, "longer than 255"),
    ("/ws/a%0Ab", "control characters"),
    ("/ws", "must be /ws/<room name>"),
])
async def test_bad_room_names_are_refused_before_the_upgrade(server: ServerProcess, path: str,
                                                             reason: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}{path}"):
            pass
    assert refused.value.response.status_code == 400
    assert reason in refused.value.response.body.decode()


async def test_room_names_are_kept_exactly_as_sent(server: ServerProcess) -> None:
    slash = await connect(server, "a/b")
    encoded = await connect(server, "a%2Fb")
    await slash.insert("slash")
    await encoded.insert("encoded")
    await slash.wait_text("slash")
    again = await connect(server, "a%2Fb")
    assert again.text() == "encoded"
    for client in (slash, encoded, again):
        await client.close()


async def test_an_idle_lone_client_keeps_receiving_messages(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--keepalive", "0.2"])
    async with websockets.connect(server.ws_url + "/quiet") as ws:
        await ws.recv()  # the server's step 1
        gaps = []
        loop = asyncio.get_running_loop()
        last = loop.time()
        for _ in range(5):  # a stock client would drop a socket silent for 30 s; here 0.2 s
            frame = await asyncio.wait_for(ws.recv(), 2.0)
            assert protocol.decode_message(frame) == protocol.AwarenessUpdate(b"\x00")  # type: ignore[arg-type]
            now = loop.time()
            gaps.append(now - last)
            last = now
        assert ws.close_code is None


async def test_sigterm_closes_sockets_with_1012_flushes_and_exits_0(server_factory: ServerFactory,
                                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = f"sqlite:///{tmp_path / 'term.db'}"
    server = server_factory(store, args=["--commit-window", "1.0"])
    writer = await connect(server, "doc", reconnect=False)
    watcher = await connect(server, "doc", reconnect=False)
    await writer.insert("kept through shutdown")
    await watcher.wait_text("kept through shutdown")  # broadcast at once, stored within 1 s
    assert await asyncio.to_thread(server.terminate) == 0
    assert await writer.wait_closed() == 1012
    assert await watcher.wait_closed() == 1012
    restarted = server_factory(store)
    reader = await connect(restarted, "doc")
    assert reader.text() == "kept through shutdown"
    await reader.close()


async def test_health_endpoints(server: ServerProcess) -> None:
    assert http_status(server.http_url + "/liveness_check") == 200
    assert http_status(server.http_url + "/readiness_check") == 200
    assert http_status(server.http_url + "/metrics") == 200


async def test_crash_loses_no_token_typed_by_connected_clients(server_factory: ServerFactory,
                                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = f"sqlite:///{tmp_path / 'crash.db'}"
    server = server_factory(store)
    clients = [await connect(server, "crash") for _ in range(3)]
    tokens: list[str] = []
    stop = asyncio.Event()

    async def typist(index: int, client: PyClient) -> None:
        n = 0
        while not stop.is_set():
            token = f"<{index}-{n}>"
            tokens.append(token)
            await client.insert(token)
            n += 1
            await asyncio.sleep(0.005)

    typing = [asyncio.create_task(typist(i, c)) for i, c in enumerate(clients)]
    await clients[0].wait_for(lambda: len(tokens) > 60, 10)
    server.kill()
    await asyncio.sleep(0.05)  # keep typing while no server runs
    restarted = server_factory(store, port=server.port)
    await clients[0].wait_for(lambda: all(c.connections >= 2 for c in clients), 15)
    stop.set()
    await asyncio.gather(*typing)

    def has_every_token(client: PyClient) -> bool:
        return all(token in client.text() for token in tokens)

    for client in clients:
        await client.wait_for(lambda c=client: has_every_token(c), 15)
    for client in clients:
        await client.close()
    assert restarted.terminate() == 0
    final = server_factory(store, port=server.port)
    fresh = await connect(final, "crash")
    assert has_every_token(fresh), [t for t in tokens if t not in fresh.text()]
    assert len(fresh.text()) == sum(len(t) for t in tokens)  # nothing doubled
    await fresh.close()


async def test_a_fresh_instance_with_an_empty_store_gets_the_document_back(server_factory: ServerFactory,
                                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = server_factory(f"sqlite:///{tmp_path / 'one.db'}")
    alice, bob = await connect(first, "doc"), await connect(first, "doc")
    await alice.insert("before ")
    await bob.wait_text("before ")
    first.kill()
    await bob.insert("offline ")
    empty = server_factory(f"sqlite:///{tmp_path / 'two.db'}", port=first.port)
    await alice.wait_for(lambda: "offline" in alice.text(), 15)
    late = await connect(empty, "doc")
    await late.wait_for(lambda: late.text() == alice.text() and "before" in late.text(), 10)
    assert crdt.document_from([late.doc.full_state()]).text() == bob.text()
    for client in (alice, bob, late):
        await client.close()


async def test_a_client_that_stops_reading_is_disconnected_not_buffered(
        server_factory: ServerFactory) -> None:
    server = server_factory("memory://", args=["--max-send-buffer", "1000000", "--durable-acks", "false",
                                               "--max-document-size", "64000000"])
    writer = await connect(server, "doc")
    stalled = await websockets.connect(server.ws_url + "/doc", max_queue=1, max_size=None)
    await stalled.send(protocol.encode_sync_step1(b"\x00"))

    async def told_to_reconnect() -> int | None:
        """Once the server has given up on it, the client reads again: what its socket still
        held, then the close frame with the reason."""
        await wait_until_async(lambda: scrape(server.http_url).value(
            "collab_websocket_slow_clients_closed_total") >= 1, 120)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(stalled.recv(), 30)
        return stalled.close_code

    closed = asyncio.create_task(told_to_reconnect())
    chunk = "x" * 100_000
    for _ in range(200):  # 20 MB: more than the kernel's socket buffers hold
        await writer.insert(chunk, index=0)
    assert await closed == 1013
    # A newcomer still gets the whole 20 MB document in one step 2, larger than the limit.
    newcomer = await connect(server, "doc")
    await newcomer.wait_for(lambda: len(newcomer.text()) == 20_000_000, 60)
    assert writer.close_codes == [] and writer.connections == 1
    await writer.close()
    await newcomer.close()


async def test_compressed_connections_converge(server_factory: ServerFactory) -> None:
    """With per-message compression negotiated, each connection's frames are compressed for it
    (collab's layer sends them through the ASGI path), and clients converge as without it."""
    server = server_factory(args=["--per-message-deflate", "true"])
    alice, bob = await connect(server, "doc"), await connect(server, "doc")
    assert alice._ws is not None and alice._ws.protocol.extensions  # deflate was negotiated
    await alice.insert("squeezed " * 50)
    await bob.wait_text("squeezed " * 50)
    await bob.insert("!")
    await alice.wait_text("squeezed " * 50 + "!")
    for client in (alice, bob):
        await client.close()
