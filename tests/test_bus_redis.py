"""RedisBus: the frame format and gap tracking in isolation, then two buses in one process
exchanging messages through the real Redis, with their connections cut under them."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from collab.bus import BusMessage, Kind, open_bus
from collab.bus.redis import (
    AWARENESS,
    COMMITTED,
    MARKER,
    UPDATE,
    BadFrame,
    HeldUpdates,
    RedisBus,
    SequenceTracker,
    committed_seq,
    decode_frame,
    encode_frame,
)
from collab.protocol import write_var_uint
from tests.services import REDIS_URL, free_port, need_redis, private_redis

# --- sans-I/O -----------------------------------------------------------------------------


def test_frame_round_trip_is_compact() -> None:
    payload = bytes(range(256))
    frame = encode_frame(b"abc123", 300, UPDATE, payload)
    assert len(frame) == 1 + 1 + 6 + 2 + len(payload)
    decoded = decode_frame(frame)
    assert (decoded.publisher, decoded.seq, decoded.kind) == (b"abc123", 300, Kind.UPDATE)
    assert decoded.payload == payload
    marker = decode_frame(encode_frame(b"x", 1, MARKER))
    assert marker.kind is None and marker.payload == b""
    assert decode_frame(encode_frame(b"x", 2, AWARENESS, b"\x01")).kind is Kind.AWARENESS
    commit = decode_frame(encode_frame(b"x", 3, COMMITTED, write_var_uint(2)))
    assert commit.kind is None and committed_seq(commit) == 2


@pytest.mark.parametrize("data", [b"", b"\x20\x01x\x01", b"\x1f\x01x\x01", b"\x11\x05ab", b"\x11\x01x\xff"])
def test_bad_frames_are_refused(data: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_frame(data)


def test_held_updates_confirm_expire_and_overflow() -> None:
    held = HeldUpdates(timeout=1.0, limit=3)
    assert held.hold("r", b"p", 1, b"u1", now=0.0) == []
    held.hold("r", b"p", 2, b"u2", now=0.5)
    held.hold("r", b"q", 7, b"q7", now=0.5)
    held.confirm("r", b"p", 1)
    assert held.expired(now=1.2) == []  # u1 confirmed; u2 and q7 not overdue yet
    assert sorted(held.expired(now=1.6)) == [("r", b"q7"), ("r", b"u2")]
    for seq in range(3, 7):
        overflow = held.hold("r", b"p", seq, f"u{seq}".encode(), now=2.0)
    assert overflow == [b"u3"]
    held.confirm("r", b"p", 5)
    assert held.release("r") == [b"u6"]
    assert held.expired(now=100.0) == []


def test_sequence_tracker_reports_skips_and_restarts() -> None:
    tracker = SequenceTracker()
    assert tracker.observe("r", b"a", 7) is False  # first heard: no gap
    assert tracker.observe("r", b"a", 8) is False
    assert tracker.observe("r", b"b", 1) is False  # publishers are tracked apart
    assert tracker.observe("r", b"a", 10) is True  # 9 was skipped
    assert tracker.observe("r", b"a", 1) is True  # the publisher restarted
    assert tracker.observe("other", b"a", 5) is False  # rooms are tracked apart
    tracker.forget("r")
    assert tracker.observe("r", b"a", 42) is False


# --- against Redis ------------------------------------------------------------------------


class Listener:
    """What one room heard: messages in a queue, and a count of gaps with an event per gap."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[BusMessage] = asyncio.Queue()
        self.gaps = 0
        self._gap = asyncio.Event()

    def on_message(self, message: BusMessage) -> None:
        self.messages.put_nowait(message)

    def on_gap(self) -> None:
        self.gaps += 1
        self._gap.set()

    async def next(self, timeout: float = 5.0) -> BusMessage:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def gap(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._gap.wait(), timeout)
        self._gap.clear()


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    need_redis()
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def make_bus() -> AsyncIterator[Callable[..., RedisBus]]:
    need_redis()
    prefix = f"collab-test-{secrets.token_hex(4)}:"
    buses: list[RedisBus] = []

    def make(instance_id: str | None = None, url: str = REDIS_URL, **options: object) -> RedisBus:
        options.setdefault("settle_delay", 0.05)
        options.setdefault("late_delay", 600)  # the second catch-up has its own test
        bus = RedisBus(url, instance_id=instance_id or secrets.token_hex(4),
                       channel_prefix=prefix, **options)  # type: ignore[arg-type]
        buses.append(bus)
        return bus

    yield make
    await asyncio.gather(*(bus.close() for bus in buses))


async def open_pair(make_bus: Callable[..., RedisBus],
                    room: str) -> tuple[RedisBus, RedisBus, Listener, Listener]:
    a, b = make_bus(), make_bus()
    await asyncio.gather(a.open(), b.open())
    la, lb = Listener(), Listener()
    await a.subscribe(room, la.on_message, la.on_gap)
    await b.subscribe(room, lb.on_message, lb.on_gap)
    await asyncio.gather(la.gap(), lb.gap())  # the settle-time catch-up after subscribing
    return a, b, la, lb


async def kill_connection(admin: aioredis.Redis, name: str) -> None:
    clients = [c for c in await admin.client_list() if c.get("name") == name]
    assert clients, f"no Redis client named {name}"
    for client in clients:
        await admin.client_kill_filter(_id=client["id"])


@pytest.mark.redis
async def test_open_bus_maps_redis_urls() -> None:
    assert isinstance(open_bus("redis://127.0.0.1:6379/0", "x"), RedisBus)


@pytest.mark.redis
async def test_two_instances_exchange_updates_and_awareness(make_bus: Callable[..., RedisBus]) -> None:
    a, b, la, lb = await open_pair(make_bus, "room-1")
    assert a.healthy and b.healthy
    a.publish("room-1", Kind.UPDATE, b"\x01\x02\x03")
    a.publish("room-1", Kind.AWARENESS, b"\x00presence")
    b.publish("room-1", Kind.UPDATE, b"from-b")
    assert await lb.next() == BusMessage("room-1", Kind.UPDATE, b"\x01\x02\x03")
    assert await lb.next() == BusMessage("room-1", Kind.AWARENESS, b"\x00presence")
    assert await la.next() == BusMessage("room-1", Kind.UPDATE, b"from-b")
    b.publish("room-1", Kind.UPDATE, b"end")  # a barrier: a would have seen its own echo by now
    assert await la.next() == BusMessage("room-1", Kind.UPDATE, b"end")
    assert la.messages.empty() and lb.messages.empty()
    assert a.stats.own >= 2 and a.stats.gaps == 0 and b.stats.gaps == 0


@pytest.mark.redis
async def test_only_instances_holding_the_room_receive_it(make_bus: Callable[..., RedisBus]) -> None:
    a, b, _la, lb = await open_pair(make_bus, "held")
    a.publish("not-held", Kind.UPDATE, b"nobody")
    await b.unsubscribe("held")
    a.publish("held", Kind.UPDATE, b"after-unsubscribe")
    lc = Listener()
    await b.subscribe("again", lc.on_message, lc.on_gap)
    a.publish("again", Kind.UPDATE, b"barrier")
    assert await lc.next() == BusMessage("again", Kind.UPDATE, b"barrier")
    assert lb.messages.empty()
    assert b.stats.received == 1


@pytest.mark.redis
async def test_every_gap_is_followed_by_a_late_second_catch_up(make_bus: Callable[..., RedisBus]) -> None:
    bus = make_bus(late_delay=0.1)
    await bus.open()
    listener = Listener()
    await bus.subscribe("late", listener.on_message, listener.on_gap)
    await listener.gap()
    await listener.gap()
    assert listener.gaps == 2


@pytest.mark.redis
async def test_skipped_sequence_number_fires_on_gap(make_bus: Callable[..., RedisBus],
                                                    admin: aioredis.Redis) -> None:
    b = make_bus()
    await b.open()
    lb = Listener()
    await b.subscribe("r", lb.on_message, lb.on_gap)
    await lb.gap()
    channel = b"".join([b._prefix, b"r"])
    await admin.publish(channel, encode_frame(b"ghost", 1, UPDATE, b"one"))
    await admin.publish(channel, encode_frame(b"ghost", 3, UPDATE, b"three"))
    await admin.publish(channel, b"garbage")
    assert (await lb.next()).payload == b"one"
    assert (await lb.next()).payload == b"three"
    await lb.gap()
    assert b.stats.gaps == 1
    await admin.publish(channel, encode_frame(b"ghost", 4, MARKER))  # a marker is never delivered
    await admin.publish(channel, encode_frame(b"ghost", 5, UPDATE, b"five"))
    assert (await lb.next()).payload == b"five"
    assert b.stats.gaps == 1 and b.stats.malformed == 1


@pytest.mark.redis
async def test_subscriber_cut_fires_on_gap_and_traffic_resumes(make_bus: Callable[..., RedisBus],
                                                               admin: aioredis.Redis) -> None:
    a, b, _la, lb = await open_pair(make_bus, "cut")
    await kill_connection(admin, f"collab-{b.instance_id}-sub")
    await lb.gap()
    assert b.stats.reconnects == 1
    assert b.healthy
    a.publish("cut", Kind.UPDATE, b"after")
    assert await lb.next() == BusMessage("cut", Kind.UPDATE, b"after")


@pytest.mark.redis
async def test_publisher_cut_drops_then_marks_the_gap(make_bus: Callable[..., RedisBus],
                                                      admin: aioredis.Redis) -> None:
    a, _b, _la, lb = await open_pair(make_bus, "pub")
    a.publish("pub", Kind.UPDATE, b"before")
    assert (await lb.next()).payload == b"before"
    await kill_connection(admin, f"collab-{a.instance_id}-pub")
    for i in range(5):
        a.publish("pub", Kind.UPDATE, f"lost-{i}".encode())
    await lb.gap(timeout=10)  # the recovered publisher's marker reveals the skipped numbers
    assert a.stats.dropped >= 1
    a.publish("pub", Kind.UPDATE, b"after")
    while (message := await lb.next()).payload != b"after":
        assert message.payload.startswith(b"lost-")  # only a batch sent before the cut showed
    assert a.healthy


@pytest.mark.redis
async def test_publish_never_blocks_or_raises_without_redis() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    bus = RedisBus(dead, instance_id="lonely", timeout=0.5, settle_delay=0.01)
    await bus.open()
    try:
        listener = Listener()
        await bus.subscribe("r", listener.on_message, listener.on_gap)
        for _ in range(1000):
            bus.publish("r", Kind.UPDATE, b"x" * 100)
        await asyncio.sleep(0)
        assert not bus.healthy
        assert bus.stats.published == 0
    finally:
        await asyncio.wait_for(bus.close(), 5)
    assert bus.stats.dropped == 1000


@pytest.mark.redis
async def test_a_hung_redis_makes_the_bus_unhealthy_until_it_answers_again(
        make_bus: Callable[..., RedisBus]) -> None:
    """A hung Redis (SIGSTOP: it still accepts connections and bytes) answers nothing: the bus
    counts as unhealthy once a ping or a publish goes unanswered for ``answer_timeout``, and
    as healthy again once Redis answers."""
    with private_redis() as redis:
        bus = make_bus(url=redis.url, ping_interval=0.2, answer_timeout=0.5, timeout=1.0,
                       max_backoff=0.5)
        await bus.open()
        listener = Listener()
        await bus.subscribe("hang", listener.on_message, listener.on_gap)
        assert bus.healthy
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            paused_at = loop.time()
            while bus.healthy:
                assert loop.time() - paused_at < 5, "a hung Redis still counts as healthy"
                await asyncio.sleep(0.05)
            bus.publish("hang", Kind.UPDATE, b"into the void")  # never blocks the caller
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        resumed_at = asyncio.get_running_loop().time()
        while not bus.healthy:
            assert asyncio.get_running_loop().time() - resumed_at < 10, "the bus did not recover"
            await asyncio.sleep(0.05)
        assert bus.stats.reconnects >= 1


@pytest.mark.redis
async def test_unconfirmed_updates_are_handed_over(make_bus: Callable[..., RedisBus]) -> None:
    """An update whose publisher never confirms its commit (it died, or its store failed) is
    handed to the receivers to store; confirmed ones are not."""
    a, b = make_bus(confirm_timeout=0.3), make_bus(confirm_timeout=0.3)
    await asyncio.gather(a.open(), b.open())
    la, lb = Listener(), Listener()
    handed: asyncio.Queue[bytes] = asyncio.Queue()
    await a.subscribe("h", la.on_message, la.on_gap)
    await b.subscribe("h", lb.on_message, lb.on_gap, handed.put_nowait)
    loop = asyncio.get_running_loop()
    stored: asyncio.Future[int] = loop.create_future()
    failed: asyncio.Future[int] = loop.create_future()
    never: asyncio.Future[int] = loop.create_future()
    a.publish("h", Kind.UPDATE, b"stored", durable=stored)
    a.publish("h", Kind.UPDATE, b"failed", durable=failed)
    a.publish("h", Kind.UPDATE, b"never", durable=never)
    a.publish("h", Kind.UPDATE, b"plain")  # no future: nothing to confirm, nothing held
    stored.set_result(1)
    failed.set_exception(ConnectionError("database down"))
    failed.exception()
    assert [(await lb.next()).payload for _ in range(4)] == [b"stored", b"failed", b"never", b"plain"]
    first = await asyncio.wait_for(handed.get(), 5)
    second = await asyncio.wait_for(handed.get(), 5)
    assert sorted([first, second]) == [b"failed", b"never"]
    assert handed.empty() and b.stats.handed_over == 2
    never.cancel()


@pytest.mark.redis
async def test_commits_are_confirmed_in_one_frame_per_room_and_pause(
        make_bus: Callable[..., RedisBus]) -> None:
    """Ten updates stored by ten commits, one loop turn apart: the publisher confirms them with
    one COMMITTED frame, and the receiver hands none of them over."""
    a, b = make_bus(confirm_timeout=0.4), make_bus(confirm_timeout=0.4)
    await asyncio.gather(a.open(), b.open())
    lb = Listener()
    handed: asyncio.Queue[bytes] = asyncio.Queue()
    await a.subscribe("c", Listener().on_message, Listener().on_gap)
    await b.subscribe("c", lb.on_message, lb.on_gap, handed.put_nowait)
    loop = asyncio.get_running_loop()
    commits = [loop.create_future() for _ in range(10)]
    for i, commit in enumerate(commits):
        a.publish("c", Kind.UPDATE, b"u%d" % i, durable=commit)
    assert [(await lb.next()).payload for _ in range(10)] == [b"u%d" % i for i in range(10)]
    for commit in commits:
        commit.set_result(1)
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        while a.stats.published < 11:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.6)  # past the receiver's confirm_timeout
    assert a.stats.published == 11  # ten updates, one COMMITTED frame
    assert handed.empty() and b.stats.handed_over == 0
