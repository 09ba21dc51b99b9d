"""Versions of documents for people to go back to: one after each burst of editing (once the
document has been quiet for a while), at least one every few minutes while editing goes on, and
named ones on request. They are kept in the store apart from the log and the snapshot (which
compaction rewrites), automatic ones for the retention period, named ones until the document is
deleted, and served by the document API.

Sans-I/O core: :class:`Bursts` says when a version of which document is due and remembers who
edited since its last one. The shell, :class:`Versioner`, hears every change a room of this
instance accepted from its own clients (``Room.on_changed``; each instance versions what its
clients did), ticks, and takes the versions with the store.

Who edited: the people whose presence (awareness) carries the Yjs client ids that made the
inserted content. A change that only deletes carries no client id of its maker, so it names no
one (the version is still taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collab import crdt
from collab.changes import DocumentEvents
from collab.store import Store
from collab.store.base import VersionInfo

if TYPE_CHECKING:
    from collab.rooms import Rooms

log = logging.getLogger("collab.versions")

MAX_LABEL = 200
MAX_AUTHORS = 50
CLOSE_TIMEOUT = 10.0
"""Seconds a stopping server spends keeping the versions still due (a failing store must not
hold up the shutdown)."""


@dataclass(slots=True)
class Burst:
    """Edits of one document since its last version."""

    started: float
    last: float
    authors: dict[str, None] = field(default_factory=dict)
    """Names in the order they first edited (a dict as an ordered set)."""
    clients: set[int] = field(default_factory=set)
    """Yjs client ids already named (their presence is read once per burst)."""
    unnamed: dict[int, int] = field(default_factory=dict)
    """Yjs client id -> the clock of its presence, read and found without a name (read again
    only once it changes)."""


class Bursts:
    """When versions are due. A burst ends ``quiet`` seconds after its last edit; one that goes
    on is cut every ``every`` seconds, so that steady editing still leaves versions behind."""

    def __init__(self, *, quiet: float, every: float) -> None:
        self.quiet = quiet
        self.every = every
        self._bursts: dict[str, Burst] = {}

    def edited(self, name: str, now: float) -> Burst:
        burst = self._bursts.get(name)
        if burst is None:
            burst = self._bursts[name] = Burst(now, now)
        burst.last = now
        return burst

    def due(self, now: float) -> list[str]:
        return [name for name, burst in self._bursts.items()
                if now - burst.last >= self.quiet or now - burst.started >= self.every]

    def take(self, name: str) -> tuple[str, ...]:
        """End the burst of ``name``; returns who edited in it."""
        burst = self._bursts.pop(name, None)
        return tuple(burst.authors)[:MAX_AUTHORS] if burst is not None else ()

    def pending(self) -> list[str]:
        return list(self._bursts)

    def forget(self, name: str) -> None:
        self._bursts.pop(name, None)


def presence_name(state_json: str) -> str | None:
    """``user.name`` of a presence state (the editor's), or None."""
    try:
        state = json.loads(state_json)
    except ValueError:
        return None
    user = state.get("user") if isinstance(state, dict) else None
    name = user.get("name") if isinstance(user, dict) else None
    return name.strip()[:100] or None if isinstance(name, str) else None


class Versioner(DocumentEvents):
    """Takes the versions (see the module docstring); told of changes as the rooms' events."""

    def __init__(self, store: Store, *, quiet: float, every: float, retention: float,
                 rooms: Rooms | None = None) -> None:
        self.rooms = rooms
        """The rooms whose changes it hears (set once they exist: they are told of it)."""
        self.store = store
        self.retention = retention
        self.bursts = Bursts(quiet=quiet, every=every)
        self.tick = min(1.0, max(0.05, min(quiet, every) / 4))
        self.taken = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    # --- the room's hook ------------------------------------------------------------------

    def changed(self, name: str, update: bytes, clients: AbstractSet[int]) -> None:
        """A room accepted ``update`` from one of its clients (or the document API). Called
        inside the room's handling of the update: it must not fail, whatever it finds."""
        try:
            self._note(name, clients)
        except Exception:
            log.exception("versions: a change of %r was not noted", name)

    def happened(self, event: str, name: str) -> None:
        if event == "document.deleted":
            self.bursts.forget(name)

    def _note(self, name: str, clients: AbstractSet[int]) -> None:
        burst = self.bursts.edited(name, time.monotonic())
        room = self.rooms.rooms.get(name) if self.rooms is not None else None
        if room is None:
            return
        for client in clients - burst.clients:
            presence = room.presence.get(client)
            if presence is None or burst.unnamed.get(client) == presence.entry.clock:
                continue  # asked again at its next change
            person = presence_name(presence.entry.state)
            if person is None:
                burst.unnamed[client] = presence.entry.clock
                continue
            burst.clients.add(client)
            burst.authors.setdefault(person, None)

    # --- the shell ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="versions")

    async def close(self) -> None:
        """Take the versions still due (the server stops: the last burst is kept too)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self._take_pending(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("stopping: the versions of %d documents were not kept (the store is slow)",
                        len(self.bursts.pending()))

    async def _take_pending(self) -> None:
        for name in self.bursts.pending():
            await self._take_due(name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            for name in self.bursts.due(time.monotonic()):
                await self._take_due(name)

    async def _take_due(self, name: str) -> None:
        authors = self.bursts.take(name)
        try:
            await self.take(name, authors=authors)
        except Exception as exc:  # the store is failing: the next burst tries again
            self.failures += 1
            log.warning("no version of %r was kept: %s", name, exc)

    async def take(self, name: str, *, kind: str = "auto", label: str = "",
                   authors: Iterable[str] = ()) -> VersionInfo | None:
        """Keep the document as it is now; None when there is no such document (any more)."""
        state = await self._state(name)
        if state is None:
            return None
        now = time.time()
        info = await self.store.add_version(name, state, kind=kind, label=label[:MAX_LABEL],
                                            authors=list(authors), at=now)
        self.taken += 1
        if self.retention > 0:
            await self.store.prune_versions(name, older_than=now - self.retention)
        return info

    async def _state(self, name: str) -> bytes | None:
        """The whole document: the live room's (fresher than the store by a commit window),
        else the store's."""
        room = self.rooms.rooms.get(name) if self.rooms is not None else None
        if room is not None and not room.deleted and not room.doc.damaged:
            return room.doc.full_state()
        stored = await self.store.load(name)
        if stored.deleted or not stored.updates:
            return None
        return crdt.merge(stored.updates)
