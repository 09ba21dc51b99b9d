"""The room against input the engine cannot take: updates that wait for their dependencies,
engine failures (a real panic of the engine, reached past the gate) and hostile presence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from collab import codes, crdt, gate, protocol
from collab.admission import WRITE
from collab.bus import BusMessage, Kind
from collab.protocol import AwarenessEntry
from collab.room import Room
from collab.store import Store, open_store
from tests.test_room import RecordingBus, RecordingPeer, joined, sent, updates

PANIC = bytes.fromhex("0101959aef3affffffff0f418906000301959aef3a010003")
"""An update at clock 2**32 - 1 that makes the engine panic ("index out of bounds") once the
document holds client 777; the gate refuses it, so the tests below feed it past the gate."""


class PanicDocument(crdt.Document):
    """A document whose next update reaches the engine without the gate: a real engine panic."""

    __slots__ = ()

    def integrate(self, update: bytes, origin: object = None) -> crdt.Applied:
        if update == PANIC:
            plan = gate.Plan(ready=update, held=None, clocks={})
            self._apply_ready(plan)
        return super().integrate(update, origin)  # type: ignore[arg-type]


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = open_store("memory://")
    await store.open()
    yield store
    await store.close()


def edits(*texts: str, client_id: int | None = None) -> tuple[crdt.Document, list[bytes]]:
    doc = crdt.Document()
    out = []
    for text in texts:
        update = doc.edit_text(len(doc.text()), text)
        assert update is not None
        out.append(update)
    return doc, out


def client_777_text(text: str) -> bytes:
    import pycrdt

    doc = pycrdt.Doc(client_id=777)
    doc.get("text", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


async def test_an_engine_panic_closes_the_room_and_rebuilds_it_from_the_store(store: Store) -> None:
    room = Room("r", store, RecordingBus(), durable_acks=False)
    room.doc = PanicDocument()
    alice, bob = joined(room), joined(room)
    room.receive(alice, protocol.SyncUpdate(client_777_text("hello world")))
    await store.flush()
    room.receive(bob, protocol.SyncUpdate(PANIC))  # the engine panics inside the call
    assert isinstance(bob.peer, RecordingPeer) and isinstance(alice.peer, RecordingPeer)
    assert bob.peer.closed is not None and bob.peer.closed[0] == codes.INTERNAL_ERROR.close
    assert alice.peer.closed == (codes.TRY_AGAIN.close, "room being rebuilt, reconnect")
    room.receive(alice, protocol.SyncUpdate(edits("ignored while rebuilding")[1][0]))
    await asyncio.wait_for(room.ready(), 5)
    assert not room.doc.damaged
    assert room.doc.text() == "hello world"
    assert room.refusals.engine_panics == 1 and room.refusals.rebuilds == 1
    # A fresh joiner syncs with the rebuilt document, which is the store's.
    carol = joined(room)
    [step2] = [m for m in sent(carol) if isinstance(m, protocol.SyncStep2)]
    assert crdt.document_from([step2.update]).text() == "hello world"
    assert crdt.document_from((await store.load("r")).updates).text() == "hello world"


async def test_bus_messages_during_a_rebuild_are_applied_after_it(store: Store) -> None:
    room = Room("r", store, RecordingBus(), durable_acks=False)
    room.doc = PanicDocument()
    alice = joined(room)
    room.receive(alice, protocol.SyncUpdate(client_777_text("base")))
    room.receive(alice, protocol.SyncUpdate(PANIC))
    _doc, [remote] = edits("from elsewhere")
    room.on_bus_message(BusMessage("r", Kind.UPDATE, remote))
    await asyncio.wait_for(room.ready(), 5)
    assert "from elsewhere" in room.doc.text() and "base" in room.doc.text()


async def test_a_waiting_update_is_stored_and_published_when_its_dependency_arrives(store: Store) -> None:
    bus = RecordingBus()
    room = Room("r", store, bus, durable_acks=False)
    alice, bob = joined(room), joined(room)
    _writer, [first, second] = edits("first ", "second")
    room.receive(alice, protocol.SyncUpdate(second))  # its origin is in `first`
    assert room.doc.text() == "" and updates(bob) == [] and bus.published == []
    assert room.refusals.held == 1
    # New joiners do not see it either: it is in no encoding of the document.
    assert crdt.document_from([room.doc.full_state()]).text() == ""
    room.on_bus_message(BusMessage("r", Kind.UPDATE, first))  # the dependency, from elsewhere
    assert room.doc.text() == "first second"
    assert crdt.document_from(updates(bob)).text() == "first second"
    await store.flush()
    # The store gets the client's update (released), not the bus's (its publisher stored it).
    assert crdt.document_from([first, *(await store.load("r")).updates]).text() == "first second"
    assert [kind for _room, kind, _payload in bus.published] == [Kind.UPDATE]


async def test_bus_updates_out_of_causal_order_wait_for_each_other(store: Store) -> None:
    room = Room("r", store, RecordingBus(), durable_acks=False)
    bob = joined(room)
    _writer, parts = edits("a", "b", "c", "d")
    for part in reversed(parts):
        room.on_bus_message(BusMessage("r", Kind.UPDATE, part))
    assert room.doc.text() == "abcd" and room.doc.waiting == 0
    assert crdt.document_from(updates(bob)).text() == "abcd"


async def test_a_removal_of_presence_another_client_brought_is_ignored(store: Store) -> None:
    room = Room("r", store, RecordingBus())
    alice, mallory = joined(room), joined(room)
    room.receive(alice, protocol.AwarenessUpdate(protocol.encode_awareness_payload(
        [AwarenessEntry(11, 1, '{"name":"alice"}')])))
    room.receive(mallory, protocol.AwarenessUpdate(protocol.encode_awareness_payload(
        [AwarenessEntry(11, 2, "null"), AwarenessEntry(99, 5, "null")])))
    assert [e.client_id for e in room.live_presence()] == [11]
    room.receive(alice, protocol.AwarenessUpdate(protocol.encode_awareness_payload(
        [AwarenessEntry(11, 2, "null")])))
    assert room.live_presence() == []


async def test_a_stored_document_with_a_lost_dependency_loads_what_it_can(store: Store) -> None:
    _writer, [first, second, third] = edits("one ", "two ", "three")
    for update in (third, first):  # `second` was lost
        await store.append("r", update)
    room = Room("r", store, RecordingBus())
    room.load(await store.load("r"))
    assert room.doc.text() == "one " and room.doc.waiting == 1
    alice = joined(room, WRITE)
    room.receive(alice, protocol.SyncUpdate(second))  # a client brings it back
    assert room.doc.text() == "one two three"
