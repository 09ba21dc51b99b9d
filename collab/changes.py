"""Change notifications: a host application's ``on_change``/``on_update`` hooks (and webhooks)
are told that a document changed, debounced per document and off the path of every update.

A room reports each change it accepted from a client of this instance (or from the document API
or Python, not one relayed from another instance: that one is notified where it was accepted)
with :meth:`ChangeNotifier.changed`, which only notes it. A document is notified once it has been
quiet for ``debounce`` seconds, and at the latest ``max_delay`` seconds after the first change
not yet notified; what a listener gets is the text as it is when the notification runs (the
final text of the window) and, for listeners that want it, one Yjs update merging the window's
changes. Notifications of one document run one after another, in order; a listener that fails is
logged and counted, never raised into a room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from collab import crdt

log = logging.getLogger("collab.changes")

OnChange = Callable[[str, str], Awaitable[None]]
"""``on_change(name, text)``: the document's text after a window of changes."""
OnUpdate = Callable[[str, bytes], Awaitable[None]]
"""``on_update(name, update)``: one Yjs update with every change of the window."""
ReadText = Callable[[str], Awaitable["str | None"]]
"""The current text of a document; None when it is gone (deleted)."""


EVENTS = ("document.created", "document.changed", "document.deleted", "document.opened",
          "document.closed")
"""What happens to a document: created (its first change), changed (debounced), deleted, opened
(its first client on this instance) and closed (its last client on this instance left)."""


class DocumentEvents:
    """What the rooms report as it happens; every method returns at once."""

    def changed(self, name: str, update: bytes, clients: AbstractSet[int]) -> None:
        """``update`` was accepted; ``clients`` made its structs."""
        raise NotImplementedError

    def happened(self, event: str, name: str) -> None:
        """Any event of :data:`EVENTS` but ``document.changed``."""
        raise NotImplementedError


class AllEvents(DocumentEvents):
    """Several parts told the same events (change notifications, versions), in order."""

    def __init__(self, *parts: DocumentEvents) -> None:
        self.parts = parts

    def changed(self, name: str, update: bytes, clients: AbstractSet[int]) -> None:
        for part in self.parts:
            part.changed(name, update, clients)

    def happened(self, event: str, name: str) -> None:
        for part in self.parts:
            part.happened(event, name)


class Listener:
    """Something told about changed documents."""

    wants_updates = False
    """Whether :meth:`changed` needs the merged update (collecting it costs memory)."""

    async def changed(self, name: str, text: str, update: bytes | None) -> None:
        raise NotImplementedError

    def happened(self, event: str, name: str) -> None:
        """An event other than a change, as it happens; must return at once."""


class Hooks(Listener):
    """A host application's ``on_change`` and ``on_update``."""

    def __init__(self, on_change: OnChange | None, on_update: OnUpdate | None) -> None:
        self.on_change = on_change
        self.on_update = on_update
        self.wants_updates = on_update is not None

    async def changed(self, name: str, text: str, update: bytes | None) -> None:
        if self.on_change is not None:
            await self.on_change(name, text)
        if self.on_update is not None and update is not None:
            await self.on_update(name, update)


@dataclass(slots=True)
class ChangeStats:
    changes: int = 0
    """Changes noted (one per accepted update)."""
    notifications: int = 0
    """Notifications run (one per document and window)."""
    listener_failures: int = 0


@dataclass(slots=True)
class Window:
    """The changes of one document not yet notified (sans-I/O: times are given)."""

    first: float
    last: float
    updates: list[bytes] = field(default_factory=list)

    def due(self, debounce: float, max_delay: float) -> float:
        return min(self.last + debounce, self.first + max_delay)


class ChangeNotifier(DocumentEvents):
    def __init__(self, read_text: ReadText, *, debounce: float = 2.0, max_delay: float = 10.0) -> None:
        self.read_text = read_text
        self.debounce = debounce
        self.max_delay = max_delay
        self.listeners: list[Listener] = []
        self.stats = ChangeStats()
        self._windows: dict[str, Window] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wants_updates = False

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)
        self._wants_updates = any(each.wants_updates for each in self.listeners)

    @property
    def active(self) -> bool:
        return bool(self.listeners)

    def changed(self, name: str, update: bytes, clients: AbstractSet[int]) -> None:
        """Note a change (called by the room for every update it accepted): two assignments
        and, for the first change of a window, one timer."""
        if not self.listeners:
            return
        self.stats.changes += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        window = self._windows.get(name)
        if window is None:
            window = self._windows[name] = Window(now, now)
            self._timers[name] = loop.call_at(window.due(self.debounce, self.max_delay), self._wake, name)
        else:
            window.last = now
        if self._wants_updates:
            window.updates.append(update)

    def happened(self, event: str, name: str) -> None:
        for listener in self.listeners:
            try:
                listener.happened(event, name)
            except Exception:
                self.stats.listener_failures += 1
                log.exception("a listener failed on %s of %r", event, name)

    def _wake(self, name: str) -> None:
        """A window's timer: notify if it is due, or wait again (a change came meanwhile)."""
        window = self._windows.get(name)
        if window is None:
            return
        loop = asyncio.get_running_loop()
        due = window.due(self.debounce, self.max_delay)
        if due > loop.time():
            self._timers[name] = loop.call_at(due, self._wake, name)
            return
        self._start(name)

    def _start(self, name: str) -> None:
        window = self._windows.pop(name)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        previous = self._running.get(name)
        task = asyncio.get_running_loop().create_task(self._notify(name, window, previous),
                                                      name=f"notify:{name}")
        self._running[name] = task
        task.add_done_callback(lambda done: self._running.pop(name, None)
                               if self._running.get(name) is done else None)

    async def _notify(self, name: str, window: Window, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)  # in order, per document
        try:
            text = await self.read_text(name)
        except Exception as exc:
            self.stats.listener_failures += 1
            log.warning("document %r changed, but its text could not be read for the "
                        "notification: %s", name, exc or type(exc).__name__)
            return
        if text is None:
            return  # deleted meanwhile
        update = crdt.merge(window.updates) if window.updates else None
        self.stats.notifications += 1
        for listener in self.listeners:
            try:
                await listener.changed(name, text, update if listener.wants_updates else None)
            except Exception:
                self.stats.listener_failures += 1
                log.exception("a change listener failed for document %r", name)

    async def close(self, timeout: float = 10.0) -> None:
        """Notify every pending window now and wait (bounded) for the notifications: the
        last changes before a shutdown are notified too."""
        for name in list(self._windows):
            self._start(name)
        running = list(self._running.values())
        if running:
            _done, pending = await asyncio.wait(running, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d change notifications did not finish in %g s at shutdown",
                            len(pending), timeout)
