"""PostgreSQL store: the shared store of several instances (asyncpg, a small pool).

Same layout and semantics as the SQLite store: an update log plus one snapshot per document,
with a ``version`` that changes on every snapshot swap. What several instances add:

- schema creation and migration run under a transaction-scoped advisory lock and record the
  schema version, so any number of instances (or ``collab db upgrade``) may start at once;
- appends take a per-document advisory lock before drawing log positions, so for every
  document the committed positions always form a prefix of the drawn ones: a reader that sees
  position N has also seen every earlier position of that document;
- a snapshot swap only succeeds on the version it was computed from and deletes exactly the
  folded positions, in one transaction, so two instances compacting the same document at once
  cannot lose an update appended meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import asyncpg

from collab.store.base import DocumentInfo, LogSlice, Store, VersionInfo

log = logging.getLogger("collab.store.postgres")

SCHEMA_LOCK = 0x636F6C6C6162  # "collab": serialises schema changes across instances
DOC_LOCK_SPACE = 0x636F6C  # first key of the two-key advisory locks taken per document

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE collab_updates (
               seq  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               doc  TEXT NOT NULL,
               data BYTEA NOT NULL
           )""",
        "CREATE INDEX collab_updates_by_doc ON collab_updates (doc, seq)",
        """CREATE TABLE collab_snapshots (
               doc      TEXT PRIMARY KEY,
               data     BYTEA NOT NULL,
               position BIGINT NOT NULL,
               version  BIGINT NOT NULL
           )""",
    ]),
    (2, [
        # Per document: when it last changed, and the tombstone of a deleted one. Names in byte
        # order (as SQLite orders them), so that a listing pages the same way on every store.
        """CREATE TABLE collab_documents (
               doc        TEXT COLLATE "C" PRIMARY KEY,
               changed_at TIMESTAMPTZ,
               deleted_at TIMESTAMPTZ
           )""",
        """INSERT INTO collab_documents (doc)
           SELECT doc FROM collab_snapshots UNION SELECT doc FROM collab_updates
           ON CONFLICT DO NOTHING""",
    ]),
    (3, [
        # Versions of documents for people to go back to, apart from the log and the snapshots
        # (which compaction rewrites): a table of their own that nothing else reads or changes.
        """CREATE TABLE collab_versions (
               id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               doc        TEXT COLLATE "C" NOT NULL,
               created_at TIMESTAMPTZ NOT NULL,
               kind       TEXT NOT NULL,
               label      TEXT NOT NULL,
               authors    JSONB NOT NULL,
               data       BYTEA NOT NULL
           )""",
        "CREATE INDEX collab_versions_by_doc ON collab_versions (doc, id)",
    ]),
]
"""(version, statements): applied in order, each version once, in one transaction."""

SCHEMA_VERSION = MIGRATIONS[-1][0]


def doc_lock_key(name: str) -> int:
    """A stable signed 32-bit key for a document's advisory lock (collisions only serialise)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big", signed=True)


class PostgresStore(Store):
    def __init__(self, url: str, *, pool_size: int = 4, command_timeout: float = 30.0,
                 **options: Any) -> None:
        super().__init__(**options)
        self.url = url
        self.pool_size = pool_size
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL store is not open")
        return self._pool

    async def _open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=self.pool_size, command_timeout=self.command_timeout,
        )
        try:
            async with self._pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    async def _close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _write_batch(self, batch: list[tuple[str, bytes]]) -> list[int]:
        names = [name for name, _ in batch]
        keys = sorted({doc_lock_key(name) for name in names})  # one order everywhere: no deadlock
        async with self.pool.acquire() as conn, conn.transaction():
            # In one round trip, in that order (volatile functions run after the ORDER BY).
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int[]) WITH ORDINALITY AS t(k, i) "
                "ORDER BY i", DOC_LOCK_SPACE, keys)
            rows = await conn.fetch(
                "INSERT INTO collab_updates (doc, data) "
                "SELECT d, u FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS t(d, u, i) "
                "ORDER BY i RETURNING seq",
                names, [update for _, update in batch],
            )
            # Rows of the documents whose advisory locks this transaction holds: no deadlock.
            await conn.execute(
                "INSERT INTO collab_documents (doc, changed_at) SELECT unnest($1::text[]), now() "
                "ON CONFLICT (doc) DO UPDATE SET changed_at = excluded.changed_at", sorted(set(names)))
        # identity values are drawn in row order, and the rows were fed in batch order
        return sorted(row["seq"] for row in rows)

    async def _read_both(self, name: str) -> tuple[asyncpg.Record | None, list[asyncpg.Record], bool]:
        """The snapshot row, the log and the tombstone of ``name``, from one consistent database
        snapshot."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                 readonly=True):
            snapshot = await conn.fetchrow(
                "SELECT data, position, version FROM collab_snapshots WHERE doc = $1", name)
            entries = await conn.fetch(
                "SELECT seq, data FROM collab_updates WHERE doc = $1 ORDER BY seq", name)
            deleted = await conn.fetchval(
                "SELECT deleted_at IS NOT NULL FROM collab_documents WHERE doc = $1", name)
        return snapshot, entries, bool(deleted)

    async def _read_log(self, name: str) -> LogSlice:
        snapshot, entries, deleted = await self._read_both(name)
        return LogSlice(
            deleted=deleted,
            snapshot=snapshot["data"] if snapshot is not None else None,
            version=snapshot["version"] if snapshot is not None else 0,
            positions=[entry["seq"] for entry in entries],
            updates=[entry["data"] for entry in entries],
            snapshot_position=snapshot["position"] if snapshot is not None else 0,
        )

    async def _swap_snapshot(self, name: str, expected_version: int, snapshot: bytes,
                             positions: list[int]) -> bool:
        top = max(positions, default=0)
        async with self.pool.acquire() as conn, conn.transaction():
            if expected_version == 0:
                # two first compactions race on the insert: the loser waits, then inserts nothing
                status = await conn.execute(
                    "INSERT INTO collab_snapshots (doc, data, position, version) "
                    "VALUES ($1, $2, $3, 1) ON CONFLICT (doc) DO NOTHING",
                    name, snapshot, top)
            else:
                # the row lock orders racing swaps; the loser re-reads the version and matches nothing
                status = await conn.execute(
                    "UPDATE collab_snapshots SET data = $2, position = GREATEST(position, $3), "
                    "version = version + 1 WHERE doc = $1 AND version = $4",
                    name, snapshot, top, expected_version)
            if not status.endswith(" 1"):
                return False
            await conn.execute(
                "DELETE FROM collab_updates WHERE doc = $1 AND seq = ANY($2::bigint[])",
                name, positions)
        return True

    async def _set_deleted(self, name: str, deleted: bool) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            # The document's append lock: no batch of it commits halfway through this.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", DOC_LOCK_SPACE, doc_lock_key(name))
            was_deleted = bool(await conn.fetchval(
                "SELECT deleted_at IS NOT NULL FROM collab_documents WHERE doc = $1", name))
            dropped = _count(await conn.execute("DELETE FROM collab_updates WHERE doc = $1", name))
            dropped += _count(await conn.execute("DELETE FROM collab_snapshots WHERE doc = $1", name))
            await conn.execute(
                "INSERT INTO collab_documents (doc, changed_at, deleted_at) "
                "VALUES ($1, now(), CASE WHEN $2::boolean THEN now() END) "
                "ON CONFLICT (doc) DO UPDATE SET changed_at = excluded.changed_at, "
                "deleted_at = excluded.deleted_at", name, deleted)
        return (dropped > 0 and not was_deleted) if deleted else was_deleted

    async def _list(self, after: str | None, limit: int) -> list[DocumentInfo]:
        rows = await self.pool.fetch(
            "SELECT d.doc, "
            "  COALESCE((SELECT octet_length(data) FROM collab_snapshots s WHERE s.doc = d.doc), 0) "
            "  + COALESCE((SELECT sum(octet_length(data)) FROM collab_updates u WHERE u.doc = d.doc), 0) "
            "  AS size, extract(epoch FROM d.changed_at) AS changed_at "
            "FROM collab_documents d WHERE d.doc > $1 AND d.deleted_at IS NULL ORDER BY d.doc LIMIT $2",
            after or "", limit)
        return [DocumentInfo(row["doc"], int(row["size"]),
                             float(row["changed_at"]) if row["changed_at"] is not None else None)
                for row in rows]


    async def _add_version(self, name: str, created_at: float, kind: str, label: str,
                           authors: list[str], state: bytes) -> int:
        return int(await self.pool.fetchval(
            "INSERT INTO collab_versions (doc, created_at, kind, label, authors, data) "
            "VALUES ($1, to_timestamp($2), $3, $4, $5::jsonb, $6) RETURNING id",
            name, created_at, kind, label, json.dumps(authors), state))

    async def _list_versions(self, name: str, before: int | None, limit: int) -> list[VersionInfo]:
        rows = await self.pool.fetch(
            "SELECT id, extract(epoch FROM created_at) AS created_at, kind, label, authors::text AS authors, "
            "octet_length(data) AS size FROM collab_versions WHERE doc = $1 AND id < $2 "
            "ORDER BY id DESC LIMIT $3", name, before if before is not None else 2**63 - 1, limit)
        return [_version_info(row) for row in rows]

    async def _read_version(self, name: str, version_id: int) -> tuple[VersionInfo, bytes] | None:
        row = await self.pool.fetchrow(
            "SELECT id, extract(epoch FROM created_at) AS created_at, kind, label, authors::text AS authors, "
            "octet_length(data) AS size, data FROM collab_versions WHERE doc = $1 AND id = $2",
            name, version_id)
        return None if row is None else (_version_info(row), bytes(row["data"]))

    async def _prune_versions(self, name: str, older_than: float, keep: int) -> int:
        return _count(await self.pool.execute(
            "DELETE FROM collab_versions WHERE doc = $1 AND kind = 'auto' AND created_at < to_timestamp($2) "
            "AND id NOT IN (SELECT id FROM collab_versions WHERE doc = $1 ORDER BY id DESC LIMIT $3)",
            name, older_than, keep))

    async def _drop_versions(self, name: str) -> None:
        await self.pool.execute("DELETE FROM collab_versions WHERE doc = $1", name)


def _version_info(row: asyncpg.Record) -> VersionInfo:
    return VersionInfo(int(row["id"]), float(row["created_at"]), row["kind"], row["label"],
                       tuple(json.loads(row["authors"])), int(row["size"]))


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to date; safe to run from many processes at once. Returns the
    version the database is at."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS collab_schema ("
            " version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        current = await conn.fetchval("SELECT COALESCE(max(version), 0) FROM collab_schema")
        if current > SCHEMA_VERSION:  # a rollback after a newer release migrated: additive only
            log.warning("database schema is at version %d, newer than this collab's %d",
                        current, SCHEMA_VERSION)
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO collab_schema (version) VALUES ($1)", version)
            log.info("database schema migrated to version %d", version)
            current = version
    return current
