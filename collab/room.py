"""One live document on this instance: the rules of who gets what, with no I/O of its own.

A transport hands the room a :class:`Peer`, which can only ``send(frame)`` (queue a frame, never
block) and ``close(code, reason)``, together with the :class:`~collab.admission.Access` admission
granted; :meth:`Room.join` returns the :class:`Member` record through which the transport passes
that client's messages and, at the end, its leaving. Everything else the room knows about the
client lives in the member, so a WebSocket and an HTTP fallback session are members alike.

A transport without connections (the HTTP fallback) makes every request a member and names the
client with a ``client_key``: its members share one :class:`Lease` on the presence it brought,
which outlives each request, and :meth:`Room.resume` sends such a member what the client missed
since the :class:`~collab.version.Version` it last got, from the room's broadcast
:class:`~collab.history.History` when it can, else as a diff against its state vector.

The room applies what writers send, broadcasts what the engine produced from it (never a
client's raw bytes), appends it to the store and publishes it on the bus. Everything here runs on
the event loop without awaiting, so handling one message is atomic with respect to every other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from collab import codes, crdt, gate, protocol
from collab.admission import Access
from collab.bus import Bus, BusMessage, Kind
from collab.codes import Refused
from collab.gate import Refusals
from collab.history import History
from collab.metrics import Histogram, counter
from collab.protocol import AwarenessEntry
from collab.store import Store, StoredDocument
from collab.version import Version, document_digest, presence_digest

log = logging.getLogger("collab.room")

EMPTY_STATE_VECTOR = b"\x00"

REMOTE_AWARENESS_TIMEOUT = 30.0
"""Presence heard from another instance that is not renewed within this time is dropped
(stock clients renew theirs every 15 s; the same timeout they apply)."""

PRESENCE_HOLD = 20.0
"""How long the presence of a client without a connection (the HTTP fallback) is kept after
its last request ended; a live one sends its next request at once."""

DIGEST_REUSE = 0.1
"""Seconds a version may carry the digest of an earlier state of a changing document (a state
the client holds too, so still true), instead of one computed per change."""

REMOVALS_SHOWN = 60.0
"""A client catching up by diff is also sent the removals of this many seconds, so that it
drops presence it holds of clients that left while it was away."""

READ_ONLY_FRAME = protocol.encode_auth_denied(codes.READ_ONLY_REASON)

NO_STRUCTS = b"\x00"
"""How a Yjs v1 update with no inserted content starts (zero clients with structs)."""

SIZE_MEASURE_INTERVAL = 1.0
"""A document near its size limit is measured exactly (encoded: O(size)) at most this often."""

STORE_BACKLOG_REASON = "the store is not taking updates now; try again"


@dataclass(frozen=True, slots=True)
class RoomLimits:
    """What one client may make a room hold (each refusal closes that client with 4413)."""

    max_document_size: int = 16 * 1024 * 1024
    """Bytes of the document's encoded Yjs state; an update that would grow it past this is
    refused."""
    max_presence_state: int = 8 * 1024
    """Bytes of one presence state's JSON."""
    max_presence_entries: int = 8
    """Presence client ids one member may bring into the room."""


@dataclass(slots=True)
class RoomStats:
    """Counters shared by all rooms of an instance (rendered on /metrics)."""

    updates_applied: int = counter("client updates that changed a document")
    duplicate_updates: int = counter("client updates that changed nothing (already known)")
    update_apply_seconds: Histogram = field(default_factory=lambda: Histogram(
        "time for the engine to apply one client update"))
    read_only_updates_dropped: int = 0
    updates_too_large_for_document: int = 0
    presence_states_too_large: int = 0
    presence_entries_refused: int = 0
    size_measurements: int = 0
    bus_outages: int = counter("times the bus was found down and rooms began to converge "
                               "through the store")
    bus_outage_reads: int = counter("store reads of rooms catching up while the bus was down")
    bus_outage_updates: int = counter("stored updates of other instances that rooms applied "
                                      "while the bus was down")
    writers_closed_store_backlog: int = counter(
        "writers closed with 1013 because the store holds as many unstored updates as it may")
    stored_again_for_acks: int = counter(
        "resent updates this room held but had not stored, written so that they could be acked")


FROM_CLIENT = "client"
"""The origin of updates a member of this instance sent: once integrated, they are stored and
published (an update that had to wait for its dependencies too, whoever let it in)."""
FROM_ELSEWHERE = "elsewhere"
"""The origin of updates heard on the bus or read from the store: only broadcast here."""

MAX_QUEUED_DURING_REBUILD = 10_000


class Peer(Protocol):
    """How a room reaches one client: all a transport has to provide."""

    def send(self, frame: bytes) -> None:
        """Queue one encoded message for the client; never blocks, never raises."""

    def close(self, code: int, reason: str) -> None:
        """End the client's connection (the transport then calls :meth:`Room.leave`)."""


@dataclass(slots=True, eq=False)
class Lease:
    """The presence brought by a client that reaches the room through separate requests: it
    is kept while any of its requests is here and ``hold`` seconds after the last one ended,
    and removed at once on a goodbye."""

    key: str
    requests: int = 0
    """Requests of this client in the room now."""
    idle_since: float = 0.0


@dataclass(slots=True, eq=False)
class Member:
    """What the room knows about one client of this instance, from join to leave."""

    room: Room
    peer: Peer
    access: Access
    wants_acks: bool = False
    """The client asked to hear, per message it sent, when the store has committed it."""
    synced: bool = False
    """Set once the client's step 1 was answered: only then does it receive broadcasts."""
    awareness_ids: AbstractSet[int] = frozenset()
    """The awareness client ids it brought into the room (removed for all when it leaves)."""
    acks: deque[tuple[asyncio.Future[object], bytes]] | None = None
    """Acks waiting for their commit, in arrival order (created on first use)."""
    unstored: int = 0
    """Updates it brought that the store has not taken yet."""
    lease: Lease | None = None
    """For a client without a connection: the presence it holds across its requests. Such a
    member is not sent what came from the same client (its other requests)."""

    @property
    def may_write(self) -> bool:
        return self.access.may_write

    @property
    def user(self) -> Mapping[str, Any]:
        return self.access.user

    @property
    def client_key(self) -> str | None:
        return self.lease.key if self.lease is not None else None

    @property
    def presence_owner(self) -> Member | Lease:
        return self.lease if self.lease is not None else self


@dataclass(slots=True)
class PresenceState:
    entry: AwarenessEntry
    owner: Member | Lease | None
    """What brought the newest state: a member or lease of this instance, or None when it was
    heard on the bus. Only that owner's going removes it (a client that moved to another
    instance, or from the fallback to a WebSocket, is not removed by the one it left)."""
    heard_at: float = field(default_factory=time.monotonic)


def _with_name(entry: AwarenessEntry, name: str) -> AwarenessEntry:
    """The state with ``user.name`` set to the name admission vouches for."""
    state = json.loads(entry.state)
    if not isinstance(state, dict):
        return entry
    user = state.get("user")
    state["user"] = {**(user if isinstance(user, dict) else {}), "name": name}
    return AwarenessEntry(entry.client_id, entry.clock,
                          json.dumps(state, ensure_ascii=False, separators=(",", ":")))


def _retrieve(future: asyncio.Future[object]) -> None:
    """Mark a failed commit as seen: the clients still hold the update and resend it."""
    if not future.cancelled():
        future.exception()


def _advance(clocks: dict[int, int], ranges: gate.Ranges) -> None:
    """Extend a per-client prefix by ``ranges`` where they continue it (a range that starts
    past the prefix leaves a gap, which a prefix cannot record)."""
    for client, (start, end) in ranges.items():
        if start <= clocks.get(client, 0) < end:
            clocks[client] = end


def _covered(clocks: Mapping[int, int], ranges: gate.Ranges) -> bool:
    return all(clocks.get(client, 0) >= end for client, (_start, end) in ranges.items())


def _resolved() -> asyncio.Future[object]:
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class Room:
    def __init__(self, name: str, store: Store, bus: Bus, *, durable_acks: bool = True,
                 presence_hold: float = PRESENCE_HOLD, limits: RoomLimits | None = None,
                 stats: RoomStats | None = None, refusals: Refusals | None = None) -> None:
        self.name = name
        self.store = store
        self.bus = bus
        self.durable_acks = durable_acks
        self.presence_hold = presence_hold
        self.refusals = refusals if refusals is not None else Refusals()
        self.doc = crdt.Document()
        self.members: set[Member] = set()
        self.presence: dict[int, PresenceState] = {}
        self.leases: dict[str, Lease] = {}
        self.history = History()
        self.incarnation = os.urandom(8)
        """Names this room's lifetime on this instance in the versions it issues."""
        self.limits = limits or RoomLimits()
        self.stats = stats or RoomStats()
        self.size_bound = 0
        """An upper bound of the document's encoded size: exact when measured, plus what was
        applied since (deletions shrink a document, so this overestimates until measured)."""
        self._measured_at = -SIZE_MEASURE_INTERVAL
        self._measured_size = 0
        self.deleted = False
        """Set once the document was deleted: nothing more is applied or stored here."""
        self.on_deleted: Callable[[], None] | None = None
        """Called when this room learns that the document was deleted elsewhere."""
        self.damaged: crdt.DamagedDocument | None = None
        """Set when a rebuild found the stored document damaged: the room is not used again."""
        self.on_damaged: Callable[[crdt.DamagedDocument], None] | None = None
        """Called then (its members are closed already)."""
        self.on_changed: Callable[[str, bytes, AbstractSet[int]], None] | None = None
        """Told of every change this room accepted itself (not of those heard from elsewhere),
        with the clients whose structs it holds: change notifications, which only note it here."""
        self._catching_up: asyncio.Task[int] | None = None
        self._from_store: tuple[int | None, AbstractSet[int]] = (None, frozenset())
        """What this document holds of the store: the snapshot version applied and the log
        positions applied after it (a catch-up skips them)."""
        self._full_step2: bytes | None = None
        self._doc_version = 0
        self._doc_digest: tuple[int, bytes] | None = None
        self._doc_digest_at = 0.0
        self.digest_reuse = DIGEST_REUSE
        self._presence_version = 0
        self._presence_digest: tuple[int, bytes] | None = None
        self._rebuilding: asyncio.Task[None] | None = None
        self._queued_during_rebuild: list[BusMessage] = []
        self.durable: dict[int, int] = {}
        """Per client, the clock below which the store is known to hold this document's
        structs: what was loaded from it, extended by each append of this room once committed
        (appends commit in order, so each extends what the earlier ones stored)."""
        self._queued: dict[int, int] = {}
        """Like :attr:`durable`, counting the appends still waiting for their commit."""
        self._last_append: asyncio.Future[int] | None = None
        """The newest append of this room: once it is stored, so is every earlier one."""

    # --- loading ----------------------------------------------------------------------------

    def load(self, stored: StoredDocument) -> None:
        """Apply what the store holds, whole: raises :class:`crdt.DamagedDocument` (and changes
        nothing) when the gate or the engine refuses a stored update, rather than serve a part
        of the document as if it were all of it."""
        pristine = self.doc if self._doc_version == 0 else None  # loaded into: one engine less
        try:
            self.doc = self._loaded_document(stored, pristine)
        except crdt.DamagedDocument:
            if pristine is not None:
                self.doc = crdt.Document()
            raise
        self.durable = self.doc.clocks()
        self._queued = dict(self.durable)
        self.size_bound = sum(len(update) for update in stored.updates)
        self._measured_size = 0
        self._document_replaced()

    def _document_replaced(self) -> None:
        """A new document (a load, a rebuild): the versions issued for the old one no longer
        say what a client has, so their history ends with a new incarnation."""
        self._doc_version += 1
        self.incarnation = os.urandom(8)
        self.history = History()
        self._from_store = (None, frozenset())

    def _loaded_document(self, stored: StoredDocument,
                         into: crdt.Document | None = None) -> crdt.Document:
        doc = stored.document(into)
        if doc.waiting:
            log.warning("room %r: %d stored updates wait for changes the store does not have",
                        self.name, doc.waiting)
        return doc

    async def catch_up(self) -> int:
        """Re-read the store after the bus may have dropped messages, or while it is down, and
        apply what other instances stored: the log entries this document has not applied yet
        and the snapshot when it changed (a compaction); what repeats known changes is a no-op
        anyway. Members are sent what changed. Returns how many stored updates changed it."""
        stored = await self.store.read_log(self.name)
        if stored.deleted:
            self._deleted_elsewhere()
            return 0
        doc = self.doc
        version, applied = self._from_store
        if stored.version != version:  # a compaction deleted what it folded: read all again
            applied = frozenset()
        fresh: list[tuple[int | None, bytes]] = [
            (position, update) for position, update in zip(stored.positions, stored.updates,
                                                            strict=True)
            if position not in applied]
        if stored.snapshot is not None and stored.version != version:
            fresh.insert(0, (None, stored.snapshot))
        changed = 0
        retry: set[int | None] = set()  # too much waited already: read it again next time
        for position, update in fresh:
            if self._rebuilding is not None or self.doc is not doc:
                return changed  # a rebuild reads the store itself
            try:
                changed += self._integrate_elsewhere(update)
            except crdt.InvalidUpdate as refused:
                if refused.reason == "waiting":
                    retry.add(position)
            except crdt.EnginePanic as panic:
                self._engine_failed(panic)
                return changed
        self._from_store = (version if None in retry else stored.version,
                            frozenset(stored.positions) - retry)
        return changed

    async def ready(self) -> None:
        """Wait until the room is not being rebuilt (joiners sync only with a sound document)."""
        while self._rebuilding is not None:
            await asyncio.shield(self._rebuilding)

    # --- an engine failure ------------------------------------------------------------------

    def _engine_failed(self, panic: crdt.EnginePanic, culprit: Member | None = None) -> None:
        """The document may be damaged: close every member (they reconnect and resync both
        ways, so nothing they hold is lost) and rebuild the document from the store. The
        member whose message failed is told so ("internal error")."""
        self.refusals.engine_panics += 1
        if culprit is not None:
            culprit.peer.close(codes.INTERNAL_ERROR.close, "the server failed on this message")
        if self._rebuilding is not None:
            return
        log.error("room %r: %s; rebuilding the document from the store", self.name, panic)
        self.refusals.rebuilds += 1
        for member in list(self.members):
            if member is not culprit:
                member.peer.close(codes.TRY_AGAIN.close, "room being rebuilt, reconnect")
        self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild(),
                                                                   name=f"rebuild:{self.name}")

    async def _rebuild(self) -> None:
        try:
            while True:
                try:
                    await self.store.flush()
                    self.load(await self.store.load(self.name))
                    break
                except crdt.DamagedDocument as damage:
                    self._found_damaged(damage)
                    return
                except Exception as exc:
                    log.error("room %r: rebuilding from the store failed (%s); retrying", self.name, exc)
                    await asyncio.sleep(1.0)
            self._full_step2 = None
        finally:
            self._rebuilding = None
        queued, self._queued_during_rebuild = self._queued_during_rebuild, []
        for message in queued:
            self.on_bus_message(message)

    def _found_damaged(self, damage: crdt.DamagedDocument) -> None:
        """The store cannot give the document back whole: serve none of it (clients that
        joined meanwhile are closed too; they keep their copies)."""
        self.damaged = damage
        self._queued_during_rebuild = []
        reason = codes.close_reason(f"document damaged in the store: {damage.reason}")
        for member in list(self.members):
            member.peer.close(codes.DOCUMENT_DAMAGED.close, reason)
        if self.on_damaged is not None:
            self.on_damaged(damage)

    # --- members ----------------------------------------------------------------------------

    def join(self, peer: Peer, access: Access, *, wants_acks: bool = False,
             client_key: str | None = None) -> Member:
        """Admit an admitted client. A connection is sent the server's step 1 and the live
        presence, and a read-only client is told once that its changes go nowhere. A request
        of a client without a connection (``client_key``) is sent nothing yet: see
        :meth:`resume`."""
        member = Member(self, peer, access, wants_acks=wants_acks)
        self.members.add(member)
        if client_key is not None:
            lease = self.leases.get(client_key)
            if lease is None:
                lease = self.leases[client_key] = Lease(client_key)
            lease.requests += 1
            member.lease = lease
            return member
        try:
            peer.send(protocol.encode_sync_step1(self.doc.state_vector()))
        except crdt.EnginePanic as panic:
            self._engine_failed(panic)
            return member
        if not member.may_write:
            peer.send(READ_ONLY_FRAME)
        if self.live_presence():
            peer.send(self._presence_frame())
        return member

    def change_access(self, member: Member, access: Access) -> None:
        """A recheck found the member's access changed: it applies from its next message on,
        and a member that may no longer write is told once, as at join."""
        could_write = member.may_write
        member.access = access
        if could_write and not member.may_write and member in self.members:
            member.peer.send(READ_ONLY_FRAME)

    def leave(self, member: Member) -> None:
        """Drop the member and, for everyone else at once, its presence; a request's presence
        stays with its client's lease."""
        if member not in self.members:
            return
        self.members.discard(member)
        member.acks = None
        lease = member.lease
        if lease is None:
            self._remove_presence_of(member)
        else:
            lease.requests -= 1
            if lease.requests == 0:
                lease.idle_since = time.monotonic()

    def goodbye(self, client_key: str, *, publish: bool = True) -> None:
        """The client without a connection says it is leaving: its presence goes at once, here
        and (``publish``) on the other instances, each removing what that client brought to it
        (the key is the client's own secret: only it can say goodbye for it)."""
        lease = self.leases.get(client_key)
        if lease is not None:
            self._remove_presence_of(lease)
            if lease.requests == 0:
                del self.leases[client_key]
        if publish:
            self.bus.publish(self.name, Kind.GOODBYE, client_key.encode("ascii"))

    def _remove_presence_of(self, owner: Member | Lease) -> None:
        removed = [AwarenessEntry(client_id, state.entry.clock, "null")
                   for client_id, state in self.presence.items()
                   if state.owner is owner and not state.entry.is_removal]
        self._merge_presence(removed, owner=owner)
        self._announce_presence(removed, publish=True)

    def resume(self, member: Member, state_vector: bytes, since: Version | None) -> None:
        """Bring a request of a client without a connection up to date, then let it receive
        broadcasts. ``since`` is the version the client last got (None on its first request).
        From this room's own history the member is sent exactly what it missed (nothing, if
        nothing happened); otherwise the diff against ``state_vector`` and the presence,
        unless the digests show the client has it all. The server's step 1 goes along when
        the client may hold something the server lacks (its first request, a document that
        differs from the one it was last told of, or a state vector ahead of the server's),
        so the client answers with its step 2; a read-only client is told so first, on its
        first request."""
        try:
            self._resume(member, state_vector, since)
        except crdt.EnginePanic as panic:
            self._engine_failed(panic, member)

    def _resume(self, member: Member, state_vector: bytes, since: Version | None) -> None:
        member.synced = True
        if since is not None and since.incarnation == self.incarnation:
            missed = self.history.since(since.seq, exclude=member.client_key)
            if missed is not None:
                for frame in missed:
                    member.peer.send(frame)
                return
        if since is None and not member.may_write:
            member.peer.send(READ_ONLY_FRAME)  # first, so that it sends none of its changes
        differs = since is None or since.document != self.document_digest()
        if differs:
            member.peer.send(self._step2_for(state_vector))
        if differs or self._lacks_any_of(state_vector):
            # The client may hold what this document lacks: deletions too, which no state
            # vector shows (another instance that died before storing them, a rebuilt room).
            member.peer.send(protocol.encode_sync_step1(self.doc.state_vector()))
        if (since is None and self.presence) or (since is not None
                                                 and since.presence != self.presence_digest()):
            member.peer.send(self._presence_frame(with_removals=True))

    def version(self) -> Version:
        """What a member that received everything broadcast so far has. Under a stream of
        changes the document digest is refreshed at most every ``digest_reuse`` seconds (it
        costs a pass over the delete set); an older one names a state the member holds too."""
        cached = self._doc_digest
        if cached is None or (cached[0] != self._doc_version
                              and time.monotonic() - self._doc_digest_at >= self.digest_reuse):
            self.document_digest()
        assert self._doc_digest is not None
        return Version(self.incarnation, self.history.seq, self._doc_digest[1],
                       self.presence_digest())

    def _lacks_any_of(self, state_vector: bytes) -> bool:
        """True when a client with ``state_vector`` has structs this document lacks."""
        mine = crdt.decode_state_vector(self.doc.state_vector())
        theirs = crdt.decode_state_vector(state_vector)
        return any(clock > mine.get(client, 0) for client, clock in theirs.items())

    def document_digest(self) -> bytes:
        """The digest of the document now, computed once per document version."""
        cached = self._doc_digest
        if cached is None or cached[0] != self._doc_version:
            delete_set = self.doc.diff(self.doc.state_vector())
            cached = self._doc_digest = (self._doc_version,
                                         document_digest(self.doc.state_vector(), delete_set))
            self._doc_digest_at = time.monotonic()
        return cached[1]

    def presence_digest(self) -> bytes:
        cached = self._presence_digest
        if cached is None or cached[0] != self._presence_version:
            cached = self._presence_digest = (self._presence_version,
                                              presence_digest(self.live_presence()))
        return cached[1]

    def acks_waiting(self, member: Member) -> list[asyncio.Future[object]]:
        """The commits the member's acks wait for (a transport that answers each request once
        waits for them before it answers)."""
        return [committed for committed, _frame in member.acks or ()]

    # --- messages from clients --------------------------------------------------------------

    def receive(self, member: Member, message: protocol.Message) -> None:
        """Handle one decoded client message. Raises :class:`crdt.InvalidUpdate`,
        :class:`protocol.ProtocolError` or :class:`~collab.codes.Refused` (a limit) for input
        the transport must refuse; refused input changes nothing. An engine failure closes the
        sender with "internal error" and everyone else while the room is rebuilt."""
        if self._rebuilding is not None:
            return  # the member is being closed; it resyncs with the rebuilt document
        try:
            self._dispatch(member, message)
        except crdt.InvalidUpdate as refused:
            self.refusals.refused(refused.reason)
            raise
        except crdt.EnginePanic as panic:
            self._engine_failed(panic, member)

    def _dispatch(self, member: Member, message: protocol.Message) -> None:
        if isinstance(message, (protocol.SyncUpdate, protocol.SyncStep2)):
            if member.may_write and not self.deleted:
                self._receive_update(member, message.update)
            else:  # told at join; resends after a reconnect land here too
                self.stats.read_only_updates_dropped += 1
        elif isinstance(message, protocol.SyncStep1):
            member.peer.send(self._step2_for(message.state_vector))
            member.synced = True
        elif isinstance(message, protocol.AwarenessUpdate):
            self._receive_awareness(member, message.payload)
        elif isinstance(message, protocol.QueryAwareness):
            member.peer.send(self._presence_frame())
        # Auth messages from a client carry nothing the server acts on.

    def _integrate(self, update: bytes, origin: str) -> crdt.Applied:
        """Apply an update (the caller broadcasts what it changed, then calls
        :meth:`_released`)."""
        applied = self.doc.integrate(update, origin)
        if applied.update is not None or applied.released:
            self._full_step2 = None
            self._doc_version += 1
        if applied.update is not None:
            self.size_bound += len(applied.update)
        if applied.released:
            self.size_bound += sum(len(change.update) for change in applied.released)
        if applied.waiting:
            self.refusals.held += 1
        return applied

    def _released(self, applied: crdt.Applied) -> None:
        """What an update let in of earlier ones that were waiting, after it: broadcast to
        everyone, and stored and published when a member of this instance sent it."""
        for change in applied.released:
            self._broadcast(protocol.encode_sync_update(change.update), exclude=None)
            if change.origin == FROM_CLIENT:
                committed = self._append(change.update, None, change.ranges)
                committed.add_done_callback(_retrieve)
                self.bus.publish(self.name, Kind.UPDATE, change.update, durable=committed)
                if self.on_changed is not None:
                    self.on_changed(self.name, change.update, change.ranges.keys())

    def _integrate_elsewhere(self, update: bytes) -> bool:
        """An update heard on the bus or read from the store: broadcast what it changed.
        Returns whether it changed the document."""
        applied = self._integrate(update, FROM_ELSEWHERE)
        if applied.update is not None:
            self._broadcast(protocol.encode_sync_update(applied.update), exclude=None)
        self._released(applied)
        return applied.update is not None or bool(applied.released)


    def _check_growth(self, update: bytes) -> None:
        """Refuse (before applying it) an update that could grow the document past its limit.
        Near the limit the document is measured, so that deletions count; a measurement costs
        a full encoding, so it is made only after an eighth of the limit was applied since the
        last one, or a second passed (a document held at its limit costs one per second). An
        update without structs (deletions only, as a client resends what the server already
        has) cannot grow it and always passes."""
        limit = self.limits.max_document_size
        if self.size_bound + len(update) <= limit or update[:1] == NO_STRUCTS:
            return
        now = time.monotonic()
        if (self.size_bound - self._measured_size >= limit // 8
                or now - self._measured_at >= SIZE_MEASURE_INTERVAL):
            self._measured_at = now
            self.stats.size_measurements += 1
            full_state = self.doc.full_state()
            self.size_bound = self._measured_size = len(full_state)
            self._full_step2 = protocol.encode_sync_step2(full_state)  # the next joiners' answer
            if self.size_bound + len(update) <= limit:
                return
        self.stats.updates_too_large_for_document += 1
        raise Refused(codes.DOCUMENT_TOO_LARGE,
                      f"document too large: it may not grow past {limit} bytes")

    def _step2_for(self, state_vector: bytes) -> bytes:
        """The answer to a step 1. Most joiners have nothing yet, so the answer for an empty
        state vector is encoded once per document version and shared (join storms)."""
        if state_vector != EMPTY_STATE_VECTOR:
            return protocol.encode_sync_step2(self.doc.diff(state_vector))
        if self._full_step2 is None:
            self._full_step2 = protocol.encode_sync_step2(self.doc.full_state())
        return self._full_step2

    def _receive_update(self, member: Member, update: bytes) -> None:
        self._check_backlog(member)
        self._check_growth(update)
        started = time.perf_counter()
        applied = self._integrate(update, FROM_CLIENT)
        self.stats.update_apply_seconds.observe(time.perf_counter() - started)
        produced = applied.update
        acks = self.durable_acks and member.wants_acks
        if produced is None:
            self.stats.duplicate_updates += 1
            if acks and self.doc.covers(update):
                self._ack(member, self._stored_with(update, member),
                          protocol.encode_sync_update(crdt.merge([update])))
            self._released(applied)
            return
        frame, committed = self._share(produced, applied.ranges, exclude=member)
        if acks:
            self._ack(member, committed, frame)
        self._released(applied)

    def _check_backlog(self, sender: Member | None) -> None:
        """While the store holds as many unstored updates as it may, take none: the sender,
        and every member whose updates the store has not taken yet, are closed with "try
        again", so that they keep their edits and resend them (elsewhere, or here later)."""
        if not self.store.backlog_full:
            return
        for member in list(self.members):
            if member is not sender and member.unstored > 0:
                self.stats.writers_closed_store_backlog += 1
                member.peer.close(codes.TRY_AGAIN.close, STORE_BACKLOG_REASON)
        if sender is not None:
            self.stats.writers_closed_store_backlog += 1
        raise Refused(codes.TRY_AGAIN, STORE_BACKLOG_REASON)

    def _stored_with(self, update: bytes, member: Member | None) -> asyncio.Future[object]:
        """A future that resolves once the store holds ``update`` (which this document
        covers) and what it depends on. Covered by this room's appends: when the newest of
        them is stored (it may carry deletions, which no clock shows). Held here only (heard
        on the bus, or given up on): everything this room holds that it has not appended is
        appended now, and the ack waits for that."""
        if _covered(self._queued, gate.inspect(update).clocks):
            last = self._last_append
            return last if last is not None else _resolved()
        self.stats.stored_again_for_acks += 1
        missing = self.doc.diff(gate.encode_state_vector(self._queued))
        everything = {client: (0, clock) for client, clock in self.doc.clocks().items()}
        return self._append(missing, member, everything)

    def _append(self, update: bytes, member: Member | None,
                ranges: gate.Ranges | None = None) -> asyncio.Future[int]:
        """Append to the store, keeping this room's record of what the store holds."""
        if ranges is None:
            ranges = gate.inspect(update).clocks
        _advance(self._queued, ranges)
        committed = self.store.append(self.name, update)
        self._last_append = committed
        if member is not None:
            member.unstored += 1
        committed.add_done_callback(lambda done: self._on_stored(done, ranges, member))
        return committed

    def _on_stored(self, done: asyncio.Future[int], ranges: gate.Ranges, member: Member | None) -> None:
        if member is not None:
            member.unstored -= 1
        if done.cancelled() or done.exception() is not None:
            return
        _advance(self.durable, ranges)

    def apply(self, update: bytes) -> asyncio.Future[Any]:
        """Apply an update that comes from no member (the document API) as if a writer had
        sent it: every member sees it, the store takes it, the other instances hear it.
        Returns a future that resolves once it (or, for a duplicate, what it repeats) is
        stored. Raises :class:`crdt.InvalidUpdate` (the gate's reason), :class:`Refused` past
        a limit or while the room is rebuilt after an engine failure."""
        if self._rebuilding is not None or self.deleted:
            raise Refused(codes.TRY_AGAIN, "the document is being rebuilt; try again")
        self._check_backlog(None)
        self._check_growth(update)
        try:
            applied = self._integrate(update, FROM_CLIENT)
        except crdt.InvalidUpdate as refused:
            self.refusals.refused(refused.reason)
            raise
        except crdt.EnginePanic as panic:
            self._engine_failed(panic)
            raise Refused(codes.TRY_AGAIN, "the document is being rebuilt; try again") from None
        committed = (self._stored_with(update, None) if applied.update is None
                     else self._share(applied.update, applied.ranges, exclude=None)[1])
        self._released(applied)
        return committed

    def _share(self, produced: bytes, ranges: gate.Ranges, *,
               exclude: Member | None) -> tuple[bytes, asyncio.Future[int]]:
        """What the engine produced from a writer's update (``ranges``, its clocks): to the
        members, the store, the bus."""
        self.stats.updates_applied += 1
        frame = protocol.encode_sync_update(produced)
        self._broadcast(frame, exclude=exclude)
        committed = self._append(produced, exclude, ranges)
        self.bus.publish(self.name, Kind.UPDATE, produced, durable=committed)
        if self.on_changed is not None:
            self.on_changed(self.name, produced, ranges.keys())
        return frame, committed

    def close_members(self, code: int, reason: str) -> None:
        for member in list(self.members):
            member.peer.close(code, reason)

    def _ack(self, member: Member, committed: asyncio.Future[object], frame: bytes) -> None:
        """Echo ``frame`` to ``member`` once ``committed`` resolves, keeping its acks in the
        order its messages arrived."""
        if member.acks is None:
            member.acks = deque()
        member.acks.append((committed, frame))
        committed.add_done_callback(lambda future: self._on_committed(member, future))

    def _on_committed(self, member: Member, committed: asyncio.Future[object]) -> None:
        _retrieve(committed)
        self._release_acks(member)

    def _release_acks(self, member: Member) -> None:
        while member.acks and member.acks[0][0].done():  # None once the member left
            committed, frame = member.acks.popleft()
            if committed.cancelled() or committed.exception() is not None:
                continue  # not durable: no ack; the client keeps it and resends on reconnect
            if member in self.members:
                member.peer.send(frame)

    def _receive_awareness(self, member: Member, payload: bytes) -> None:
        entries = self._check_presence(member, protocol.decode_awareness_payload(payload))
        # Only whoever brought a client's presence may remove it: a stock client relays every
        # removal it hears (or times out by itself), and a hostile one could remove everybody.
        entries = [e for e in entries if not e.is_removal or self._owned_by(member, e.client_id)]
        accepted, appeared = self._merge_presence(entries, owner=member.presence_owner)
        # A member owns the clients it brought into the room, not every state it relays (stock
        # clients re-send everything they hear): its leaving removes only those.
        gone = {e.client_id for e in accepted if e.is_removal}
        if appeared or gone & member.awareness_ids:
            member.awareness_ids = (member.awareness_ids | appeared) - gone
        self._announce_presence(accepted, publish=True, origin=member.client_key)

    def _check_presence(self, member: Member, entries: list[AwarenessEntry]) -> list[AwarenessEntry]:
        """Refuse presence past the limits; put the name the member was admitted with into the
        states it announces for itself (relayed states of others pass as they are)."""
        limits = self.limits
        for entry in entries:
            if (len(entry.state) * 4 > limits.max_presence_state
                    and len(entry.state.encode("utf-8")) > limits.max_presence_state):
                self.stats.presence_states_too_large += 1
                raise Refused(codes.PRESENCE_TOO_LARGE, "presence state larger than "
                              f"{limits.max_presence_state} bytes")
        own = member.awareness_ids
        if member.lease is not None:  # a client without a connection: what its lease holds
            own = own | {cid for cid, state in self.presence.items()
                         if state.owner is member.lease and not state.entry.is_removal}
        fresh = {e.client_id for e in entries if e.client_id not in own and self._is_new_to(e)}
        if len(own) + len(fresh) > limits.max_presence_entries:
            self.stats.presence_entries_refused += 1
            raise Refused(codes.PRESENCE_TOO_LARGE, "one connection may bring at most "
                          f"{limits.max_presence_entries} presence entries")
        name = member.user.get("name")
        if not isinstance(name, str):
            return entries
        return [_with_name(e, name) if not e.is_removal and (e.client_id in fresh
                                                             or self._owned_by(member, e.client_id))
                else e for e in entries]

    def _owned_by(self, member: Member, client_id: int) -> bool:
        state = self.presence.get(client_id)
        return client_id in member.awareness_ids or (
            state is not None and state.owner is member.presence_owner)

    def _is_new_to(self, entry: AwarenessEntry) -> bool:
        """The entry would add a client to the table (or bring a departed one back)."""
        current = self.presence.get(entry.client_id)
        return current is None or (current.entry.is_removal and not entry.is_removal)

    def _merge_presence(self, entries: list[AwarenessEntry], *,
                        owner: Member | Lease | None) -> tuple[list[AwarenessEntry], set[int]]:
        """Apply the y-protocols awareness rule: a newer clock wins; a removal at the same clock
        wins over a live state. A removal is kept (with its clock) so that a stale copy of the
        state relayed late cannot bring the client back. Whoever brought an accepted state owns
        it (``owner``; None for the bus). Returns the entries that changed what people see, and
        the clients that appeared."""
        accepted: list[AwarenessEntry] = []
        appeared: set[int] = set()
        now = time.monotonic()
        for entry in entries:
            current = self.presence.get(entry.client_id)
            if current is not None and not (
                entry.clock > current.entry.clock
                or (entry.clock == current.entry.clock and entry.is_removal
                    and not current.entry.is_removal)
            ):
                continue
            was_live = current is not None and not current.entry.is_removal
            self.presence[entry.client_id] = PresenceState(entry, owner, now)
            if entry.is_removal and not was_live:
                continue  # nobody saw it: remember the clock, tell no one
            if not entry.is_removal and not was_live:
                appeared.add(entry.client_id)
            accepted.append(entry)
        if accepted:
            self._presence_version += 1
        return accepted, appeared

    def live_presence(self) -> list[AwarenessEntry]:
        return [state.entry for state in self.presence.values() if not state.entry.is_removal]

    def _presence_frame(self, *, with_removals: bool = False) -> bytes:
        entries = self.live_presence()
        if with_removals:
            recent = time.monotonic() - REMOVALS_SHOWN
            entries += [state.entry for state in self.presence.values()
                        if state.entry.is_removal and state.heard_at >= recent]
        return protocol.encode_awareness(protocol.encode_awareness_payload(entries))

    # --- messages from other instances ------------------------------------------------------

    def on_bus_message(self, message: BusMessage) -> None:
        """Apply and broadcast locally; never re-published, never stored (the publisher did)."""
        if self._rebuilding is not None:
            if len(self._queued_during_rebuild) < MAX_QUEUED_DURING_REBUILD:
                self._queued_during_rebuild.append(message)
            return
        try:
            if message.kind is Kind.UPDATE:
                self._integrate_elsewhere(message.payload)
            elif message.kind is Kind.GOODBYE:
                self.goodbye(message.payload.decode("ascii", "replace"), publish=False)
            elif message.kind is Kind.AWARENESS:
                entries = protocol.decode_awareness_payload(message.payload)
                accepted, _appeared = self._merge_presence(entries, owner=None)
                self._announce_presence(accepted, publish=False)  # never re-published
            elif message.kind is Kind.DELETED:
                self._deleted_elsewhere()
        except crdt.InvalidUpdate as exc:
            self.refusals.refused(exc.reason)
            if exc.reason == "waiting":  # too much waits already: read what the store has
                self.on_bus_gap()
            else:
                log.warning("room %r: ignoring a bad bus message: %s", self.name, exc)
        except protocol.ProtocolError as exc:
            log.warning("room %r: ignoring a bad bus message: %s", self.name, exc)
        except crdt.EnginePanic as panic:
            self._engine_failed(panic)

    def _deleted_elsewhere(self) -> None:
        if not self.deleted and self.on_deleted is not None:
            self.on_deleted()

    def on_bus_unconfirmed(self, update: bytes) -> None:
        """Another instance relayed this update but never confirmed storing it: store it here."""
        self._append(update, None).add_done_callback(_retrieve)

    def on_bus_gap(self) -> None:
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.create_task(self._catch_up_quietly())

    async def _catch_up_quietly(self) -> int:
        try:
            return await self.catch_up()
        except Exception as exc:
            log.warning("room %r: catch-up from the store failed: %s", self.name, exc)
            return 0

    def expire_presence(self, now: float | None = None) -> None:
        """Drop presence heard from other instances that stopped renewing it (a dead instance),
        and the presence of clients without a connection whose last request is ``presence_hold``
        seconds past."""
        now = time.monotonic() if now is None else now
        stale = [
            AwarenessEntry(cid, state.entry.clock, "null")
            for cid, state in self.presence.items()
            if state.owner is None and not state.entry.is_removal
            and now - state.heard_at > REMOTE_AWARENESS_TIMEOUT
        ]
        removed, _appeared = self._merge_presence(stale, owner=None)
        self._announce_presence(removed, publish=False)  # every instance expires it itself
        for key, lease in list(self.leases.items()):
            if lease.requests == 0 and now - lease.idle_since >= self.presence_hold:
                del self.leases[key]
                self._remove_presence_of(lease)

    # --- fan-out ----------------------------------------------------------------------------

    def _announce_presence(self, entries: list[AwarenessEntry], *, publish: bool,
                           origin: str | None = None) -> None:
        """Tell every local member, the sender included (the stock client drops a socket that
        hears nothing; a client without a connection needs no echo), and with ``publish`` the
        other instances."""
        if not entries:
            return
        payload = protocol.encode_awareness_payload(entries)
        self._broadcast(protocol.encode_awareness(payload), exclude=None, everyone=True,
                        origin=origin)
        if publish:
            self.bus.publish(self.name, Kind.AWARENESS, payload)

    def _broadcast(self, frame: bytes, *, exclude: Member | None, everyone: bool = False,
                   origin: str | None = None) -> None:
        """Queue one encoded frame for every (synced) member but ``exclude`` and the requests
        of the client it came from; the bytes object is shared. The frame is kept in the
        history for clients that are between two requests."""
        if origin is None and exclude is not None:
            origin = exclude.client_key
        if self.leases:  # only clients without a connection read the history
            self.history.append(frame, origin)
        else:
            self.history.skip()
        for member in self.members:
            if member is exclude or not (everyone or member.synced):
                continue
            if origin is not None and member.client_key == origin:
                continue
            member.peer.send(frame)
