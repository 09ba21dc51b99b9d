"""Two ``collab serve`` instances sharing PostgreSQL keep converging while their Redis is down
(stopped: connections refused) or hung (SIGSTOP: connections accepted, nothing answered): each
room with clients reads what the other instance stored until the bus is healthy again.

Each test has its own redis-server, so that it may stop or pause it; the module has a
throwaway PostgreSQL database. Clients connect to one given instance each (no balancer), so an
edit can only reach the other instance through the bus or the store.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Callable, Sequence

import pytest

from collab import crdt
from collab.store.postgres import PostgresStore
from tests.metrics import Scrape, scrape
from tests.pyclient import PyClient
from tests.servers import ServerProcess
from tests.services import PrivateRedis

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(180)]

OUTAGE_DELIVERY = 20.0
"""An edit reaches the other instance within this while the bus is down: the hang is noticed
within about 4 s (a ping after 1 s of silence, 3 s for its answer), a room reads the store
every second; the rest is slack for a shared, loaded machine."""


async def metrics(servers: Sequence[ServerProcess]) -> list[Scrape]:
    return [await asyncio.to_thread(scrape, s.http_url) for s in servers]


async def wait_bus(servers: Sequence[ServerProcess], healthy: bool, timeout: float = 30.0) -> None:
    """Until every instance reports the bus healthy (or every one unhealthy), bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        values = [m.value("collab_bus_healthy") for m in await metrics(servers)]
        if all(v == float(healthy) for v in values):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"collab_bus_healthy is {values}, expected all {int(healthy)}")
        await asyncio.sleep(0.2)


async def stored_text(database: str, room: str) -> str:
    store = PostgresStore(database)
    await store.open()
    try:
        return crdt.document_from((await store.load(room)).updates).text()
    finally:
        await store.close()


def stop_redis(redis: PrivateRedis) -> Callable[[], None]:
    redis.stop()
    return redis.start


def pause_redis(redis: PrivateRedis) -> Callable[[], None]:
    assert redis.process is not None
    pid = redis.process.pid
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("fault", [stop_redis, pause_redis], ids=["refused", "hung"])
async def test_instances_converge_through_the_store_while_redis_is_out(
        server_factory: Callable[..., ServerProcess], database: str, redis_server: PrivateRedis,
        fault: Callable[[PrivateRedis], Callable[[], None]]) -> None:
    servers = list(await asyncio.gather(*(asyncio.to_thread(
        server_factory, store=database, args=["--redis", redis_server.url]) for _ in range(2))))
    room = f"outage-{secrets.token_hex(4)}"
    first = await PyClient(servers[0].ws_url, room).start()
    second = await PyClient(servers[1].ws_url, room).start()
    restore: Callable[[], None] | None = None
    try:
        await first.insert("<before>")
        await second.wait_for(lambda: "<before>" in second.text(), 15)  # over the bus
        before = [m.value("collab_bus_outage_updates_total") for m in await metrics(servers)]
        assert before == [0, 0]

        restore = fault(redis_server)
        await wait_bus(servers, healthy=False)
        for i in range(3):  # both ways, several times: the store keeps carrying edits
            await first.insert(f"<first-{i}>")
            await second.insert(f"<second-{i}>")
            for client in (first, second):
                await client.wait_for(lambda c=client, i=i: f"<first-{i}>" in c.text()
                                      and f"<second-{i}>" in c.text(), OUTAGE_DELIVERY)
        during = await metrics(servers)
        assert [m.value("collab_bus_healthy") for m in during] == [0, 0], "the bus came back by itself"
        for report in during:
            assert report.value("collab_bus_outages_total") >= 1
            assert report.value("collab_bus_outage_reads_total") >= 1
            assert report.value("collab_bus_outage_updates_total") >= 1

        restore()
        restore = None
        await wait_bus(servers, healthy=True)
        await first.insert("<after-first>")
        await second.insert("<after-second>")
        everything = ["<before>", *(f"<{who}-{i}>" for who in ("first", "second") for i in range(3)),
                      "<after-first>", "<after-second>"]
        for client in (first, second):
            await client.wait_for(lambda c=client: all(t in c.text() for t in everything), 30)
        assert first.text() == second.text()
        assert len(first.text()) == sum(len(t) for t in everything)
        for server in servers:
            served = await PyClient(server.ws_url, room, reconnect=False).start()
            try:
                assert served.text() == first.text()
            finally:
                await served.close()
        deadline = asyncio.get_running_loop().time() + 15
        while (stored := await stored_text(database, room)) != first.text():
            assert asyncio.get_running_loop().time() < deadline, f"PostgreSQL holds {stored!r}"
            await asyncio.sleep(0.2)
    finally:
        if restore is not None:
            restore()
        await asyncio.gather(first.close(), second.close())
