"""The storage interface and the machinery every store shares: group commit and compaction.

A document is a compacted snapshot plus an append-only log of updates. A concrete store only
implements a handful of small primitives (``_write_batch``, ``_load``, ``_read_log``,
``_swap_snapshot``); batching, futures, thresholds and the verified compaction live here once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from collab import crdt
from collab.metrics import Histogram, counter

log = logging.getLogger("collab.store")


@dataclass(slots=True)
class StoredDocument:
    """What the store holds for one document: the snapshot (if any) then the log, in order."""

    updates: list[bytes] = field(default_factory=list)
    position: int = 0
    """The highest log position included (0 when the log is empty)."""
    deleted: bool = False
    """The document was deleted: it has no content, and it is not recreated by a client that
    reconnects with a copy (only :meth:`Store.revive` lets the name be used again)."""
    snapshot: bool = False
    """The first update is the compacted snapshot."""
    positions: list[int] = field(default_factory=list)
    """The log position of each update after the snapshot."""

    def describe(self, index: int) -> str:
        """Which stored update ``updates[index]`` is, for people (an operator finds it by this)."""
        if self.snapshot and index == 0:
            return "the snapshot"
        at = index - self.snapshot
        return f"log entry {self.positions[at]}" if at < len(self.positions) else f"update {index}"

    def document(self) -> crdt.Document:
        """The document these updates make, whole: raises :class:`crdt.DamagedDocument` naming
        the first stored update the gate or the engine refuses, rather than a part of it."""
        doc = crdt.Document()
        doc.load(self.updates, whole=self.describe)
        return doc


@dataclass(frozen=True, slots=True)
class Damage:
    """A document found damaged or incomplete by :meth:`Store.check`."""

    name: str
    kind: str
    """``damaged`` (a stored update is refused: it is not served) or ``incomplete`` (stored
    updates wait for changes the store does not have: their edits are not visible)."""
    reason: str


class StoreDamaged(RuntimeError):
    """The store itself fails its check (a damaged file, or a file that is not a collab store):
    it is not opened, so that nothing is served from it as if it were whole."""


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """One entry of a listing."""

    name: str
    size: int
    """Bytes stored: the snapshot plus the update log (compaction shrinks it)."""
    changed_at: float | None
    """When its last update was stored (Unix time); None if stored before this was recorded."""


@dataclass(slots=True)
class LogSlice:
    """What compaction folds: the snapshot as read, and the log entries after it."""

    snapshot: bytes | None
    version: int
    """Changes on every snapshot swap; a swap based on an older version is refused."""
    positions: list[int]
    updates: list[bytes]
    snapshot_position: int = 0
    """The highest log position folded into the snapshot."""
    deleted: bool = False
    """The document carries a tombstone (whatever rows are read with it are left over)."""

    @property
    def everything(self) -> list[bytes]:
        """The snapshot (if any), then the log: what makes up the document, in order."""
        return ([self.snapshot] if self.snapshot is not None else []) + self.updates


@dataclass(slots=True)
class PendingAppend:
    name: str
    update: bytes
    done: asyncio.Future[int]


@dataclass(slots=True)
class StoreStats:
    """What the store did since start, for /metrics."""

    commits: int = counter("group commits (batches written in one transaction)")
    committed_updates: int = counter("updates made durable")
    commit_failures: int = counter("group commits the database refused")
    commit_seconds: Histogram = field(default_factory=lambda: Histogram("time to write one group commit"))
    compactions: int = counter("documents whose log was folded into their snapshot")
    compacted_entries: int = counter("log entries folded into snapshots")
    compaction_failures: int = counter("compactions that failed (the log is kept)")
    collected_compactions: int = counter("compactions that collected deleted content (the log "
                                         "was causally complete; the others merge it)")


class StoreClosed(RuntimeError):
    """An append after the store began closing."""


class Store(ABC):
    """Durable documents. ``append`` never blocks the caller: it returns a future that resolves
    with the update's log position once a group commit has made it durable."""

    def __init__(self, *, commit_window: float = 0.005, compact_threshold: int = 500) -> None:
        self.commit_window = commit_window
        self.compact_threshold = compact_threshold
        self._pending: list[PendingAppend] = []
        self._inflight: list[PendingAppend] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._since_compaction: dict[str, int] = defaultdict(int)
        self._compacting: dict[str, asyncio.Task[bool]] = {}
        # One merge at a time, on one thread: the engine holds the GIL while it works, and many
        # rooms crossing the threshold together would otherwise stall the event loop at once.
        self._compactor = ThreadPoolExecutor(1, thread_name_prefix="compactor")
        self.is_open = False
        self.stats = StoreStats()

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self._open()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self.is_open = True

    async def close(self) -> None:
        """Commit everything accepted so far, wait for running compactions, then close."""
        if self._closing:
            return
        self._closing = True
        await self.flush()
        if self._compacting:
            await asyncio.gather(*self._compacting.values(), return_exceptions=True)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self.is_open = False
        self._compactor.shutdown(wait=True)
        await self._close()

    # --- the interface ----------------------------------------------------------------------

    def append(self, name: str, update: bytes) -> asyncio.Future[int]:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._closing and not self.is_open:
            done.set_exception(StoreClosed("the store is closed"))
            return done
        self._pending.append(PendingAppend(name, update, done))
        self._wakeup.set()
        return done

    async def flush(self) -> None:
        """Wait until every append made before this call is committed (or has failed)."""
        waiting = [p.done for p in self._inflight] + [p.done for p in self._pending]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    @property
    def unstored(self) -> int:
        """Accepted updates not yet durable (waiting for or inside a group commit)."""
        return len(self._pending) + len(self._inflight)

    def committed(self) -> asyncio.Future[Any]:
        """A future that resolves once everything appended so far is committed (and fails if
        any of it failed). Each batch commits whole and in order, so the last entry of the batch
        in flight and of the one waiting stand for all of them."""
        waiting = [batch[-1].done for batch in (self._inflight, self._pending) if batch]
        if not waiting:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return asyncio.gather(*waiting)

    async def load(self, name: str) -> StoredDocument:
        part = await self._read_log(name)
        if part.deleted:
            return StoredDocument(deleted=True)
        return StoredDocument(part.everything, max([part.snapshot_position, *part.positions]),
                              snapshot=part.snapshot is not None, positions=part.positions)

    async def check(self) -> AsyncIterator[tuple[str, Damage | None]]:
        """Load every document and yield ``(name, damage or None)``: one document in memory at
        a time. The store's own check (``quick_check`` for SQLite) ran when it was opened;
        :meth:`check_store` adds the thorough one."""
        for name in await self.names():
            stored = await self.load(name)
            if stored.deleted:
                continue
            try:
                doc = stored.document()
            except crdt.DamagedDocument as exc:
                yield name, Damage(name, "damaged", exc.reason)
                continue
            if doc.waiting:
                yield name, Damage(name, "incomplete", f"{doc.waiting} stored updates wait for "
                                                       "changes the store does not have")
                continue
            yield name, None

    async def check_store(self) -> list[str]:
        """The store's own thorough check: what it found wrong (nothing by default)."""
        return []

    async def read_log(self, name: str) -> LogSlice:
        """The snapshot and the log of ``name`` with their positions and the snapshot's
        version, for a reader that skips what it already applied (a room catching up)."""
        return await self._read_log(name)

    async def delete(self, name: str) -> bool:
        """Delete ``name`` for good: its content goes, and a tombstone stays so that neither a
        reconnecting client nor an instance that still held it brings it back. Appends of it
        made before the call are stored first (then deleted with the rest). Returns whether
        there was a document to delete."""
        await self._settle(name)
        return await self._set_deleted(name, True)

    async def revive(self, name: str) -> bool:
        """Let a deleted name be used again, empty (an explicit import or create does this;
        connecting does not). Whatever arrived for it after the deletion is dropped. Returns
        whether it was deleted (a document that was not is left alone)."""
        await self._settle(name)
        if not (await self._read_log(name)).deleted:
            return False
        return await self._set_deleted(name, False)

    async def list(self, after: str | None = None, limit: int = 100) -> list[DocumentInfo]:
        """Documents in name order, from the first name after ``after``; deleted ones left out."""
        return await self._list(after, limit)

    async def _settle(self, name: str) -> None:
        await self.flush()
        running = self._compacting.get(name)
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)
        self._since_compaction.pop(name, None)

    async def compact(self, name: str) -> bool:
        """Fold the log of ``name`` into its snapshot; one compaction per document at a time."""
        return await asyncio.shield(self._compaction(name))

    def _compaction(self, name: str) -> asyncio.Task[bool]:
        """The running compaction of ``name``, started if there is none."""
        task = self._compacting.get(name)
        if task is None:
            task = asyncio.create_task(self._compact(name), name=f"compact:{name}")
            self._compacting[name] = task
            task.add_done_callback(lambda _t: self._compacting.pop(name, None))
        return task

    async def names(self) -> list[str]:
        """Every stored document name (deleted ones left out), in order."""
        names: list[str] = []
        while page := await self._list(names[-1] if names else None, 1000):
            names.extend(info.name for info in page)
        return names

    # --- primitives each store implements ---------------------------------------------------

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _write_batch(self, batch: list[tuple[str, bytes]]) -> list[int]:
        """Append every (name, update) in one transaction; return their log positions."""

    @abstractmethod
    async def _read_log(self, name: str) -> LogSlice:
        """The snapshot and every log entry of ``name``, read in one consistent snapshot."""

    @abstractmethod
    async def _set_deleted(self, name: str, deleted: bool) -> bool:
        """In one transaction: drop every log entry and the snapshot of ``name``, and set (or
        lift) its tombstone. Returns whether that changed anything a reader could see: content
        dropped on deleting, a tombstone lifted on reviving."""

    @abstractmethod
    async def _list(self, after: str | None, limit: int) -> list[DocumentInfo]:
        """At most ``limit`` documents without a tombstone, names after ``after``, in order."""

    @abstractmethod
    async def _swap_snapshot(self, name: str, expected_version: int, snapshot: bytes,
                             positions: list[int]) -> bool:
        """In one transaction: if the snapshot is still at ``expected_version``, replace it and
        delete exactly the log entries at ``positions``. Returns False (and changes nothing)
        when another compaction got there first."""

    # --- group commit -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            if self.commit_window > 0:
                await asyncio.sleep(self.commit_window)
            self._wakeup.clear()
            self._inflight, self._pending = self._pending, []
            if self._inflight:
                await self._commit(self._inflight)
            self._inflight = []

    async def _commit(self, batch: list[PendingAppend]) -> None:
        started = time.perf_counter()
        try:
            positions = await self._write_batch([(p.name, p.update) for p in batch])
        except Exception as exc:  # the database is down: fail these, keep serving
            self.stats.commit_failures += 1
            log.error("store commit of %d updates failed: %s", len(batch), exc)
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
                    pending.done.exception()  # mark retrieved: the clients still hold the data
            return
        self.stats.commit_seconds.observe(time.perf_counter() - started)
        self.stats.commits += 1
        self.stats.committed_updates += len(batch)
        for pending, position in zip(batch, positions, strict=True):
            if not pending.done.done():
                pending.done.set_result(position)
            self._since_compaction[pending.name] += 1
        for name in {p.name for p in batch}:
            if self._since_compaction[name] >= self._threshold_of(name) and name not in self._compacting:
                self._compaction(name).add_done_callback(_log_compaction_failure)

    # --- compaction -------------------------------------------------------------------------

    def _threshold_of(self, name: str) -> int:
        """The threshold, spread by up to +50% per document so that rooms typing at the same
        pace do not all compact at the same moment."""
        return self.compact_threshold + zlib.crc32(name.encode()) % (self.compact_threshold // 2 + 1)

    async def _compact(self, name: str) -> bool:
        try:
            return await self._fold(name)
        except Exception:
            self.stats.compaction_failures += 1
            raise

    async def _fold(self, name: str) -> bool:
        part = await self._read_log(name)
        if not part.positions or part.deleted:
            self._since_compaction.pop(name, None)
            return False
        inputs = part.everything
        snapshot = await _fold_collected(inputs)
        collected = snapshot is not None
        if snapshot is None:
            loop = asyncio.get_running_loop()
            snapshot = await loop.run_in_executor(self._compactor, _merge_verified, inputs)
        swapped = await self._swap_snapshot(name, part.version, snapshot, part.positions)
        if swapped:
            self.stats.compactions += 1
            self.stats.collected_compactions += collected
            self.stats.compacted_entries += len(part.positions)
            left = self._since_compaction[name] - len(part.positions)
            if left > 0:
                self._since_compaction[name] = left
            else:
                self._since_compaction.pop(name, None)
            log.debug("compacted %r: %d log entries folded", name, len(part.positions))
        return swapped


def _log_compaction_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("compaction failed; the log is kept: %s", task.exception())


FOLD_SLICE_BYTES = 64 * 1024
"""Stored updates folded in one go at most (by size): a fraction of a millisecond of work."""
FOLD_SLICE_SECONDS = 0.002
"""The event loop is given back at least this often while a compaction folds."""


async def _fold_collected(inputs: list[bytes]) -> bytes | None:
    """Fold the updates through a document, which collects deleted content (Yjs garbage
    collection: a deleted item keeps its id, origins and length, not its content), and encode
    it. Only when the log is causally complete: None when something would wait for changes the
    store does not have (a fold would leave it out; the verified merge keeps it). A stored
    update that the gate or the engine refuses is an error: compaction never drops one.

    On the event loop, in slices of a few updates, yielding every couple of milliseconds: on a
    thread, the engine and the gate would hold the GIL in 5 ms turns against the event loop's
    every wake-up (edits then waited for hundreds of milliseconds)."""
    doc = crdt.Document()
    given_back = time.perf_counter()
    start = 0
    while start < len(inputs):
        end, size = start + 1, len(inputs[start])
        while end < len(inputs) and size + len(inputs[end]) <= FOLD_SLICE_BYTES:
            size += len(inputs[end])
            end += 1
        errors = doc.load(inputs[start:end])
        if errors:
            raise RuntimeError(f"a stored update is refused ({errors[0]}); the log is kept as it is")
        start = end
        if time.perf_counter() - given_back > FOLD_SLICE_SECONDS:
            await asyncio.sleep(0)
            given_back = time.perf_counter()
    if doc.waiting:
        return None
    snapshot = doc.full_state()
    # What is swapped in must give back this document: the same clocks and the same text.
    check = crdt.Document()
    if check.load([snapshot]) or check.waiting or check.clocks() != doc.clocks() or (
            check.text() != doc.text()):
        raise RuntimeError("the collected snapshot does not give back the document it encodes")
    return snapshot


def _merge_verified(inputs: list[bytes]) -> bytes:
    """Merge the updates themselves, then prove the result holds every input. Not through a
    document: across instances the log is not in causal order, and a document would drop an
    update whose dependencies are not stored yet (it stays pending, and ``full_state`` leaves
    it out, while ``contains_all`` cannot see the loss)."""
    snapshot = crdt.merge(inputs)
    if not crdt.contains_all(snapshot, inputs):
        raise RuntimeError("merged snapshot does not contain every update it replaces")
    return snapshot
