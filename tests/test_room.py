"""The room's rules, without sockets: recording peers, the in-memory store, the local bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from collab import crdt, protocol
from collab.admission import READ, WRITE, Access
from collab.bus import BusMessage, Kind, LocalBus
from collab.codes import Refused
from collab.history import History
from collab.protocol import AwarenessEntry
from collab.room import Member, Room, RoomLimits
from collab.rooms import Rooms
from collab.store import Store, open_store
from collab.version import Version


class RecordingPeer:
    """A peer that keeps what it is sent (the transport's WebSocketPeer sends it instead)."""

    def __init__(self) -> None:
        self.sent: list[protocol.Message] = []
        self.closed: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        self.sent.append(protocol.decode_message(frame))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def sent(member: Member) -> list[protocol.Message]:
    assert isinstance(member.peer, RecordingPeer)
    return member.peer.sent


def updates(member: Member) -> list[bytes]:
    return [m.update for m in sent(member) if isinstance(m, protocol.SyncUpdate)]


class RecordingBus(LocalBus):
    def __init__(self) -> None:
        self.published: list[tuple[str, Kind, bytes]] = []

    def publish(self, room: str, kind: Kind, payload: bytes,
                durable: asyncio.Future[Any] | None = None) -> None:
        self.published.append((room, kind, payload))


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = open_store("memory://")
    await store.open()
    yield store
    await store.close()


def joined(room: Room, access: Access = WRITE, *, wants_acks: bool = True) -> Member:
    member = room.join(RecordingPeer(), access, wants_acks=wants_acks)
    room.receive(member, protocol.SyncStep1(crdt.Document().state_vector()))
    return member


def edit(text: str) -> bytes:
    update = crdt.Document().edit_text(0, text)
    assert update is not None
    return update


async def test_join_sends_step1_and_answers_step1_with_the_document(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    room.doc.apply(edit("hello"))
    peer = room.join(RecordingPeer(), WRITE)
    assert isinstance(sent(peer)[0], protocol.SyncStep1)
    assert not peer.synced
    room.receive(peer, protocol.SyncStep1(crdt.Document().state_vector()))
    assert peer.synced
    step2 = sent(peer)[1]
    assert isinstance(step2, protocol.SyncStep2)
    assert crdt.document_from([step2.update]).text() == "hello"


async def test_an_update_reaches_synced_peers_store_and_bus_but_not_its_sender(store: Store) -> None:
    bus = RecordingBus()
    room = Room("r", store, bus, durable_acks=False)
    alice, bob = joined(room), joined(room)
    late = room.join(RecordingPeer(), WRITE)  # handshake not done yet: gets no broadcast
    room.receive(alice, protocol.SyncUpdate(edit("hi")))
    assert updates(alice) == []
    assert len(updates(bob)) == 1
    assert updates(late) == []
    assert [(r, k) for r, k, _ in bus.published] == [("r", Kind.UPDATE)]
    await store.flush()
    assert crdt.document_from((await store.load("r")).updates).text() == "hi"


async def test_the_broadcast_is_what_the_engine_produced_not_the_clients_bytes(store: Store) -> None:
    room = Room("r", store, RecordingBus(), durable_acks=False)
    alice, bob = joined(room), joined(room)
    writer = crdt.Document()
    known = writer.edit_text(0, "x")
    assert known is not None
    room.receive(alice, protocol.SyncUpdate(known))
    new = writer.edit_text(1, "y")
    assert new is not None
    raw = crdt.merge([known, new])  # half of it the room holds already
    room.receive(alice, protocol.SyncUpdate(raw))
    assert room.doc.text() == "xy"
    [_first, forwarded] = updates(bob)
    assert len(forwarded) < len(raw) and crdt.document_from([known, forwarded]).text() == "xy"


async def test_a_duplicate_is_neither_broadcast_nor_stored(store: Store) -> None:
    bus = RecordingBus()
    room = Room("r", store, bus, durable_acks=False)
    alice, bob = joined(room), joined(room)
    update = edit("once")
    room.receive(alice, protocol.SyncUpdate(update))
    room.receive(alice, protocol.SyncUpdate(update))
    room.receive(bob, protocol.SyncStep2(update))
    await store.flush()
    assert len(updates(bob)) == 1 and len(bus.published) == 1
    assert len((await store.load("r")).updates) == 1


async def test_invalid_updates_raise_and_change_nothing(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    alice = joined(room)
    room.receive(alice, protocol.SyncUpdate(edit("keep")))
    for junk in (b"\x01", b"\xff\xff\xff", b"garbage!"):
        with pytest.raises(crdt.InvalidUpdate):
            room.receive(alice, protocol.SyncUpdate(junk))
    with pytest.raises(crdt.InvalidUpdate):
        room.receive(alice, protocol.SyncStep1(b"\x05\x01"))
    assert room.doc.text() == "keep"


async def test_acks_follow_the_commit_in_order_including_duplicates(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    alice = joined(room)
    first, second = edit("a"), edit("b")
    room.receive(alice, protocol.SyncUpdate(first))
    room.receive(alice, protocol.SyncUpdate(first))  # duplicate: acked with its content
    room.receive(alice, protocol.SyncUpdate(second))
    assert updates(alice) == []  # nothing before the commit
    await store.flush()
    await asyncio.sleep(0)  # let the commit callbacks run
    acks = updates(alice)
    assert len(acks) == 3
    assert crdt.document_from([acks[0]]).text() == "a"
    assert crdt.document_from([acks[1]]).text() == "a"
    assert crdt.document_from([acks[2]]).text() == "b"


async def test_leaving_removes_the_peers_presence_for_everyone(store: Store) -> None:
    bus = RecordingBus()
    room = Room("r", store, bus)
    alice, bob = joined(room), joined(room)
    state = AwarenessEntry(42, 3, '{"user":{"name":"Alice"}}')
    room.receive(alice, protocol.AwarenessUpdate(protocol.encode_awareness_payload([state])))
    # Echoed to the sender too (it keeps the stock client's socket alive).
    for peer in (alice, bob):
        last = sent(peer)[-1]
        assert isinstance(last, protocol.AwarenessUpdate)
        assert protocol.decode_awareness_payload(last.payload) == [state]
    newcomer = room.join(RecordingPeer(), WRITE)
    assert protocol.decode_awareness_payload(sent(newcomer)[1].payload) == [state]  # type: ignore[union-attr]
    room.leave(alice)
    removal = protocol.decode_awareness_payload(sent(bob)[-1].payload)  # type: ignore[union-attr]
    assert removal == [AwarenessEntry(42, 3, "null")]  # same clock: a removal wins a tie
    assert room.live_presence() == []
    assert bus.published[-1][1] is Kind.AWARENESS


async def test_stale_awareness_and_bad_json_are_refused(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    alice = joined(room)
    fresh = AwarenessEntry(7, 5, '{"a":1}')
    room.receive(alice, protocol.AwarenessUpdate(protocol.encode_awareness_payload([fresh])))
    stale = AwarenessEntry(7, 4, '{"a":0}')
    room.receive(alice, protocol.AwarenessUpdate(protocol.encode_awareness_payload([stale])))
    assert room.presence[7].entry == fresh
    for bad in ("{not json", "NaN"):
        payload = protocol.encode_awareness_payload([AwarenessEntry(7, 9, bad)])
        with pytest.raises(protocol.ProtocolError):
            room.receive(alice, protocol.AwarenessUpdate(payload))
    assert room.presence[7].entry == fresh


async def test_query_awareness_is_answered(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    alice = joined(room)
    entry = AwarenessEntry(1, 1, '{"x":true}')
    room.receive(alice, protocol.AwarenessUpdate(protocol.encode_awareness_payload([entry])))
    room.receive(alice, protocol.QueryAwareness())
    assert protocol.decode_awareness_payload(sent(alice)[-1].payload) == [entry]  # type: ignore[union-attr]


async def test_bus_messages_are_applied_locally_and_never_republished(store: Store) -> None:
    bus = RecordingBus()
    room = Room("r", store, bus)
    bob = joined(room)
    room.on_bus_message(BusMessage("r", Kind.UPDATE, edit("remote")))
    room.on_bus_message(BusMessage("r", Kind.UPDATE, b"\x01broken"))  # ignored, logged
    assert room.doc.text() == "remote" and len(updates(bob)) == 1
    assert bus.published == []
    await store.flush()
    assert (await store.load("r")).updates == []  # the publishing instance stored it


async def test_remote_presence_expires_when_no_longer_renewed(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    bob = joined(room)
    payload = protocol.encode_awareness_payload([AwarenessEntry(9, 1, '{"n":1}')])
    room.on_bus_message(BusMessage("r", Kind.AWARENESS, payload))
    assert 9 in room.presence
    room.expire_presence(now=room.presence[9].heard_at + 10)
    assert 9 in room.presence
    room.expire_presence(now=room.presence[9].heard_at + 31)
    assert room.presence[9].entry.is_removal and room.live_presence() == []
    assert protocol.decode_awareness_payload(sent(bob)[-1].payload)[0].is_removal  # type: ignore[union-attr]


async def test_concurrent_joins_load_the_room_once(store: Store) -> None:
    store.append("r", edit("stored"))
    await store.flush()
    loads = 0
    original = store.load

    async def counting_load(name: str):  # type: ignore[no-untyped-def]
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return await original(name)

    store.load = counting_load  # type: ignore[method-assign]
    rooms = Rooms(store, LocalBus(), idle_seconds=0)
    members = await asyncio.gather(*(rooms.join("r", RecordingPeer(), WRITE) for _ in range(50)))
    assert loads == 1 and len({id(m.room) for m in members}) == 1
    assert members[0].room.doc.text() == "stored"


async def test_a_join_right_after_an_eviction_left_the_bus_loads_the_room(store: Store) -> None:
    """The eviction's unsubscribe is done but the evicting task has not yet dropped its record
    of it (its next step is still to run): a join then loads the room at once."""
    rooms = Rooms(store, LocalBus(), idle_seconds=60)

    async def nothing() -> None:
        return None

    left = asyncio.create_task(nothing())
    await left
    rooms._unsubscribing["r"] = left
    member = await asyncio.wait_for(rooms.join("r", RecordingPeer(), WRITE), 5)
    assert rooms.rooms["r"] is member.room


async def test_an_idle_room_is_flushed_compacted_and_evicted(store: Store) -> None:
    rooms = Rooms(store, LocalBus(), idle_seconds=0.01)
    member = await rooms.join("r", RecordingPeer(), WRITE)
    room = member.room
    for word in ("a", "b", "c"):
        room.receive(member, protocol.SyncUpdate(edit(word)))
    rooms.leave(member)
    await asyncio.wait_for(_until(lambda: "r" not in rooms.rooms), 5)
    stored = await store.load("r")
    assert len(stored.updates) == 1  # compacted into one snapshot
    assert sorted(crdt.document_from(stored.updates).text()) == ["a", "b", "c"]
    again = (await rooms.join("r", RecordingPeer(), WRITE)).room
    assert again is not room and sorted(again.doc.text()) == ["a", "b", "c"]


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0.005)


async def test_the_shared_answer_to_empty_joiners_follows_every_change(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    writer = joined(room)
    room.receive(writer, protocol.SyncUpdate(edit("one ")))
    first = joined(room)
    room.on_bus_message(BusMessage("r", Kind.UPDATE, edit("two ")))
    second = joined(room)
    texts = [crdt.document_from([sent(p)[1].update]).text() for p in (first, second)]  # type: ignore[union-attr]
    assert texts[0] == "one " and sorted(texts[1].split()) == ["one", "two"]


async def test_acks_go_only_to_clients_that_asked(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    asker, plain = joined(room), joined(room, wants_acks=False)
    room.receive(plain, protocol.SyncUpdate(edit("p")))
    room.receive(asker, protocol.SyncUpdate(edit("a")))
    await store.flush()
    await asyncio.sleep(0)  # let the commit callbacks run
    assert [crdt.document_from([u]).text() for u in updates(plain)] == ["a"]  # the broadcast only
    assert [crdt.document_from([u]).text() for u in updates(asker)] == ["p", "a"]  # broadcast, ack


async def test_a_peer_owns_only_the_presence_it_brought_not_what_it_relays(store: Store) -> None:
    """Stock clients re-send every awareness state they hear; when one of them leaves, only its
    own presence goes, and a late relay of a departed client's state does not revive it."""
    room = Room("r", store, RecordingBus())
    alice, bob, carol = joined(room), joined(room), joined(room)
    alice_state = AwarenessEntry(1, 3, '{"name":"alice"}')
    bob_state = AwarenessEntry(2, 1, '{"name":"bob"}')
    room.receive(alice, protocol.AwarenessUpdate(protocol.encode_awareness_payload([alice_state])))
    room.receive(bob, protocol.AwarenessUpdate(protocol.encode_awareness_payload([bob_state])))
    relay = protocol.encode_awareness_payload([alice_state, bob_state])
    room.receive(carol, protocol.AwarenessUpdate(relay))  # carol relays what she heard
    room.leave(carol)
    assert room.live_presence() == [alice_state, bob_state]
    room.leave(alice)
    assert room.live_presence() == [bob_state]
    room.receive(bob, protocol.AwarenessUpdate(protocol.encode_awareness_payload([alice_state])))
    assert room.live_presence() == [bob_state]  # a stale relay: alice stays gone
    back = AwarenessEntry(1, 4, '{"name":"alice"}')
    returning = joined(room)
    room.receive(returning, protocol.AwarenessUpdate(protocol.encode_awareness_payload([back])))
    assert set(room.live_presence()) == {bob_state, back}  # her re-announcement (a newer clock) counts


async def test_a_failed_load_reaches_every_waiting_joiner_and_the_next_join_retries(
        store: Store) -> None:
    original = store.load
    failures = [OSError("database down")]

    async def flaky_load(name: str):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return await original(name)

    store.load = flaky_load  # type: ignore[method-assign]
    rooms = Rooms(store, LocalBus(), idle_seconds=0)
    results = await asyncio.gather(*(rooms.join("r", RecordingPeer(), WRITE) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert "r" not in rooms.rooms
    assert isinstance((await rooms.join("r", RecordingPeer(), WRITE)).room, Room)


async def test_a_read_only_member_sees_everything_is_told_once_and_changes_nothing(
        store: Store) -> None:
    bus = RecordingBus()
    room = Room("r", store, bus)
    writer, reader = joined(room), joined(room, READ)
    denials = [m for m in sent(reader) if isinstance(m, protocol.Auth)]
    assert denials == [protocol.Auth(denied=True, reason="read-only")]
    room.receive(writer, protocol.SyncUpdate(edit("shared")))
    assert [crdt.document_from([u]).text() for u in updates(reader)] == ["shared"]
    published = len(bus.published)
    forged = edit("forged")
    for _attempt in range(3):  # as after reconnects: sent again, still refused, still no loop
        room.receive(reader, protocol.SyncStep2(forged))
        room.receive(reader, protocol.SyncUpdate(forged))
    assert room.doc.text() == "shared" and updates(writer) == []
    assert len(bus.published) == published and room.stats.read_only_updates_dropped == 6
    assert [m for m in sent(reader) if isinstance(m, protocol.Auth)] == denials
    assert reader.peer.closed is None  # type: ignore[attr-defined]
    await store.flush()
    assert crdt.document_from((await store.load("r")).updates).text() == "shared"
    state = AwarenessEntry(5, 1, '{"user":{"name":"Reader"}}')
    room.receive(reader, protocol.AwarenessUpdate(protocol.encode_awareness_payload([state])))
    assert room.live_presence() == [state]  # a reader still shows its cursor


# --- clients without a connection (the HTTP fallback) -----------------------------------------


def request(room: Room, key: str, access: Access = WRITE) -> Member:
    return room.join(RecordingPeer(), access, wants_acks=True, client_key=key)


def polled(room: Room, key: str, since: Version | None = None, *, vector: bytes = b"\x00",
           access: Access = WRITE) -> Member:
    member = request(room, key, access)
    room.resume(member, vector, since)
    return member


def awareness(*entries: AwarenessEntry) -> protocol.AwarenessUpdate:
    return protocol.AwarenessUpdate(protocol.encode_awareness_payload(list(entries)))


async def test_a_first_poll_gets_the_document_the_servers_step1_and_presence(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    writer = joined(room)
    room.receive(writer, protocol.SyncUpdate(edit("hello")))
    room.receive(writer, awareness(AwarenessEntry(1, 1, '{"n":1}')))
    poll = polled(room, "client-a")
    kinds = [type(m) for m in sent(poll)]
    assert kinds == [protocol.SyncStep2, protocol.SyncStep1, protocol.AwarenessUpdate]
    assert crdt.document_from([sent(poll)[0].update]).text() == "hello"  # type: ignore[union-attr]
    assert poll.synced


async def test_a_poll_with_its_version_gets_exactly_what_it_missed_but_its_own(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    writer = joined(room)
    first = polled(room, "client-a")
    room.leave(first)
    version = room.version()
    assert sent(polled(room, "client-a", version)) == []  # nothing new: nothing at all
    own = request(room, "client-a")  # a send of the same client, while its poll is away
    room.receive(own, protocol.SyncUpdate(edit("mine")))
    room.leave(own)
    room.receive(writer, protocol.SyncUpdate(edit("theirs")))
    missed = polled(room, "client-a", version)
    assert [crdt.document_from([u]).text() for u in updates(missed)] == ["theirs"]


async def test_a_parked_poll_receives_broadcasts_but_not_its_clients_own(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    writer = joined(room)
    parked = polled(room, "client-a")
    before = len(sent(parked))
    send = request(room, "client-a")
    room.receive(send, protocol.SyncUpdate(edit("mine")))
    room.receive(send, awareness(AwarenessEntry(7, 1, '{"me":1}')))
    assert len(sent(parked)) == before  # neither its update nor its presence comes back
    room.receive(writer, protocol.SyncUpdate(edit("theirs")))
    assert [crdt.document_from([u]).text() for u in updates(parked)] == ["theirs"]
    assert any(isinstance(m, protocol.AwarenessUpdate) for m in sent(writer))


async def test_another_instances_version_of_the_same_content_means_nothing_new(store: Store) -> None:
    here, there = Room("r", store, RecordingBus()), Room("r", store, RecordingBus())
    update = edit("same")
    for room in (here, there):
        room.doc.apply(update)
        room._doc_version += 1
    version = here.version()
    assert version.incarnation != there.incarnation
    assert sent(polled(there, "client-a", version, vector=here.doc.state_vector())) == []
    deletion = crdt.document_from([update])
    produced = deletion.edit_text(0, delete=2)
    assert produced is not None
    there.on_bus_message(BusMessage("r", Kind.UPDATE, produced))  # a deletion: same state vector
    answer = sent(polled(there, "client-a", version, vector=here.doc.state_vector()))
    # The diff, and a step 1: the client may hold deletions this instance lacks, too.
    assert [type(m) for m in answer] == [protocol.SyncStep2, protocol.SyncStep1]
    client = crdt.document_from([update])
    client.apply(answer[0].update)  # type: ignore[union-attr]
    assert client.text() == "me"


async def test_a_poll_too_old_for_the_history_falls_back_to_the_diff(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    room.history = History(max_frames=2)
    writer = joined(room)
    first = polled(room, "client-a")
    room.leave(first)
    version = room.version()
    for word in ("a", "b", "c"):
        room.receive(writer, protocol.SyncUpdate(edit(word)))
    answer = sent(polled(room, "client-a", version))
    assert isinstance(answer[0], protocol.SyncStep2)
    assert sorted(crdt.document_from([answer[0].update]).text()) == ["a", "b", "c"]


async def test_the_server_asks_back_when_the_client_has_what_it_lacks(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    version = Room("r", store, RecordingBus()).version()  # another instance's, same content
    offline = crdt.Document()
    offline.edit_text(0, "typed offline")
    answer = sent(polled(room, "client-a", version, vector=offline.state_vector()))
    assert [type(m) for m in answer] == [protocol.SyncStep1]


async def test_a_read_only_poll_is_told_first(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    answer = sent(polled(room, "reader-a", access=READ))
    assert answer[0] == protocol.Auth(denied=True, reason="read-only")


async def test_the_presence_of_a_request_outlives_it_until_the_hold_passes(store: Store) -> None:
    bus = RecordingBus()
    room = Room("r", store, bus, presence_hold=20)
    watcher = joined(room)
    state = AwarenessEntry(5, 2, '{"user":"poller"}')
    send = request(room, "client-a")
    room.receive(send, awareness(state))
    room.leave(send)
    assert room.live_presence() == [state]  # between two requests, still there
    idle_since = room.leases["client-a"].idle_since
    room.expire_presence(now=idle_since + 19)
    assert room.live_presence() == [state]
    parked = polled(room, "client-a", room.version())  # a new request holds it again
    room.expire_presence(now=idle_since + 60)
    assert room.live_presence() == [state]
    room.leave(parked)
    room.expire_presence(now=room.leases["client-a"].idle_since + 20)
    assert room.live_presence() == [] and "client-a" not in room.leases
    removal = protocol.decode_awareness_payload(sent(watcher)[-1].payload)  # type: ignore[union-attr]
    assert removal == [AwarenessEntry(5, 2, "null")]
    assert bus.published[-1][1] is Kind.AWARENESS


async def test_a_goodbye_removes_the_presence_at_once(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    send = request(room, "client-a")
    room.receive(send, awareness(AwarenessEntry(5, 1, '{"n":1}')))
    room.goodbye("client-a")
    room.leave(send)
    assert room.live_presence() == []


async def test_a_client_that_moved_is_not_removed_by_what_it_left(store: Store) -> None:
    """From the fallback to a WebSocket on this instance, or to another instance: the newest
    state's owner is the only one whose going removes it."""
    room = Room("r", store, RecordingBus(), presence_hold=1)
    send = request(room, "client-a")
    room.receive(send, awareness(AwarenessEntry(5, 1, '{"via":"poll"}')))
    room.leave(send)
    socket = joined(room)
    room.receive(socket, awareness(AwarenessEntry(5, 2, '{"via":"ws"}')))
    room.expire_presence(now=room.leases["client-a"].idle_since + 5)
    assert [e.state for e in room.live_presence()] == ['{"via":"ws"}']
    other = request(room, "client-b")
    room.receive(other, awareness(AwarenessEntry(6, 1, '{"n":6}')))
    room.leave(other)
    room.on_bus_message(BusMessage("r", Kind.AWARENESS, protocol.encode_awareness_payload(
        [AwarenessEntry(6, 2, '{"n":6,"elsewhere":true}')])))
    room.expire_presence(now=room.leases["client-b"].idle_since + 5)
    assert {e.client_id for e in room.live_presence()} == {5, 6}


async def test_a_room_holding_presence_between_requests_is_not_evicted(store: Store) -> None:
    rooms = Rooms(store, LocalBus(), idle_seconds=0.01, presence_hold=0.05, housekeeping_interval=0.02)
    rooms.start()
    try:
        member = await rooms.join("r", RecordingPeer(), WRITE, client_key="client-a")
        room = member.room
        room.receive(member, awareness(AwarenessEntry(5, 1, '{"n":1}')))
        rooms.leave(member)
        await asyncio.sleep(0.03)
        assert rooms.rooms.get("r") is room  # the lease keeps it
        await asyncio.wait_for(_until(lambda: "r" not in rooms.rooms), 5)
    finally:
        await rooms.close()


async def test_acks_of_a_request_can_be_awaited(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    send = request(room, "client-a")
    room.receive(send, protocol.SyncUpdate(edit("a")))
    waiting = room.acks_waiting(send)
    assert len(waiting) == 1 and updates(send) == []
    await asyncio.gather(*waiting)
    await asyncio.sleep(0)
    assert len(updates(send)) == 1


async def test_a_version_may_name_an_earlier_state_but_never_one_the_client_lacks(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    room.digest_reuse = 3600.0  # as if "b" came right after the first answer
    writer = joined(room)
    a, b = edit("a"), edit("b")
    room.receive(writer, protocol.SyncUpdate(a))
    first = room.version()
    room.receive(writer, protocol.SyncUpdate(b))
    quick = room.version()  # within the reuse window: the digest of the state before "b"
    assert quick.seq > first.seq and quick.document == first.document
    assert quick.document != room.document_digest()  # the exact digest is computed for comparisons
    other = Room("r", store, RecordingBus())  # another instance that has only "a"
    other.on_bus_message(BusMessage("r", Kind.UPDATE, a))
    client = crdt.document_from([a, b])
    # The client holds all the other instance has (no diff), and more: it is asked for it.
    answer = sent(polled(other, "client-a", quick, vector=client.state_vector()))
    assert [type(m) for m in answer] == [protocol.SyncStep1]


async def test_the_presence_entries_of_a_client_without_a_connection_count_across_its_requests(
        store: Store) -> None:
    room = Room("r", store, RecordingBus(), limits=RoomLimits(max_presence_entries=2))
    for client_id in (1, 2):
        send = request(room, "client-a")
        room.receive(send, awareness(AwarenessEntry(client_id, 1, "{}")))
        room.leave(send)
    third = request(room, "client-a")
    with pytest.raises(Refused):
        room.receive(third, awareness(AwarenessEntry(3, 1, "{}")))
    room.receive(third, awareness(AwarenessEntry(1, 2, '{"moved":1}')))  # its own: still fine
    assert {e.client_id for e in room.live_presence()} == {1, 2}


async def test_a_goodbye_heard_on_the_bus_removes_what_that_client_brought_here(store: Store) -> None:
    """The goodbye may reach an instance where the client never announced itself: it goes on
    the bus, and the instance that holds the client's presence removes it."""
    here_bus, there_bus = RecordingBus(), RecordingBus()
    here, there = Room("r", store, here_bus), Room("r", store, there_bus)
    watcher = joined(here)
    send = request(here, "client-a")
    here.receive(send, awareness(AwarenessEntry(5, 1, '{"n":1}')))
    here.leave(send)
    bye = request(there, "client-a")
    there.goodbye("client-a")  # nothing of client-a's here...
    there.leave(bye)
    assert there_bus.published[-1] == ("r", Kind.GOODBYE, b"client-a")  # ...so it tells the others
    here.on_bus_message(BusMessage("r", Kind.GOODBYE, b"client-b"))  # someone else's: nothing
    assert here.live_presence() == [AwarenessEntry(5, 1, '{"n":1}')]
    here.on_bus_message(BusMessage("r", Kind.GOODBYE, b"client-a"))
    assert here.live_presence() == []
    assert protocol.decode_awareness_payload(sent(watcher)[-1].payload) == [  # type: ignore[union-attr]
        AwarenessEntry(5, 1, "null")]
    assert here_bus.published[-1][1] is Kind.AWARENESS  # the removal, for everyone else
