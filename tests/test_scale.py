"""Several ``collab serve`` instances sharing PostgreSQL and Redis behind a round-robin balancer
without affinity: clients converge across instances, survive the loss of an instance and of the
bus, and every typed token ends up in the database.

Each test gets its own redis-server (so it may cut or restart it without disturbing anyone)
and the module gets a throwaway PostgreSQL database. Both instances run with a small
compaction threshold, so they compact the same documents concurrently while clients type.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from collab import crdt, protocol
from collab.store.postgres import PostgresStore
from tests.balancer import Balancer
from tests.jsclient import js_clients, need_node
from tests.metrics import scrape
from tests.pyclient import PyClient
from tests.servers import ServerProcess
from tests.services import PrivateRedis

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(150)]

ServerFactory = Callable[..., ServerProcess]
CONVERGE_TIMEOUT = 40.0
"""Long enough for a bus reconnection (backoff up to 5 s) plus the catch-up."""


@dataclass
class Cluster:
    servers: list[ServerProcess]
    balancer: Balancer
    database: str
    redis: PrivateRedis
    factory: ServerFactory

    def start_server(self) -> ServerProcess:
        return self.factory(store=self.database, args=["--redis", self.redis.url,
                                                       "--compact-threshold", "10"])


@pytest.fixture
async def cluster(server_factory: ServerFactory, database: str,
                  redis_server: PrivateRedis) -> AsyncIterator[Cluster]:
    made = Cluster([], Balancer(), database, redis_server, server_factory)
    made.servers = list(await asyncio.gather(*(asyncio.to_thread(made.start_server) for _ in range(2))))
    for server in made.servers:
        made.balancer.add(("127.0.0.1", server.port))
    await made.balancer.start()
    try:
        yield made
    finally:
        await made.balancer.close()


def room_name() -> str:
    return f"scale-{secrets.token_hex(4)}"


async def clients_via(balancer: Balancer, room: str, count: int) -> list[PyClient]:
    """Connect one after another, so that round robin spreads them over the instances."""
    return [await PyClient(balancer.ws_url, room).start() for _ in range(count)]


async def close_all(clients: Sequence[PyClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


async def type_tokens(client: PyClient, label: str, count: int, typed: asyncio.Event | None = None,
                      after: int = 0, pause: float = 0.02) -> list[str]:
    """Append ``count`` unique tokens, pacing like a typist; set ``typed`` after ``after`` of them."""
    tokens = []
    for i in range(count):
        token = f"<{label}-{i}>"
        await client.insert(token)
        tokens.append(token)
        if typed is not None and i + 1 == after:
            typed.set()
        await asyncio.sleep(pause)
    return tokens


async def converge(clients: Sequence[PyClient], tokens: Sequence[str],
                   timeout: float = CONVERGE_TIMEOUT) -> str:
    for client in clients:
        try:
            await client.wait_for(lambda c=client: all(t in c.text() for t in tokens), timeout)
        except asyncio.TimeoutError:
            missing = [t for t in tokens if t not in client.text()]
            raise AssertionError(f"client lacks {len(missing)} tokens, e.g. {missing[:5]}") from None
    texts = {client.text() for client in clients}
    assert len(texts) == 1, "clients hold every token but disagree on the text"
    return texts.pop()


async def stored_text(database: str, room: str) -> str:
    store = PostgresStore(database)
    await store.open()
    try:
        return crdt.document_from((await store.load(room)).updates).text()
    finally:
        await store.close()


async def wait_stored(database: str, room: str, tokens: Sequence[str], timeout: float = 15.0) -> str:
    """Poll PostgreSQL until it holds every token (commits trail the broadcasts by a few ms)."""
    latest = ""

    async def holds_all() -> bool:
        nonlocal latest
        latest = await stored_text(database, room)
        return all(t in latest for t in tokens)

    deadline = asyncio.get_running_loop().time() + timeout
    while not await holds_all():
        if asyncio.get_running_loop().time() > deadline:
            missing = [t for t in tokens if t not in latest]
            raise AssertionError(f"PostgreSQL lacks {len(missing)} tokens, e.g. {missing[:5]}")
        await asyncio.sleep(0.1)
    return latest


async def direct_text(server: ServerProcess, room: str) -> str:
    """What one given instance serves for ``room``, bypassing the balancer."""
    client = await PyClient(server.ws_url, room, reconnect=False).start()
    try:
        return client.text()
    finally:
        await client.close()


async def bus_healthy(servers: Sequence[ServerProcess]) -> bool:
    reports = [await asyncio.to_thread(scrape, s.http_url) for s in servers]
    return all(report.value("collab_bus_healthy") == 1 for report in reports)


# --- tests --------------------------------------------------------------------------------


async def test_clients_on_two_instances_converge(cluster: Cluster) -> None:
    room = room_name()
    clients = await clients_via(cluster.balancer, room, 4)
    try:
        assert sorted(cluster.balancer.routed.values()) == [2, 2], "round robin should split 4 clients"
        tokens = await asyncio.gather(*(type_tokens(c, f"c{i}", 15) for i, c in enumerate(clients)))
        everything = [t for part in tokens for t in part]
        text = await converge(clients, everything)
        assert len(text) == sum(len(t) for t in everything)
        stored = await wait_stored(cluster.database, room, everything)
        assert sorted(stored.split(">")) == sorted(text.split(">"))
    finally:
        await close_all(clients)


@pytest.mark.node
async def test_stock_clients_on_two_instances_share_text_and_presence(cluster: Cluster) -> None:
    need_node()
    room = room_name()
    async with js_clients() as js:
        first = await js.start(cluster.balancer.ws_url, room)
        second = await js.start(cluster.balancer.ws_url, room)
        await first.wait_synced()
        await second.wait_synced()
        assert sorted(cluster.balancer.routed.values()) == [1, 1], "the two clients share an instance"
        await first.append("<from-first>")
        await second.append("<from-second>")
        text = await first.wait_text("<from-first>", "<from-second>")
        await second.wait_text(equals=text)
        await first.set_awareness({"user": "first"})
        states = await second.wait_awareness(present=[first.client_id])
        assert states[first.client_id] == {"user": "first"}
        await first.exit()  # leaving removes the presence on the other instance too
        await second.wait_awareness(absent=[first.client_id])


async def test_sigkill_one_instance_while_three_clients_type(cluster: Cluster) -> None:
    room = room_name()
    doomed, survivor = cluster.servers
    clients = await clients_via(cluster.balancer, room, 3)
    try:
        typed = asyncio.Event()
        typing = [asyncio.create_task(type_tokens(c, f"k{i}", 40, typed if i == 0 else None, after=12))
                  for i, c in enumerate(clients)]
        await asyncio.wait_for(typed.wait(), 30)
        assert await asyncio.to_thread(doomed.kill) == -9
        tokens = [t for part in await asyncio.gather(*typing) for t in part]
        text = await converge(clients, tokens)
        assert all(c.connections >= 1 for c in clients)
        assert max(c.connections for c in clients) >= 2, "nobody was moved off the killed instance"
        on_survivor = await direct_text(survivor, room)
        assert all(t in on_survivor for t in tokens)
        stored = await wait_stored(cluster.database, room, tokens)
        assert len(stored) == len(text)
    finally:
        await close_all(clients)
    # stop every instance, start a fresh one: the document is all there
    assert await asyncio.to_thread(survivor.terminate) == 0
    fresh = await asyncio.to_thread(cluster.start_server)
    assert await direct_text(fresh, room) == text


async def test_redis_connection_cut_mid_editing(cluster: Cluster) -> None:
    room = room_name()
    clients = await clients_via(cluster.balancer, room, 2)
    admin = aioredis.Redis.from_url(cluster.redis.url)
    try:
        typed = asyncio.Event()
        typing = [asyncio.create_task(type_tokens(c, f"r{i}", 40, typed if i == 0 else None, after=15))
                  for i, c in enumerate(clients)]
        await asyncio.wait_for(typed.wait(), 30)
        killed = await admin.client_kill_filter(_type="pubsub")
        assert killed >= 2, "each instance should have had a subscriber connection"
        tokens = [t for part in await asyncio.gather(*typing) for t in part]
        await converge(clients, tokens)
        await wait_until_async(lambda: bus_healthy(cluster.servers))
        await wait_stored(cluster.database, room, tokens)
    finally:
        await admin.aclose()
        await close_all(clients)


async def test_redis_restart_mid_editing(cluster: Cluster) -> None:
    room = room_name()
    clients = await clients_via(cluster.balancer, room, 2)
    try:
        halfway = asyncio.Event()
        typing = [asyncio.create_task(type_tokens(c, f"s{i}", 60, halfway if i == 0 else None, after=15,
                                                  pause=0.03))
                  for i, c in enumerate(clients)]
        await asyncio.wait_for(halfway.wait(), 30)
        await asyncio.to_thread(cluster.redis.stop)
        await wait_until_async(lambda: _not(bus_healthy(cluster.servers)))
        await asyncio.to_thread(cluster.redis.start)
        tokens = [t for part in await asyncio.gather(*typing) for t in part]
        await converge(clients, tokens)
        await wait_until_async(lambda: bus_healthy(cluster.servers))
        await wait_stored(cluster.database, room, tokens)
    finally:
        await close_all(clients)


async def _not(check: object) -> bool:
    assert asyncio.iscoroutine(check)
    return not await check


async def wait_until_async(check: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll an async condition, bounded (a server's state is only visible over HTTP)."""
    async def holds() -> bool:
        result = check()
        return bool(await result) if asyncio.iscoroutine(result) else bool(result)

    deadline = asyncio.get_running_loop().time() + timeout
    while not await holds():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)



async def test_presence_of_a_dead_instances_clients_expires_elsewhere(cluster: Cluster) -> None:
    """A client's presence relayed to another instance goes away there when its own instance
    dies without a word: the survivor drops presence that is not renewed within 30 s. The
    watcher is a raw client that relays nothing, so only the server can announce the removal."""
    room = room_name()
    dying, surviving = cluster.servers
    state = protocol.AwarenessEntry(4242, 1, '{"user":{"name":"ghost"}}')
    async with connect(f"{surviving.ws_url}/{room}") as watcher, \
            connect(f"{dying.ws_url}/{room}") as ghost:
        for ws in (watcher, ghost):  # the server's step 1: both rooms are loaded and on the bus
            await asyncio.wait_for(ws.recv(), 10)
        await ghost.send(protocol.encode_awareness(protocol.encode_awareness_payload([state])))

        async def presence_of_ghost(live: bool) -> None:
            while True:
                message = protocol.decode_message(await watcher.recv())
                if isinstance(message, protocol.AwarenessUpdate):
                    for entry in protocol.decode_awareness_payload(message.payload):
                        if entry.client_id == state.client_id and entry.is_removal != live:
                            return

        await asyncio.wait_for(presence_of_ghost(live=True), 10)
        dying.kill()
        await asyncio.wait_for(presence_of_ghost(live=False), 45)  # 30 s + housekeeping
