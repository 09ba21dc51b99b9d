"""SQLite store: the embedded default. WAL mode, one writer thread, one reader thread.

SQLite calls block, so they run on two threads of their own (each a :class:`Lane`): the writer
(group commits and snapshot swaps, serialised as SQLite requires) and the reader (loads and
compaction reads, which WAL lets run beside a write). The event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from collab.store.base import DocumentInfo, LogSlice, Store, StoreDamaged, VersionInfo
from collab.store.lane import Lane

log = logging.getLogger("collab.store.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    doc  TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_by_doc ON updates (doc, seq);
CREATE TABLE IF NOT EXISTS snapshots (
    doc      TEXT PRIMARY KEY,
    data     BLOB NOT NULL,
    position INTEGER NOT NULL,
    version  INTEGER NOT NULL
);
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE IF NOT EXISTS documents (
    doc        TEXT PRIMARY KEY,
    changed_at REAL,
    deleted_at REAL
);
INSERT OR IGNORE INTO documents (doc) SELECT doc FROM snapshots UNION SELECT doc FROM updates;
"""),
]
VERSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    doc        TEXT NOT NULL,
    created_at REAL NOT NULL,
    kind       TEXT NOT NULL,
    label      TEXT NOT NULL,
    authors    TEXT NOT NULL,
    data       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_by_doc ON versions (doc, id);
"""
"""Versions of documents, kept apart from the log and the snapshots (which compaction rewrites).
Made when missing on every open (a table of its own: nothing else reads or changes it), so it
needs no schema version of its own; an older release leaves it alone."""

"""(user_version, script): what turns an older store into this release's, each run once and
recorded in SQLite's ``user_version``. Additive only, so an older release can still open it."""


SWEEP_DELAY = 5.0
"""Seconds the log rows a compaction folded wait before they are deleted, with those of every
other document folded meanwhile, in one transaction. The rows of documents edited together
interleave in the log, so deleting one document's rows rewrites most pages of the log's recent
end; a sweep for many documents writes each page once. Reads skip folded rows meanwhile."""

COLUMNS = {"updates": {"seq", "doc", "data"}, "snapshots": {"doc", "data", "position", "version"}}
"""The tables (and their columns) that make a file a collab store, of any release."""


def check_file(path: Path) -> None:
    """Refuse an existing file that SQLite finds damaged (``quick_check``: every page and
    record is well-formed) or that is not a collab store (a 0-byte file, another program's
    database). Reads only: nothing is written to a file that is refused."""
    size = path.stat().st_size
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreDamaged(f"the file cannot be opened: {exc}") from exc
    try:
        try:
            problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(20)")]
            tables = {str(row[0]) for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            columns = {table: {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
                       for table in COLUMNS if table in tables}
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise StoreDamaged(f"the file is not an SQLite database ({exc}); name another "
                                   "file (only a missing file is created)") from exc
            raise StoreDamaged(f"the file is damaged: SQLite cannot read it ({exc}); restore it "
                               "from a backup") from exc
    finally:
        db.close()
    if problems != ["ok"]:
        first = " ".join(problems[0].split())
        raise StoreDamaged(f"the file is damaged: SQLite's quick_check reports "
                           f"{len(problems)}{'+' if len(problems) >= 20 else ''} problems, the first: "
                           f"{first}; restore it from a backup (collab db check lists what it can read)")
    if not tables:
        raise StoreDamaged(f"the file is not a collab store: it is empty ({size} bytes); move it "
                           "away (only a missing file is created)")
    missing = [f"{table}({', '.join(sorted(wanted - columns.get(table, set())))})"
               if table in columns else table
               for table, wanted in COLUMNS.items() if not wanted <= columns.get(table, set())]
    if missing:
        others = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreDamaged(f"the file is not a collab store: it lacks {', '.join(missing)} (its "
                           f"tables: {others}); name another file")


def create_file(path: Path) -> None:
    """Create an empty store at ``path`` whole or not at all: built beside it, then linked into
    place only if nothing is there yet (so that a crash never leaves a half-made file that the
    next start would refuse, and two processes starting at once never replace each other's)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.new")
    db = sqlite3.connect(partial, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; COMMIT;")
        migrate(db)
    finally:
        db.close()
    try:
        os.link(partial, path)
    except FileExistsError:
        pass  # another process made it first: that one is checked like any existing file
    except OSError:  # no hard links on this filesystem
        if not path.exists():
            os.replace(partial, path)
    finally:
        for leftover in (partial, partial.with_name(partial.name + "-wal"),
                         partial.with_name(partial.name + "-shm")):
            leftover.unlink(missing_ok=True)


def migrate(db: sqlite3.Connection) -> None:
    current = db.execute("PRAGMA user_version").fetchone()[0]
    for version, script in MIGRATIONS:
        if version > current:
            db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {version}; COMMIT;")


def sweep_leftovers(db: sqlite3.Connection) -> None:
    """Delete log rows that a snapshot already holds (folded by a run that stopped before its
    sweep, or by a release that deleted them at once: then there are none): a look at each
    snapshotted document's first rows, through the log's index."""
    with writing(db):
        db.execute("DELETE FROM updates WHERE seq IN (SELECT u.seq FROM snapshots s "
                   "JOIN updates u ON u.doc = s.doc AND u.seq <= s.position)")


@contextlib.contextmanager
def writing(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``): committed when the block ends, unless the
    block ended it itself (a ``ROLLBACK`` of a change it decided against); rolled back on an
    error, which is raised as SQLite reported it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        if db.in_transaction:
            db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


def rollback(db: sqlite3.Connection) -> None:
    """End a failed transaction without hiding why it failed: after some errors ("database or
    disk is full", I/O errors) SQLite has already rolled it back, and a ROLLBACK then fails with
    "no transaction is active", which would replace the real error."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("rollback after a failed transaction failed too: %s", exc)


class SQLiteStore(Store):
    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)
        self._write_lane = Lane("sqlite-writer")
        self._read_lane = Lane("sqlite-reader")
        self._write_db: sqlite3.Connection | None = None
        self._read_db: sqlite3.Connection | None = None
        self._folded: dict[str, int] = {}
        """Documents whose log rows at or below a position were folded into their snapshot and
        wait for the sweep."""
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweeping: asyncio.Future[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: a process crash loses no commit
        return db

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def open_writer() -> None:
            if not self.path.exists():
                create_file(self.path)
            check_file(self.path)
            self._write_db = self._connect()
            self._write_db.executescript(SCHEMA)
            migrate(self._write_db)
            self._write_db.executescript(VERSIONS_SCHEMA)
            sweep_leftovers(self._write_db)

        def open_reader() -> None:
            self._read_db = self._connect()

        loop = asyncio.get_running_loop()
        self._write_lane.start(loop)
        self._read_lane.start(loop)
        try:
            await self._write_lane.run(open_writer)
            await self._read_lane.run(open_reader)
        except BaseException:  # a damaged or foreign file: no thread is left waiting
            self._write_lane.stop()
            self._read_lane.stop()
            raise

    async def _close(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._sweeping is not None:
            await asyncio.gather(self._sweeping, return_exceptions=True)
        await self._sweep()

        def close(db: sqlite3.Connection | None) -> Callable[[], None]:
            return lambda: db.close() if db is not None else None

        await self._read_lane.run(close(self._read_db))
        await self._write_lane.run(close(self._write_db))
        self._write_lane.stop()
        self._read_lane.stop()

    async def check_store(self) -> list[str]:
        """SQLite's ``integrity_check``: ``quick_check`` (run at open) and the indexes too."""
        def check() -> list[str]:
            db = self._read_db
            assert db is not None
            rows = [" ".join(str(row[0]).split()) for row in db.execute("PRAGMA integrity_check(20)")]
            return [] if rows == ["ok"] else rows

        return await self._read_lane.run(check)

    async def _write_batch(self, batch: list[tuple[str, bytes]]) -> list[int]:
        now = time.time()

        def write() -> list[int]:
            db = self._write_db
            assert db is not None
            with writing(db):
                db.executemany("INSERT INTO updates (doc, data) VALUES (?, ?)", batch)
                last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
                db.executemany(
                    "INSERT INTO documents (doc, changed_at) VALUES (?, ?) "
                    "ON CONFLICT (doc) DO UPDATE SET changed_at = excluded.changed_at",
                    [(name, now) for name in {name for name, _ in batch}])
            # AUTOINCREMENT inside one write transaction hands out consecutive positions.
            return list(range(last - len(batch) + 1, last + 1))

        return await self._write_lane.run(write)

    async def _read_log(self, name: str) -> LogSlice:
        def read() -> LogSlice:
            db = self._read_db
            assert db is not None
            db.execute("BEGIN")
            try:
                row = db.execute("SELECT data, version, position FROM snapshots WHERE doc = ?",
                                 (name,)).fetchone()
                rows = db.execute("SELECT seq, data FROM updates WHERE doc = ? AND seq > ? ORDER BY seq",
                                  (name, row[2] if row else 0)).fetchall()
                deleted = db.execute("SELECT 1 FROM documents WHERE doc = ? AND deleted_at IS NOT NULL",
                                     (name,)).fetchone() is not None
            finally:
                db.execute("COMMIT")
            return LogSlice(
                snapshot=row[0] if row else None,
                version=row[1] if row else 0,
                positions=[seq for seq, _ in rows],
                updates=[data for _, data in rows],
                snapshot_position=row[2] if row else 0,
                deleted=deleted,
            )

        return await self._read_lane.run(read)


    async def _swap_snapshot(self, name: str, expected_version: int, snapshot: bytes,
                             positions: list[int]) -> bool:
        def swap() -> bool:
            db = self._write_db
            assert db is not None
            with writing(db):
                row = db.execute("SELECT version, position FROM snapshots WHERE doc = ?", (name,)).fetchone()
                if (row[0] if row else 0) != expected_version:
                    db.execute("ROLLBACK")
                    return False
                position = max([row[1] if row else 0, *positions])
                db.execute(
                    "INSERT INTO snapshots (doc, data, position, version) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (doc) DO UPDATE SET data = excluded.data, "
                    "position = excluded.position, version = excluded.version",
                    (name, snapshot, position, expected_version + 1),
                )
            return True

        # The folded rows are the document's rows at or below the snapshot's position (one
        # writer hands out positions in commit order, so none can appear there later): reads
        # skip them from now on, and the sweep deletes them.
        if not await self._write_lane.run(swap):
            return False
        self._sweep_later(name, max(positions, default=0))
        return True

    def _sweep_later(self, name: str, position: int) -> None:
        self._folded[name] = max(position, self._folded.get(name, 0))
        if self._sweep_timer is None and self._loop is not None:
            self._sweep_timer = self._loop.call_later(SWEEP_DELAY, self._start_sweep)

    def _start_sweep(self) -> None:
        self._sweep_timer = None
        self._sweeping = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Delete the rows folded since the last sweep, for every document, in one transaction;
        if the database refuses, they wait for the next sweep (reads skip them all along)."""
        folded, self._folded = self._folded, {}
        if not folded:
            return

        def sweep() -> int:
            db = self._write_db
            assert db is not None
            with writing(db):
                return db.executemany("DELETE FROM updates WHERE doc = ? AND seq <= ?",
                                      list(folded.items())).rowcount

        try:
            deleted = await self._write_lane.run(sweep)
        except Exception as exc:  # kept for the next sweep, or the next start's
            log.warning("folded log rows of %d documents not deleted yet: %s", len(folded), exc)
            if not self._closing:
                for name, position in folded.items():
                    self._sweep_later(name, position)
            return
        log.debug("swept %d folded log rows of %d documents", deleted, len(folded))

    async def _set_deleted(self, name: str, deleted: bool) -> bool:
        now = time.time()

        def write() -> bool:
            db = self._write_db
            assert db is not None
            with writing(db):
                row = db.execute("SELECT deleted_at FROM documents WHERE doc = ?", (name,)).fetchone()
                was_deleted = row is not None and row[0] is not None
                dropped = db.execute("DELETE FROM updates WHERE doc = ?", (name,)).rowcount
                dropped += db.execute("DELETE FROM snapshots WHERE doc = ?", (name,)).rowcount
                db.execute("INSERT INTO documents (doc, changed_at, deleted_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (doc) DO UPDATE SET changed_at = excluded.changed_at, "
                           "deleted_at = excluded.deleted_at", (name, now, now if deleted else None))
            return (dropped > 0 and not was_deleted) if deleted else was_deleted

        return await self._write_lane.run(write)

    async def _list(self, after: str | None, limit: int) -> list[DocumentInfo]:
        def read() -> list[DocumentInfo]:
            db = self._read_db
            assert db is not None
            start = "" if after is None else after
            rows = db.execute(
                "SELECT d.doc, "
                "  COALESCE((SELECT length(data) FROM snapshots s WHERE s.doc = d.doc), 0) "
                "  + COALESCE((SELECT sum(length(data)) FROM updates u WHERE u.doc = d.doc AND u.seq > "
                "      COALESCE((SELECT position FROM snapshots s WHERE s.doc = d.doc), 0)), 0), "
                "  d.changed_at "
                "FROM documents d WHERE d.doc > ? AND d.deleted_at IS NULL ORDER BY d.doc LIMIT ?",
                (start, limit)).fetchall()
            return [DocumentInfo(doc, int(size), changed_at) for doc, size, changed_at in rows]

        return await self._read_lane.run(read)

    async def _add_version(self, name: str, created_at: float, kind: str, label: str,
                           authors: list[str], state: bytes) -> int:
        def write() -> int:
            db = self._write_db
            assert db is not None
            cursor = db.execute(
                "INSERT INTO versions (doc, created_at, kind, label, authors, data) "
                "VALUES (?, ?, ?, ?, ?, ?)", (name, created_at, kind, label, json.dumps(authors), state))
            return int(cursor.lastrowid or 0)

        return await self._write_lane.run(write)

    async def _list_versions(self, name: str, before: int | None, limit: int) -> list[VersionInfo]:
        def read() -> list[VersionInfo]:
            db = self._read_db
            assert db is not None
            rows = db.execute(
                "SELECT id, created_at, kind, label, authors, length(data) FROM versions "
                "WHERE doc = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (name, before if before is not None else 2**63 - 1, limit)).fetchall()
            return [_version_info(*row) for row in rows]

        return await self._read_lane.run(read)

    async def _read_version(self, name: str, version_id: int) -> tuple[VersionInfo, bytes] | None:
        def read() -> tuple[VersionInfo, bytes] | None:
            db = self._read_db
            assert db is not None
            row = db.execute(
                "SELECT id, created_at, kind, label, authors, length(data), data FROM versions "
                "WHERE doc = ? AND id = ?", (name, version_id)).fetchone()
            return None if row is None else (_version_info(*row[:6]), bytes(row[6]))

        return await self._read_lane.run(read)

    async def _prune_versions(self, name: str, older_than: float, keep: int) -> int:
        def write() -> int:
            db = self._write_db
            assert db is not None
            return int(db.execute(
                "DELETE FROM versions WHERE doc = ? AND kind = 'auto' AND created_at < ? AND id NOT IN "
                "(SELECT id FROM versions WHERE doc = ? ORDER BY id DESC LIMIT ?)",
                (name, older_than, name, keep)).rowcount)

        return await self._write_lane.run(write)

    async def _drop_versions(self, name: str) -> None:
        def write() -> None:
            db = self._write_db
            assert db is not None
            db.execute("DELETE FROM versions WHERE doc = ?", (name,))

        await self._write_lane.run(write)


def _version_info(version_id: int, created_at: float, kind: str, label: str, authors: str,
                  size: int) -> VersionInfo:
    return VersionInfo(int(version_id), float(created_at), kind, label, tuple(json.loads(authors)), int(size))
