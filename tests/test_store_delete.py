"""Deleting, reviving and listing documents: the same semantics on SQLite, PostgreSQL and the
in-memory store, including a store written by the release before (migrated on open)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from collab import crdt
from collab.store import Store, open_store
from tests.services import fresh_database


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'collab.db'}" if request.param == "sqlite" else "memory://"


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    store = open_store(url, commit_window=0.002, compact_threshold=10_000)
    await store.open()
    yield store
    await store.close()


def edits(*words: str) -> list[bytes]:
    doc = crdt.Document()
    updates = []
    for word in words:
        update = doc.edit_text(len(doc.text()), insert=word)
        assert update is not None
        updates.append(update)
    return updates


async def test_a_deleted_document_stays_deleted_until_revived(store: Store) -> None:
    name = f"doc-{time.monotonic_ns()}"
    for update in edits("hello ", "world"):
        store.append(name, update)
    assert await store.delete(name) is True
    deleted = await store.load(name)
    assert deleted.deleted and deleted.updates == []
    assert name not in await store.names()
    # An instance that still held it stores a late update: it does not bring the document back.
    await store.append(name, edits("late")[0])
    assert (await store.load(name)).deleted
    assert name not in [d.name for d in await store.list()]
    assert await store.delete(name) is False  # nothing left to delete
    assert await store.compact(name) is False  # leftovers are not folded into a snapshot
    assert await store.revive(name) is True
    revived = await store.load(name)
    assert not revived.deleted and revived.updates == []  # revived empty: leftovers dropped
    await store.append(name, edits("again")[0])
    assert await store.revive(name) is False  # not deleted: its content stays
    assert crdt.document_from((await store.load(name)).updates).text() == "again"


async def test_deleting_waits_for_appends_already_made(store: Store) -> None:
    name = f"pending-{time.monotonic_ns()}"
    appended = [store.append(name, u) for u in edits("a", "b", "c")]
    assert await store.delete(name) is True
    assert all(f.done() for f in appended)
    assert (await store.load(name)).updates == []


async def test_deleting_a_compacted_document_drops_its_snapshot(store: Store) -> None:
    name = f"compacted-{time.monotonic_ns()}"
    await asyncio.gather(*(store.append(name, u) for u in edits("x", "y")))
    assert await store.compact(name)
    assert await store.delete(name)
    assert (await store.load(name)).updates == []
    assert await store.delete("never-there") is False


async def test_list_pages_in_name_order_with_size_and_last_change(store: Store) -> None:
    prefix = f"list-{time.monotonic_ns()}-"
    before = time.time()
    for index in range(5):
        await asyncio.gather(*(store.append(f"{prefix}{index}", u) for u in edits("x" * (index + 1))))
    await store.delete(f"{prefix}2")
    mine = [d for d in await store.list(limit=1000) if d.name.startswith(prefix)]
    assert [d.name for d in mine] == [f"{prefix}{i}" for i in (0, 1, 3, 4)]
    assert all(d.changed_at is not None and before - 1 <= d.changed_at <= time.time() + 1 for d in mine)
    assert mine[0].size < mine[3].size  # bytes stored grow with the text
    first = await store.list(after=prefix, limit=2)
    assert [d.name for d in first] == [f"{prefix}0", f"{prefix}1"]
    rest = await store.list(after=first[-1].name, limit=10)
    assert [d.name for d in rest][:2] == [f"{prefix}3", f"{prefix}4"]
    names = [d.name for d in await store.list(limit=1000)]
    assert names == sorted(names, key=lambda n: n.encode())  # byte order on every store


async def test_a_sqlite_store_of_the_release_before_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE updates (seq INTEGER PRIMARY KEY AUTOINCREMENT, doc TEXT NOT NULL, data BLOB NOT NULL);
        CREATE INDEX updates_by_doc ON updates (doc, seq);
        CREATE TABLE snapshots (doc TEXT PRIMARY KEY, data BLOB NOT NULL, position INTEGER NOT NULL,
                                version INTEGER NOT NULL);
    """)
    db.execute("INSERT INTO updates (doc, data) VALUES (?, ?)", ("old", edits("kept")[0]))
    db.commit()
    db.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        [info] = await store.list()
        assert info.name == "old" and info.changed_at is None and info.size > 0
        assert crdt.document_from((await store.load("old")).updates).text() == "kept"
        assert await store.delete("old")
        assert await store.names() == []
    finally:
        await store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] >= 1
