"""SQLite store: the embedded default. WAL mode, one writer thread, one reader thread.

SQLite calls block, so they run on two single-thread executors: the writer (group commits and
snapshot swaps, serialised as SQLite requires) and the reader (loads and compaction reads, which
WAL lets run beside a write). The event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from collab.store.base import DocumentInfo, LogSlice, Store

T = TypeVar("T")

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
"""(user_version, script): what turns an older store into this release's, each run once and
recorded in SQLite's ``user_version``. Additive only, so an older release can still open it."""


def migrate(db: sqlite3.Connection) -> None:
    current = db.execute("PRAGMA user_version").fetchone()[0]
    for version, script in MIGRATIONS:
        if version > current:
            db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {version}; COMMIT;")


class SQLiteStore(Store):
    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._write_db: sqlite3.Connection | None = None
        self._read_db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: a process crash loses no commit
        return db

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def open_writer() -> None:
            self._write_db = self._connect()
            self._write_db.executescript(SCHEMA)
            migrate(self._write_db)

        def open_reader() -> None:
            self._read_db = self._connect()

        await self._run(self._writer_pool, open_writer)
        await self._run(self._reader_pool, open_reader)

    async def _close(self) -> None:
        def close(db: sqlite3.Connection | None) -> Callable[[], None]:
            return lambda: db.close() if db is not None else None

        await self._run(self._reader_pool, close(self._read_db))
        await self._run(self._writer_pool, close(self._write_db))
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)

    async def _write_batch(self, batch: list[tuple[str, bytes]]) -> list[int]:
        now = time.time()

        def write() -> list[int]:
            db = self._write_db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO updates (doc, data) VALUES (?, ?)", batch)
                last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
                db.executemany(
                    "INSERT INTO documents (doc, changed_at) VALUES (?, ?) "
                    "ON CONFLICT (doc) DO UPDATE SET changed_at = excluded.changed_at",
                    [(name, now) for name in {name for name, _ in batch}])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            # AUTOINCREMENT inside one write transaction hands out consecutive positions.
            return list(range(last - len(batch) + 1, last + 1))

        return await self._run(self._writer_pool, write)

    async def _read_log(self, name: str) -> LogSlice:
        def read() -> LogSlice:
            db = self._read_db
            assert db is not None
            db.execute("BEGIN")
            try:
                row = db.execute("SELECT data, version, position FROM snapshots WHERE doc = ?",
                                 (name,)).fetchone()
                rows = db.execute("SELECT seq, data FROM updates WHERE doc = ? ORDER BY seq",
                                  (name,)).fetchall()
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

        return await self._run(self._reader_pool, read)

    async def _swap_snapshot(self, name: str, expected_version: int, snapshot: bytes,
                             positions: list[int]) -> bool:
        def swap() -> bool:
            db = self._write_db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
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
                db.executemany("DELETE FROM updates WHERE seq = ? AND doc = ?",
                               [(seq, name) for seq in positions])
                db.execute("COMMIT")
                return True
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self._run(self._writer_pool, swap)

    async def _set_deleted(self, name: str, deleted: bool) -> bool:
        now = time.time()

        def write() -> bool:
            db = self._write_db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT deleted_at FROM documents WHERE doc = ?", (name,)).fetchone()
                was_deleted = row is not None and row[0] is not None
                dropped = db.execute("DELETE FROM updates WHERE doc = ?", (name,)).rowcount
                dropped += db.execute("DELETE FROM snapshots WHERE doc = ?", (name,)).rowcount
                db.execute("INSERT INTO documents (doc, changed_at, deleted_at) VALUES (?, ?, ?) "
                           "ON CONFLICT (doc) DO UPDATE SET changed_at = excluded.changed_at, "
                           "deleted_at = excluded.deleted_at", (name, now, now if deleted else None))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return (dropped > 0 and not was_deleted) if deleted else was_deleted

        return await self._run(self._writer_pool, write)

    async def _list(self, after: str | None, limit: int) -> list[DocumentInfo]:
        def read() -> list[DocumentInfo]:
            db = self._read_db
            assert db is not None
            start = "" if after is None else after
            rows = db.execute(
                "SELECT d.doc, "
                "  COALESCE((SELECT length(data) FROM snapshots s WHERE s.doc = d.doc), 0) "
                "  + COALESCE((SELECT sum(length(data)) FROM updates u WHERE u.doc = d.doc), 0), "
                "  d.changed_at "
                "FROM documents d WHERE d.doc > ? AND d.deleted_at IS NULL ORDER BY d.doc LIMIT ?",
                (start, limit)).fetchall()
            return [DocumentInfo(doc, int(size), changed_at) for doc, size, changed_at in rows]

        return await self._run(self._reader_pool, read)
