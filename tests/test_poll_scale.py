"""The HTTP fallback without session affinity: two instances sharing PostgreSQL and Redis behind
a balancer that sends every HTTP request to the next instance (one request per connection), so
no two consecutive requests of a client reach the same instance."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from collab import protocol
from collab.protocol import AwarenessEntry
from tests.balancer import Balancer
from tests.metrics import scrape
from tests.pollclient import PollClient
from tests.pyclient import PyClient
from tests.servers import ServerProcess
from tests.services import PrivateRedis, wait_until
from tests.test_poll import presence_seen

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(150)]

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
async def instances(server_factory: ServerFactory, database: str,
                    redis_server: PrivateRedis) -> list[ServerProcess]:
    def start() -> ServerProcess:
        return server_factory(store=database, args=["--redis", redis_server.url, "--poll-timeout", "2"])

    return list(await asyncio.gather(*(asyncio.to_thread(start) for _ in range(2))))


@pytest.fixture
async def balancer(instances: list[ServerProcess]) -> AsyncIterator[Balancer]:
    async with Balancer([("127.0.0.1", s.port) for s in instances], http=True) as made:
        yield made


async def test_a_poller_without_affinity_converges_with_websocket_clients_elsewhere(
        instances: list[ServerProcess], balancer: Balancer) -> None:
    room = f"poll-scale-{secrets.token_hex(4)}"
    poller = await PollClient(balancer.http_url + "/poll", room, client_id=31).start()
    # The WebSocket clients are all on the second instance; the poller is on both, in turn.
    sockets = [await PyClient(instances[1].ws_url, room).start() for _ in range(2)]
    for i in range(10):
        await poller.insert(f"p{i} ", 0)
        await sockets[i % 2].insert(f"w{i} ")
    expected_words = {f"p{i}" for i in range(10)} | {f"w{i}" for i in range(10)}
    for client in sockets:
        await client.wait_for(lambda c=client: set(c.text().split()) == expected_words, 30)
    await poller.wait_for(lambda: poller.text() == sockets[0].text(), 30)
    assert sockets[0].text() == sockets[1].text()

    poller.announce({"user": {"name": "Poller"}})
    entry = AwarenessEntry(41, 1, json.dumps({"user": {"name": "Socket"}}))
    await sockets[0].send_raw(protocol.encode_awareness(protocol.encode_awareness_payload([entry])))
    await sockets[1].wait_for(lambda: 31 in presence_seen(sockets[1].received), 20)
    await poller.wait_for(lambda: 41 in poller.present(), 20)
    await poller.wait_for(lambda: poller.acks >= 10, 20)  # every edit acked, whichever instance took it

    # Both instances answered polls and sends: the client was never tied to one. Which one a
    # request reaches depends on how the client's polls and sends happened to interleave (in
    # strict turns, every poll would reach one instance and every send the other), so the
    # poller sends edits of its own, one at a time, until each instance has taken both kinds.
    def reached(polls: bool) -> set[object]:
        return {backend for _method, target, backend in balancer.requests
                if ("wait=1" in target) == polls}

    for n in range(20):
        if len(reached(polls=True)) == 2 and len(reached(polls=False)) == 2:
            break
        acked = poller.acks
        await poller.insert(f"s{n} ")
        await poller.wait_for(lambda acked=acked: poller.acks > acked, 20)
    assert len(reached(polls=True)) == 2 and len(reached(polls=False)) == 2

    await poller.close()  # the goodbye lands on one instance; the others hear it on the bus
    await sockets[1].wait_for(lambda: 31 not in presence_seen(sockets[1].received), 10)
    for client in sockets:
        await client.close()


async def test_an_idle_poller_without_affinity_is_answered_nothing_new(
        instances: list[ServerProcess], balancer: Balancer) -> None:
    """Digests in the version token let the other instance see that the client has it all:
    idle polls carry nothing, not the document again."""
    room = f"poll-idle-{secrets.token_hex(4)}"
    writer = await PyClient(instances[0].ws_url, room).start()
    await writer.insert("x" * 2000)
    await writer.wait_for(lambda: any(isinstance(m, protocol.SyncUpdate) and b"xxxx" in m.update
                                      for m in writer.received), 10)  # stored: every instance loads it
    poller = await PollClient(balancer.http_url + "/poll", room).start()
    await poller.wait_text("x" * 2000)
    await poller.wait_for(lambda: poller.acks >= 1, 10)  # its step 2 (nothing new) was stored
    assert poller.connection is not None
    before = len(poller.received)
    polls = poller.connection.polls
    connection = poller.connection
    await wait_until(lambda: connection.polls >= polls + 3, 20, interval=0.05)
    # Three idle answers, two of them from the other instance: nothing at all in them.
    assert poller.received[before:] == [], poller.received[before:]
    await writer.close()
    await poller.close()


def parked_on(server: ServerProcess) -> int:
    return int(scrape(server.http_url).value("collab_poll_parked"))


async def test_a_poller_carries_on_when_the_instance_holding_its_poll_is_killed(
        instances: list[ServerProcess], balancer: Balancer) -> None:
    room = f"poll-kill-{secrets.token_hex(4)}"
    poller = await PollClient(balancer.http_url + "/poll", room).start()
    watcher = await PyClient(instances[1].ws_url, room).start()
    await poller.insert("before ")
    await watcher.wait_text("before ")
    await wait_until(lambda: parked_on(instances[0]) >= 1, 20, interval=0.05)
    instances[0].kill()  # its parked poll is cut; the next request goes to the live instance
    await poller.insert("after")
    await watcher.wait_text("before after", 30)
    await watcher.insert("!")
    await poller.wait_text("before after!", 30)
    assert poller.close_info is None  # it never gave up
    await poller.wait_for(lambda: poller.acks >= 2, 20)
    await watcher.close()
    await poller.close()
