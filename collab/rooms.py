"""The registry of live rooms on this instance: load once, share, evict when idle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from collab import codes, crdt
from collab.admission import Access
from collab.bus import Bus, Kind
from collab.changes import DocumentEvents
from collab.gate import Refusals
from collab.metrics import counter
from collab.room import PRESENCE_HOLD, Member, Peer, Room, RoomLimits, RoomStats
from collab.store import Store

log = logging.getLogger("collab.rooms")

DELETED_REASON = "document deleted"

DAMAGED_RECHECK = 10.0
"""Seconds a document found damaged is refused without reading the store again (its clients
reconnect every few seconds; each would otherwise reload it)."""


@dataclass(slots=True)
class DamageStats:
    """Documents refused because a stored update of theirs is refused (rendered on /metrics)."""

    damaged_loads: int = counter("loads that found a stored update the gate or the engine "
                                 "refuses (the document is refused, not served in part)")
    damaged_refusals: int = counter("connections and requests refused because their document "
                                    "is damaged in the store")


class DocumentDeleted(Exception):
    """The document was deleted: nobody may open it until its name is used again on purpose
    (:meth:`Rooms.revive`)."""


class Rooms:
    """Get-or-load rooms by name. Clients that arrive while a room loads wait for that one load
    (a client never syncs against a half-loaded document); a room whose last peer left is
    flushed, compacted and dropped after ``idle_seconds`` (a room that holds the presence of
    clients between two requests is kept until that presence expires).

    While the bus is down (Redis refusing connections or not answering), the instances holding
    a room would drift apart for the whole outage: so every ``bus_poll_interval`` seconds each
    room with clients reads what the others stored and hands it to its members, until the bus
    is healthy again (it then catches up once more by itself)."""

    def __init__(self, store: Store, bus: Bus, *, idle_seconds: float = 5.0,
                 durable_acks: bool = True, housekeeping_interval: float = 5.0,
                 bus_poll_interval: float = 1.0,
                 presence_hold: float = PRESENCE_HOLD, limits: RoomLimits | None = None,
                 events: DocumentEvents | None = None) -> None:
        self.store = store
        self.events = events
        """Told what happens to documents here (changes, first and last clients, creation,
        deletion): change notifications and webhooks."""
        self._open: set[str] = set()
        """Rooms with clients (connections, or the presence of clients between requests)."""
        self._fresh: set[str] = set()
        """Rooms loaded with nothing stored: their first change creates the document."""
        self.bus = bus
        self.limits = limits or RoomLimits()
        self.stats = RoomStats()
        self.idle_seconds = idle_seconds
        self.durable_acks = durable_acks
        self.housekeeping_interval = housekeeping_interval
        self.bus_poll_interval = bus_poll_interval
        self.presence_hold = presence_hold
        self.refusals = Refusals()
        self.rooms: dict[str, Room] = {}
        self._loading: dict[str, asyncio.Task[Room]] = {}
        self._evictions: dict[str, asyncio.Task[None]] = {}
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}
        self._deleting: set[str] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._bus_watch: asyncio.Task[None] | None = None
        self.damage = DamageStats()
        self.damaged: dict[str, tuple[float, crdt.DamagedDocument]] = {}
        """Documents found damaged: when, and why (refused again without a load until
        :data:`DAMAGED_RECHECK` has passed; dropped when a load finds them whole)."""

    def start(self) -> None:
        self._housekeeping = asyncio.create_task(self._housekeep(), name="rooms-housekeeping")
        self._bus_watch = asyncio.create_task(self._converge_while_bus_down(), name="rooms-bus-watch")

    async def join(self, name: str, peer: Peer, access: Access, *, wants_acks: bool = False,
                   client_key: str | None = None) -> Member:
        """Join the room ``name`` (loading it if need be); see :meth:`Room.join`."""
        room = await self.get(name)
        await room.ready()
        if room.damaged is not None:  # the rebuild it waited for found the store damaged
            self.damage.damaged_refusals += 1
            raise room.damaged
        eviction = self._evictions.pop(name, None)
        if eviction is not None:
            eviction.cancel()
        member = room.join(peer, access, wants_acks=wants_acks, client_key=client_key)
        if name not in self._open:
            self._open.add(name)
            if self.events is not None:
                self.events.happened("document.opened", name)
        return member

    def leave(self, member: Member) -> None:
        """The member's client is gone; its room is evicted once idle."""
        room = member.room
        room.leave(member)
        self._evict_when_idle(room)

    def _evict_when_idle(self, room: Room) -> None:
        if room.damaged is not None:
            return  # forgotten already: nothing of it to store or compact
        if room.members or room.leases or room.deleted:
            return
        if room.name in self._open:
            self._open.discard(room.name)
            if self.events is not None:
                self.events.happened("document.closed", room.name)
        if room.name not in self._evictions:
            self._evictions[room.name] = asyncio.create_task(self._evict_later(room))

    async def apply(self, name: str, update: bytes) -> Any:
        """Apply an update from no client (the document API) through the room, so that its
        members and the other instances see it; returns once it is stored. Raises
        :class:`DocumentDeleted` or :class:`collab.crdt.InvalidUpdate`."""
        room = await self.get(name)
        try:
            committed = room.apply(update)
        finally:
            self._evict_when_idle(room)
        return await committed

    async def read(self, name: str) -> crdt.Document | None:
        """The document as this instance knows it best: its live room (fresher than the store
        by a commit window), else what the store holds. None when no such document was ever
        written; raises :class:`DocumentDeleted`, or :class:`collab.crdt.DamagedDocument` for
        a document the store holds damaged. The result is for reading only (a live room's own
        document)."""
        room = self.rooms.get(name)
        if room is not None and not room.deleted and (room.members or room.doc.state_vector() != b"\x00"):
            return room.doc
        self.refuse_damaged(name)
        stored = await self.store.load(name)
        if stored.deleted:
            raise DocumentDeleted(name)
        if not stored.updates:
            return None
        try:
            return stored.document(live=False)
        except crdt.DamagedDocument as damage:
            self.found_damaged(name, damage)
            self.damage.damaged_refusals += 1
            raise

    async def delete(self, name: str) -> bool:
        """Delete the document everywhere: its clients here are closed with 4410, the store
        keeps a tombstone, and the other instances are told to close theirs. Returns whether
        there was anything to delete (stored content or clients)."""
        self._deleting.add(name)
        self.damaged.pop(name, None)  # deleting is how a damaged document is cleared
        try:
            loading = self._loading.get(name)
            if loading is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(loading)
            room = self.rooms.get(name)
            had_clients = room is not None and bool(room.members)
            if room is not None:
                self._discard(room)
            existed = await self.store.delete(name)
            self.bus.publish(name, Kind.DELETED, b"")
            if (existed or had_clients) and self.events is not None:
                self.events.happened("document.deleted", name)
            return existed or had_clients
        finally:
            self._deleting.discard(name)

    async def revive(self, name: str) -> bool:
        """Let a deleted name be used again (see :meth:`collab.store.base.Store.revive`)."""
        self.damaged.pop(name, None)
        return await self.store.revive(name)

    def _changed(self, name: str, update: bytes, clients: AbstractSet[int]) -> None:
        """A room accepted a change (see :attr:`Room.on_changed`)."""
        assert self.events is not None
        if name in self._fresh:
            self._fresh.discard(name)
            self.events.happened("document.created", name)
        self.events.changed(name, update, clients)

    def _discard(self, room: Room) -> None:
        """The document was deleted (here or elsewhere): close its clients and forget it."""
        room.deleted = True
        room.close_members(codes.DOCUMENT_DELETED.close, DELETED_REASON)
        self._forget(room)

    def found_damaged(self, name: str, damage: crdt.DamagedDocument) -> None:
        """A document's stored updates include one the gate or the engine refuses: count it,
        say so, and refuse it for a while without reading the store again."""
        self.damage.damaged_loads += 1
        if name not in self.damaged:
            log.error("document %r is damaged in the store and is refused: %s (see `collab db "
                      "check`)", name, damage.reason)
        self.damaged[name] = (asyncio.get_running_loop().time(), damage)

    def refuse_damaged(self, name: str) -> None:
        """Raise the damage of ``name`` if it was found damaged lately (counted)."""
        known = self.damaged.get(name)
        if known is None:
            return
        if asyncio.get_running_loop().time() - known[0] < DAMAGED_RECHECK:
            self.damage.damaged_refusals += 1
            raise known[1]

    async def get(self, name: str) -> Room:
        """The live room of ``name``, loaded if need be. Raises :class:`DocumentDeleted`, and
        :class:`collab.crdt.DamagedDocument` for a document that cannot be loaded whole."""
        if name in self._deleting:
            raise DocumentDeleted(name)
        self.refuse_damaged(name)
        room = self.rooms.get(name)
        if room is not None:
            return room
        unsubscribing = self._unsubscribing.get(name)
        if unsubscribing is not None and not unsubscribing.done():  # an evicted room is still
            await asyncio.shield(unsubscribing)                      # leaving the bus
            return await self.get(name)
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.create_task(self._load(name), name=f"load:{name}")
            self._loading[name] = loading
            loading.add_done_callback(lambda task: self._loaded(name, task))
        try:
            return await asyncio.shield(loading)
        except crdt.DamagedDocument:
            self.damage.damaged_refusals += 1
            raise

    async def _load(self, name: str) -> Room:
        room = Room(name, self.store, self.bus, durable_acks=self.durable_acks,
                    presence_hold=self.presence_hold, limits=self.limits, stats=self.stats,
                    refusals=self.refusals)
        room.on_deleted = lambda: self._discard(room)
        room.on_damaged = lambda damage: self._drop_damaged(room, damage)
        if self.events is not None:
            room.on_changed = self._changed
        await self.bus.subscribe(name, room.on_bus_message, room.on_bus_gap, room.on_bus_unconfirmed)
        try:
            stored = await self.store.load(name)
            if stored.deleted or name in self._deleting:
                raise DocumentDeleted(name)
            room.load(stored)
            if not stored.updates:
                self._fresh.add(name)
        except crdt.DamagedDocument as damage:
            self.found_damaged(name, damage)
            await self._unsubscribe_quietly(name)
            raise
        except BaseException:
            await self._unsubscribe_quietly(name)
            raise
        self.damaged.pop(name, None)
        self.rooms[name] = room
        return room

    def _loaded(self, name: str, task: asyncio.Task[Room]) -> None:
        self._loading.pop(name, None)
        if not task.cancelled() and task.exception() is not None and not isinstance(
                task.exception(), (DocumentDeleted, crdt.DamagedDocument)):  # the joiners get it too
            log.error("loading room %r failed: %s", name, task.exception())

    def _drop_damaged(self, room: Room, damage: crdt.DamagedDocument) -> None:
        """A rebuild found the stored document damaged: the room (its members already closed)
        is forgotten, and the document refused like any found damaged on loading."""
        self.found_damaged(room.name, damage)
        self._forget(room)

    def _forget(self, room: Room) -> None:
        """Drop a room that must not be served again as it is: no eviction, no subscription."""
        self._open.discard(room.name)
        self._fresh.discard(room.name)
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        eviction = self._evictions.pop(room.name, None)
        if eviction is not None:
            eviction.cancel()
        leaving = asyncio.create_task(self._unsubscribe_quietly(room.name))
        self._unsubscribing[room.name] = leaving
        leaving.add_done_callback(lambda task: self._unsubscribing.pop(room.name, None)
                                  if self._unsubscribing.get(room.name) is task else None)

    async def _evict_later(self, room: Room) -> None:
        try:
            await asyncio.sleep(self.idle_seconds)
            await self._evict(room)
        except asyncio.CancelledError:
            pass
        finally:
            if self._evictions.get(room.name) is asyncio.current_task():
                del self._evictions[room.name]

    async def _evict(self, room: Room) -> None:
        await self.store.flush()
        if room.members or room.leases:
            return
        try:
            await self.store.compact(room.name)
        except Exception:
            log.exception("compaction of %r on eviction failed; the log is kept", room.name)
        if room.members or room.leases or self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        self._fresh.discard(room.name)
        leaving = asyncio.create_task(self._unsubscribe_quietly(room.name))
        self._unsubscribing[room.name] = leaving
        try:
            await asyncio.shield(leaving)
        finally:
            if self._unsubscribing.get(room.name) is leaving:
                del self._unsubscribing[room.name]

    async def _unsubscribe_quietly(self, name: str) -> None:
        try:
            await self.bus.unsubscribe(name)
        except Exception as exc:
            log.warning("unsubscribing %r from the bus failed: %s", name, exc)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(self.housekeeping_interval)
            for room in list(self.rooms.values()):
                room.expire_presence()
                self._evict_when_idle(room)

    async def _converge_while_bus_down(self) -> None:
        down = told_failure = False
        while True:
            await asyncio.sleep(self.bus_poll_interval)
            if self.bus.healthy:
                if down:
                    log.info("the bus is healthy again; rooms stop reading the store for it")
                down = False
                continue
            if not down:
                down, told_failure = True, False
                self.stats.bus_outages += 1
                log.warning("the bus is down: rooms with clients read what other instances stored "
                            "every %.1f s until it is back", self.bus_poll_interval)
            failure = await self._read_store_for_bus()
            if failure is not None and not told_failure:  # once per outage
                told_failure = True
                log.warning("while the bus is down, reading the store failed: %s", failure)

    async def _read_store_for_bus(self) -> Exception | None:
        """One catch-up of every room with clients, one room at a time (the store's load stays
        one query per instance, however many rooms); the first failure, if any."""
        failure = None
        for room in list(self.rooms.values()):
            if not (room.members or room.leases) or room.deleted or self.rooms.get(room.name) is not room:
                continue
            self.stats.bus_outage_reads += 1
            try:
                self.stats.bus_outage_updates += await room.catch_up()
            except Exception as exc:
                failure = failure or exc
            if self.bus.healthy:
                break
        return failure

    async def close(self) -> None:
        """Stop housekeeping and pending evictions; the caller flushes and closes the store."""
        for task in (self._housekeeping, self._bus_watch):
            if task is not None:
                task.cancel()
        for task in self._evictions.values():
            task.cancel()
        await asyncio.gather(*self._evictions.values(), return_exceptions=True)
        await asyncio.gather(*(t for t in (self._housekeeping, self._bus_watch) if t is not None),
                             return_exceptions=True)

    @property
    def member_count(self) -> int:
        return sum(len(room.members) for room in self.rooms.values())
