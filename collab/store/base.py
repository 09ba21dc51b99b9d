"""The storage interface and the machinery every store shares: group commit and compaction.

A document is a compacted snapshot plus an append-only log of updates. A concrete store only
implements a handful of small primitives (``_write_batch``, ``_load``, ``_read_log``,
``_swap_snapshot``); batching, futures, thresholds and the verified compaction live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from collab import crdt
from collab.metrics import Histogram, counter
from collab.store.lane import Lane

log = logging.getLogger("collab.store")

MAX_UNSTORED_UPDATES = 100_000
MAX_UNSTORED_BYTES = 64 * 1024 * 1024
"""Accepted updates the store keeps while it cannot write them, at most (the settings
``store_backlog_updates`` and ``store_backlog_bytes``); past either, rooms refuse writers."""

RETRY_FIRST = 0.05
RETRY_MAX = 2.0
"""Seconds between attempts to write what the store refused: doubling from the first to the
last, so that a database coming back is used within two seconds and a failing one is not
hammered."""

MAX_BATCH_UPDATES = 5_000
MAX_BATCH_BYTES = 4 * 1024 * 1024
"""One transaction writes at most this much of a backlog: an outage's backlog goes out in
order, in parts a nearly full disk can still take."""

KEPT_FOLDS_BYTES = 4 * 1024 * 1024
"""Snapshot bytes whose checked documents compaction keeps for the next fold (the setting
``compact_cache_bytes``); a kept document takes about ten times its snapshot in memory."""

COMPACT_LOG_RATIO = 0.5
"""A document's log is folded once it also holds this fraction of its snapshot's bytes (the
setting ``compact_log_ratio``): a fold reads and checks the whole document, so a fixed count of
updates made it cost a large document its size again every few hundred edits."""

KNOWN_SNAPSHOTS = 65_536
"""Documents whose snapshot size the store remembers, at most (past it, it forgets them all:
they compact by the count alone until their next fold tells it again)."""

LAST_ATTEMPT_GRACE = 5.0
"""Seconds a closing store waits for the write attempt in progress when its time is up."""


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

    def document(self, into: crdt.Document | None = None, *, live: bool = True) -> crdt.Document:
        """The document these updates make, whole: raises :class:`crdt.DamagedDocument` naming
        the first stored update the gate or the engine refuses, rather than a part of it.
        ``into``: an empty document to load them into (left damaged on that error); else a
        new one, ``live=False`` for one that is only read (loaded in about half the time)."""
        doc = into if into is not None else crdt.Document(live=live)
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


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One kept version of a document (see :meth:`Store.add_version`)."""

    id: int
    """Increasing with every version the store keeps (of any document)."""
    created_at: float
    """When it was taken (Unix time)."""
    kind: str
    """``"auto"`` (taken after a burst of editing; subject to retention) or ``"named"`` (asked
    for, with a label; kept until the document is deleted)."""
    label: str
    authors: tuple[str, ...]
    """The names of the people whose edits it was taken after (may be empty)."""
    size: int
    """Bytes of its Yjs state."""


VERSION_KINDS = ("auto", "named")


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


class KeptFolds:
    """The document each recent compaction checked its snapshot with, kept to start the next
    fold of that document from: the fold then reads only the log, not the whole snapshot
    again through the gate (the larger part of a compaction once a document has grown).

    A kept document stands for the exact bytes it was loaded from; it is used only when the
    store still holds those bytes as the snapshot (compared in full, so a snapshot another
    instance swapped in, or a document deleted and written again, is never mistaken for it).
    Least recently compacted first out, bounded by the bytes of the snapshots kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[str, tuple[bytes, crdt.Document]] = OrderedDict()
        self._bytes = 0

    def take(self, name: str, snapshot: bytes | None) -> crdt.Document | None:
        """The document loaded from ``snapshot``, if kept; it is no longer kept (a fold
        changes it, and a failed fold must not leave it half changed)."""
        kept = self.drop(name)
        if kept is None:
            return None
        data, doc = kept
        return doc if snapshot is not None and data == snapshot and not doc.damaged else None

    def keep(self, name: str, snapshot: bytes, doc: crdt.Document) -> None:
        self.drop(name)
        if len(snapshot) > self.max_bytes:
            return
        self._kept[name] = (snapshot, doc)
        self._bytes += len(snapshot)
        while self._bytes > self.max_bytes:
            _name, (data, _doc) = self._kept.popitem(last=False)
            self._bytes -= len(data)

    def drop(self, name: str) -> tuple[bytes, crdt.Document] | None:
        """Keep nothing for ``name``; returns what was kept."""
        kept = self._kept.pop(name, None)
        if kept is not None:
            self._bytes -= len(kept[0])
        return kept

    def clear(self) -> None:
        self._kept.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)


@dataclass(slots=True)
class LogTally:
    """What this store appended to one document's log since its last fold."""

    updates: int = 0
    bytes: int = 0


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
    commit_failures: int = counter("group commit attempts the database refused (each is retried)")
    failure_episodes: int = counter("times the store began refusing commits (logged once each)")
    updates_not_stored: int = counter("accepted updates the store gave up on when it closed")
    commit_seconds: Histogram = field(default_factory=lambda: Histogram("time to write one group commit"))
    compactions: int = counter("documents whose log was folded into their snapshot")
    compacted_entries: int = counter("log entries folded into snapshots")
    compaction_failures: int = counter("compactions that failed (the log is kept)")
    collected_compactions: int = counter("compactions that collected deleted content (the log "
                                         "was causally complete; the others merge it)")
    compactions_from_kept: int = counter("compactions that started from the document the last "
                                         "one checked, reading only the log")


class StoreClosed(RuntimeError):
    """An append after the store began closing."""


class NotStored(RuntimeError):
    """The store closed before the database took this update (it kept refusing it)."""


class Store(ABC):
    """Durable documents. ``append`` never blocks the caller: it returns a future that resolves
    with the update's log position once a group commit has made it durable.

    A commit the database refuses loses nothing: its updates stay at the head of the queue and
    are written again, with backoff, until the database takes them, before anything appended
    after them (so the log never has a gap that would keep later updates from loading). Their
    futures resolve only then; they fail only if the store closes first (:class:`NotStored`).
    While the database refuses, :attr:`failing` holds its error and the queue is bounded:
    :attr:`backlog_full` tells writers to stop sending."""

    def __init__(self, *, commit_window: float = 0.005, compact_threshold: int = 500,
                 max_unstored_updates: int = MAX_UNSTORED_UPDATES,
                 max_unstored_bytes: int = MAX_UNSTORED_BYTES, retry_max: float = RETRY_MAX,
                 kept_fold_bytes: int = KEPT_FOLDS_BYTES,
                 compact_log_ratio: float = COMPACT_LOG_RATIO) -> None:
        self.commit_window = commit_window
        self.compact_threshold = compact_threshold
        self.compact_log_ratio = compact_log_ratio
        self.max_unstored_updates = max_unstored_updates
        self.max_unstored_bytes = max_unstored_bytes
        self.retry_max = retry_max
        self._queue: deque[PendingAppend] = deque()
        """Accepted and not yet durable, in order; the head is being written (or retried)."""
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._retry_now = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the store was opened on (``asyncio.get_running_loop`` makes a system call
        per call on Python 3.11, once per append otherwise)."""
        self._closing = False
        self._giving_up = False
        self.failing: Exception | None = None
        """The database's error while it refuses commits (None while it takes them)."""
        self._failing_since = 0.0
        self.not_stored = 0
        """Accepted updates given up on when the store closed (0 after a clean close)."""
        self._unfolded: defaultdict[str, LogTally] = defaultdict(LogTally)
        self._snapshot_bytes: dict[str, int] = {}
        """The size of each document's snapshot, where known (loaded or folded here)."""
        self._compacting: dict[str, asyncio.Task[bool]] = {}
        self._kept_folds = KeptFolds(kept_fold_bytes)
        # One merge at a time, on one thread: the engine holds the GIL while it works, and many
        # rooms crossing the threshold together would otherwise stall the event loop at once.
        self._compactor = Lane("compactor")
        self.is_open = False
        self.stats = StoreStats()

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        await self._open()
        self._loop = asyncio.get_running_loop()
        self._compactor.start(self._loop)
        self._writer = self._loop.create_task(self._write_loop(), name="store-writer")
        self.is_open = True

    async def close(self, timeout: float | None = 10.0) -> int:
        """Commit everything accepted so far (while the database refuses it, for at most
        ``timeout`` seconds of retrying), wait for running compactions, then close. Returns how
        many accepted updates it could not store; their futures fail with :class:`NotStored`."""
        if self._closing:
            return self.not_stored
        self._closing = True
        self._retry_now.set()  # a retry waiting out its backoff tries once more at once
        await self._wait_stored(list(self._queue), timeout)
        if self._compacting:
            await asyncio.gather(*self._compacting.values(), return_exceptions=True)
        await self._stop_writer()
        self.is_open = False
        self._compactor.stop()
        self._kept_folds.clear()
        await self._close()
        return self.not_stored

    async def _stop_writer(self) -> None:
        """Let the writer finish the attempt in progress (bounded), then fail what is left."""
        self._giving_up = True
        self._wakeup.set()
        self._retry_now.set()
        writer = self._writer
        if writer is not None:
            _done, running = await asyncio.wait([writer], timeout=LAST_ATTEMPT_GRACE)
            if running:
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        left, self._queue = list(self._queue), deque()
        self._queued_bytes = 0
        for pending in left:
            if not pending.done.done():
                pending.done.set_exception(NotStored(
                    f"the store closed before the database took it: {self.failing}"))
                pending.done.exception()  # retrieved: the count is reported instead
        self.not_stored = len(left)
        self.stats.updates_not_stored += len(left)

    # --- the interface ----------------------------------------------------------------------

    def append(self, name: str, update: bytes) -> asyncio.Future[int]:
        done: asyncio.Future[int] = (self._loop or asyncio.get_running_loop()).create_future()
        if self._closing and not self.is_open:
            done.set_exception(StoreClosed("the store is closed"))
            return done
        self._queue.append(PendingAppend(name, update, done))
        self._queued_bytes += len(update)
        self._wakeup.set()
        return done

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every append made before this call is committed (while the database
        refuses them, that is until it takes them, or ``timeout``). Returns whether they are."""
        return await self._wait_stored(list(self._queue), timeout)

    @staticmethod
    async def _wait_stored(entries: list[PendingAppend], timeout: float | None) -> bool:
        waiting = [p.done for p in entries if not p.done.done()]
        if waiting:  # asyncio.wait, not wait_for(gather): a timeout must not cancel the appends
            _done, running = await asyncio.wait(waiting, timeout=timeout)
            return not running
        return True

    @property
    def unstored(self) -> int:
        """Accepted updates not yet durable (waiting for, inside, or refused by a commit)."""
        return len(self._queue)

    @property
    def unstored_bytes(self) -> int:
        return self._queued_bytes

    @property
    def backlog_full(self) -> bool:
        """The store keeps as many unstored updates as it may: take no more from writers."""
        return (len(self._queue) >= self.max_unstored_updates
                or self._queued_bytes >= self.max_unstored_bytes)

    async def load(self, name: str) -> StoredDocument:
        part = await self._read_log(name)
        if part.deleted:
            return StoredDocument(deleted=True)
        self._note_snapshot(name, part.snapshot)
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
                doc = stored.document(live=False)
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
        self._kept_folds.drop(name)
        deleted = await self._set_deleted(name, True)
        await self._drop_versions(name)
        return deleted

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

    # --- versions: kept apart from the log and the snapshot, which compaction rewrites -------

    async def add_version(self, name: str, state: bytes, *, kind: str = "auto", label: str = "",
                          authors: tuple[str, ...] | list[str] = (),
                          at: float | None = None) -> VersionInfo:
        """Keep ``state`` (the whole document as one Yjs update) as a version of ``name``."""
        if kind not in VERSION_KINDS:
            raise ValueError(f"a version is auto or named, not {kind!r}")
        created_at = time.time() if at is None else at
        version_id = await self._add_version(name, created_at, kind, label, list(authors), state)
        return VersionInfo(version_id, created_at, kind, label, tuple(authors), len(state))

    async def versions(self, name: str, *, before: int | None = None,
                       limit: int = 100) -> list[VersionInfo]:
        """The versions of ``name``, newest first, from the first one older than ``before``."""
        return await self._list_versions(name, before, limit)

    async def version(self, name: str, version_id: int) -> tuple[VersionInfo, bytes] | None:
        """One version of ``name`` and its state; None if there is no such version of it."""
        return await self._read_version(name, version_id)

    async def prune_versions(self, name: str, *, older_than: float, keep: int = 1) -> int:
        """Drop the automatic versions of ``name`` taken before ``older_than``, except the
        newest ``keep`` versions; named versions stay. Returns how many went."""
        return await self._prune_versions(name, older_than, keep)

    async def _settle(self, name: str) -> None:
        await self.flush()
        running = self._compacting.get(name)
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)
        self._forget_log(name)

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
    async def _add_version(self, name: str, created_at: float, kind: str, label: str,
                           authors: list[str], state: bytes) -> int:
        """Store one version; return its id (greater than every id handed out before)."""

    @abstractmethod
    async def _list_versions(self, name: str, before: int | None, limit: int) -> list[VersionInfo]:
        """At most ``limit`` versions of ``name`` with ids below ``before`` (all if None),
        newest first, without their states."""

    @abstractmethod
    async def _read_version(self, name: str, version_id: int) -> tuple[VersionInfo, bytes] | None:
        """The version ``version_id`` of ``name`` with its state, or None."""

    @abstractmethod
    async def _prune_versions(self, name: str, older_than: float, keep: int) -> int:
        """Delete the ``auto`` versions of ``name`` created before ``older_than`` that are not
        among its newest ``keep`` versions; return how many."""

    @abstractmethod
    async def _drop_versions(self, name: str) -> None:
        """Delete every version of ``name`` (the document was deleted)."""

    @abstractmethod
    async def _swap_snapshot(self, name: str, expected_version: int, snapshot: bytes,
                             positions: list[int]) -> bool:
        """In one transaction: if the snapshot is still at ``expected_version``, replace it and
        drop exactly the log entries at ``positions`` (no read returns them again; a store may
        delete them later). Returns False (and changes nothing) when another compaction got
        there first."""

    # --- group commit -----------------------------------------------------------------------

    async def _write_loop(self) -> None:
        delay = RETRY_FIRST
        while not self._giving_up:
            await self._wakeup.wait()
            if self.commit_window > 0 and self.failing is None and not self._closing:
                await asyncio.sleep(self.commit_window)
            self._wakeup.clear()
            while self._queue and not self._giving_up:
                if await self._commit(self._head()):
                    delay = RETRY_FIRST
                    if self._queue and not self._backlogged():
                        # What arrived during the commit waits out a window too: under a
                        # steady stream, one commit per window instead of one per arrival.
                        self._wakeup.set()
                        break
                    continue
                # Refused: the same head again after the backoff (or at once when closing).
                self._retry_now.clear()
                if not self._giving_up:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._retry_now.wait(), delay)
                delay = min(delay * 2, self.retry_max)

    def _backlogged(self) -> bool:
        """More waits than one transaction writes: the next commit starts at once."""
        return len(self._queue) >= MAX_BATCH_UPDATES or self._queued_bytes >= MAX_BATCH_BYTES

    def _head(self) -> list[PendingAppend]:
        """The oldest unstored appends, as many as one transaction writes (at least one)."""
        batch: list[PendingAppend] = []
        size = 0
        for pending in self._queue:
            if batch and (len(batch) >= MAX_BATCH_UPDATES or size + len(pending.update) > MAX_BATCH_BYTES):
                break
            batch.append(pending)
            size += len(pending.update)
        return batch

    async def _commit(self, batch: list[PendingAppend]) -> bool:
        """Write ``batch`` (the head of the queue); on success it leaves the queue."""
        started = time.perf_counter()
        try:
            positions = await self._write_batch([(p.name, p.update) for p in batch])
        except Exception as exc:  # the database refuses: keep the batch, try again later
            self._refused(exc)
            return False
        for _ in batch:
            self._queued_bytes -= len(self._queue.popleft().update)
        if self.failing is not None:
            log.warning("the store takes commits again after %.1f s of refusing them (%d "
                        "updates still to write)", time.monotonic() - self._failing_since,
                        len(self._queue))
            self.failing = None
        self.stats.commit_seconds.observe(time.perf_counter() - started)
        self.stats.commits += 1
        self.stats.committed_updates += len(batch)
        for pending, position in zip(batch, positions, strict=True):
            if not pending.done.done():
                pending.done.set_result(position)
            tally = self._unfolded[pending.name]
            tally.updates += 1
            tally.bytes += len(pending.update)
        for name in {p.name for p in batch}:
            if self._due(name) and name not in self._compacting:
                self._compaction(name).add_done_callback(_log_compaction_failure)
        return True

    def _refused(self, exc: Exception) -> None:
        """Count a refused commit; the first of an episode is logged with the real error."""
        self.stats.commit_failures += 1
        if self.failing is None:
            self.stats.failure_episodes += 1
            self._failing_since = time.monotonic()
            log.error("the store refuses commits: %s; keeping %d accepted updates and retrying "
                      "until it takes them", _describe(exc), len(self._queue))
        else:
            log.debug("the store still refuses commits: %s", _describe(exc))
        self.failing = exc

    # --- compaction -------------------------------------------------------------------------

    def _due(self, name: str) -> bool:
        """Past the document's threshold of updates, and its log at least
        :attr:`compact_log_ratio` of its snapshot: each fold then reads some fixed share of the
        document anew, whatever its size, instead of all of it every few hundred updates."""
        tally = self._unfolded[name]
        return (tally.updates >= self._threshold_of(name)
                and tally.bytes >= self.compact_log_ratio * self._snapshot_bytes.get(name, 0))

    def _note_snapshot(self, name: str, snapshot: bytes | None) -> None:
        if len(self._snapshot_bytes) >= KNOWN_SNAPSHOTS:
            self._snapshot_bytes.clear()
        self._snapshot_bytes[name] = len(snapshot) if snapshot is not None else 0

    def _forget_log(self, name: str) -> None:
        self._unfolded.pop(name, None)
        self._snapshot_bytes.pop(name, None)

    def _count_folded(self, name: str, updates: list[bytes], snapshot: bytes) -> None:
        """Take what a fold swapped in out of the counts since the last one (appends committed
        meanwhile stay counted)."""
        self._note_snapshot(name, snapshot)
        tally = self._unfolded.get(name)
        if tally is None:
            return
        tally.updates -= len(updates)
        tally.bytes = max(tally.bytes - sum(map(len, updates)), 0)
        if tally.updates <= 0:
            del self._unfolded[name]

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
        if part.deleted:
            self._forget_log(name)
            return False
        if not part.positions:
            self._unfolded.pop(name, None)
            self._note_snapshot(name, part.snapshot)
            return False
        base = self._kept_folds.take(name, part.snapshot)
        folded = await _fold_collected(part.updates if base is not None else part.everything, base)
        collected = folded is not None
        if folded is None:
            everything = part.everything
            snapshot = await self._compactor.run(lambda: _merge_verified(everything))
        else:
            snapshot, checked = folded
        swapped = await self._swap_snapshot(name, part.version, snapshot, part.positions)
        if swapped:
            if folded is not None:
                self._kept_folds.keep(name, snapshot, checked)
            self.stats.compactions += 1
            self.stats.collected_compactions += collected
            self.stats.compactions_from_kept += base is not None
            self.stats.compacted_entries += len(part.positions)
            self._count_folded(name, part.updates, snapshot)
            log.debug("compacted %r: %d log entries folded", name, len(part.positions))
        return swapped


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _log_compaction_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("compaction failed; the log is kept: %s", task.exception())


FOLD_SLICE_BYTES = 64 * 1024
FOLD_SLICE_UPDATES = 32
"""Stored updates folded in one go at most (by size and by count): a fraction of a millisecond
of work. A typed character is an update of a few dozen bytes that costs the gate and the engine
about 10 µs, so a slice bounded by size alone held a whole log of 500 in one go (5 ms and more,
the loop stopped for it)."""
FOLD_SLICE_SECONDS = 0.002
"""The event loop is given back at least this often while a compaction folds."""


async def _fold_collected(inputs: list[bytes], base: crdt.Document | None = None
                          ) -> tuple[bytes, crdt.Document] | None:
    """Fold the updates through a document, which collects deleted content (Yjs garbage
    collection: a deleted item keeps its id, origins and length, not its content), and encode
    it; ``base``: a document holding what comes before ``inputs`` (the snapshot they follow),
    folded into. Returns the snapshot and the document that checked it, loaded from it alone.
    Only when the log is causally complete: None when something would wait for changes the
    store does not have (a fold would leave it out; the verified merge keeps it). A stored
    update that the gate or the engine refuses is an error: compaction never drops one.

    On the event loop, in slices of a few updates, yielding every couple of milliseconds: on a
    thread, the engine and the gate would hold the GIL in 5 ms turns against the event loop's
    every wake-up (edits then waited for hundreds of milliseconds)."""
    doc = base if base is not None else crdt.Document(live=False)
    given_back = time.perf_counter()
    start = 0
    while start < len(inputs):
        end, size = start + 1, len(inputs[start])
        while (end < len(inputs) and end - start < FOLD_SLICE_UPDATES
               and size + len(inputs[end]) <= FOLD_SLICE_BYTES):
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
    await asyncio.sleep(0)  # encoding and checking the snapshot are a slice each
    snapshot = doc.full_state()
    await asyncio.sleep(0)
    # What is swapped in must give back this document: the same clocks and the same text.
    check = crdt.Document(live=False)
    if check.load([snapshot]) or check.waiting or check.clocks() != doc.clocks() or (
            check.text() != doc.text()):
        raise RuntimeError("the collected snapshot does not give back the document it encodes")
    return snapshot, check


def _merge_verified(inputs: list[bytes]) -> bytes:
    """Merge the updates themselves, then prove the result holds every input. Not through a
    document: across instances the log is not in causal order, and a document would drop an
    update whose dependencies are not stored yet (it stays pending, and ``full_state`` leaves
    it out, while ``contains_all`` cannot see the loss)."""
    snapshot = crdt.merge(inputs)
    if not crdt.contains_all(snapshot, inputs):
        raise RuntimeError("merged snapshot does not contain every update it replaces")
    return snapshot
