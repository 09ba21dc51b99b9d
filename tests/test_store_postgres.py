"""PostgresStore against a real PostgreSQL server, in a throwaway database per module."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from collab import crdt
from collab.store import open_store
from collab.store.postgres import SCHEMA_VERSION, PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(database: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(database, commit_window=0.002, compact_threshold=10_000)
    await store.open()
    yield store
    await store.close()


def doc_name() -> str:
    return f"doc-{secrets.token_hex(4)}"


def typing_updates(count: int, prefix: str = "t") -> tuple[list[bytes], str]:
    """``count`` updates of one writer appending tokens, and the text they make."""
    doc = crdt.Document()
    updates = []
    for i in range(count):
        update = doc.edit_text(len(doc.text()), f"{prefix}{i} ")
        assert update is not None
        updates.append(update)
    return updates, doc.text()


def text_of(updates: list[bytes]) -> str:
    return crdt.document_from(updates).text()


async def test_open_store_maps_postgres_urls(database: str) -> None:
    assert isinstance(open_store(database), PostgresStore)
    assert isinstance(open_store(database.replace("postgresql://", "postgres://", 1)), PostgresStore)


async def test_concurrent_opens_migrate_once(database: str) -> None:
    stores = [PostgresStore(database) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    await asyncio.gather(*(s.close() for s in stores))
    again = PostgresStore(database)
    await again.open()  # idempotent: nothing left to do
    await again.close()
    conn = await asyncpg.connect(database)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM collab_schema")]
    finally:
        await conn.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_append_then_load_in_order(store: PostgresStore) -> None:
    name = doc_name()
    updates, text = typing_updates(20)
    positions = await asyncio.gather(*(store.append(name, u) for u in updates))
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    loaded = await store.load(name)
    assert loaded.updates == updates
    assert loaded.position == positions[-1]
    assert text_of(loaded.updates) == text
    assert name in await store.names()


async def test_load_of_unknown_document_is_empty(store: PostgresStore) -> None:
    loaded = await store.load(doc_name())
    assert loaded.updates == [] and loaded.position == 0


async def test_compaction_keeps_text_and_shrinks_log(store: PostgresStore) -> None:
    name = doc_name()
    updates, text = typing_updates(30)
    for u in updates[:20]:
        store.append(name, u)
    await store.flush()
    assert await store.compact(name) is True
    for u in updates[20:]:
        store.append(name, u)
    await store.flush()
    assert await store.compact(name) is True  # second swap goes through the version check
    loaded = await store.load(name)
    assert len(loaded.updates) == 1
    assert text_of(loaded.updates) == text
    assert loaded.position >= 30


async def test_stale_swap_is_refused_and_changes_nothing(store: PostgresStore, database: str) -> None:
    name = doc_name()
    updates, text = typing_updates(10)
    for u in updates:
        store.append(name, u)
    await store.flush()
    stale = await store._read_log(name)
    other = PostgresStore(database)
    await other.open()
    try:
        assert await other.compact(name) is True
    finally:
        await other.close()
    assert await store._swap_snapshot(name, stale.version, b"\x00\x00", stale.positions) is False
    assert text_of((await store.load(name)).updates) == text


async def test_two_instances_compacting_while_a_third_appends_lose_nothing(database: str) -> None:
    name = doc_name()
    writer = PostgresStore(database, commit_window=0.001, compact_threshold=10_000)
    compactors = [PostgresStore(database, compact_threshold=10_000) for _ in range(2)]
    await asyncio.gather(writer.open(), *(c.open() for c in compactors))
    updates, text = typing_updates(300)
    swaps: list[bool] = []
    try:
        async def write() -> None:
            for i, u in enumerate(updates):
                writer.append(name, u)
                if i % 10 == 9:
                    await writer.flush()
            await writer.flush()

        async def compact(store: PostgresStore) -> None:
            while not writer_done.is_set():
                swaps.append(await store.compact(name))
                await asyncio.sleep(0)

        writer_done = asyncio.Event()
        writing = asyncio.create_task(write())
        compacting = [asyncio.create_task(compact(c)) for c in compactors]
        await asyncio.wait_for(writing, 60)
        writer_done.set()
        await asyncio.wait_for(asyncio.gather(*compacting), 60)
        swaps.append(await compactors[0].compact(name))
        loaded = await compactors[1].load(name)
    finally:
        await asyncio.gather(writer.close(), *(c.close() for c in compactors))
    assert any(swaps), "no compaction ever succeeded, so the race was not exercised"
    assert text_of(loaded.updates) == text
    assert len(loaded.updates) == 1


async def test_positions_never_go_backwards_across_instances(database: str) -> None:
    """Appends for one document from two instances: each load sees a prefix of positions."""
    name = doc_name()
    a, b = (PostgresStore(database, commit_window=0) for _ in range(2))
    await asyncio.gather(a.open(), b.open())
    try:
        ua, _ = typing_updates(50, "a")
        ub, _ = typing_updates(50, "b")
        seen: list[int] = []

        async def watch() -> None:
            for _ in range(40):
                seen.append((await a.load(name)).position)

        results = await asyncio.gather(
            asyncio.gather(*(a.append(name, u) for u in ua)),
            asyncio.gather(*(b.append(name, u) for u in ub)),
            watch(),
        )
        loaded = await b.load(name)
    finally:
        await asyncio.gather(a.close(), b.close())
    assert seen == sorted(seen)
    assert len(loaded.updates) == 100
    assert loaded.position == max(results[0] + results[1])


async def test_store_recovers_when_its_connections_are_terminated(database: str) -> None:
    """A database restart or failover kills every connection: appends fail at worst (the clients
    still hold them and resend), and the store goes on with fresh connections."""
    store = PostgresStore(database, commit_window=0)
    await store.open()
    try:
        conn = await asyncpg.connect(database)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await conn.close()
        name = doc_name()
        updates, text = typing_updates(3)
        results = await asyncio.gather(*(store.append(name, u) for u in updates), return_exceptions=True)
        for u, result in zip(updates, results, strict=True):
            if isinstance(result, BaseException):
                await store.append(name, u)  # a client would resend it
        assert text_of((await store.load(name)).updates) == text
    finally:
        await store.close()


async def test_compaction_keeps_an_update_stored_before_its_dependency(store: PostgresStore) -> None:
    """Instance B stores an edit made on top of one that instance A has published but not yet
    committed; a compaction in between must not fold B's edit away."""
    name = doc_name()
    updates, text = typing_updates(2)
    await store.append(name, updates[1])
    assert await store.compact(name) is True
    await store.append(name, updates[0])
    assert text_of((await store.load(name)).updates) == text


async def test_a_commit_holds_the_lock_of_every_document_it_writes(store: PostgresStore,
                                                                   database: str) -> None:
    """The commit takes each of its documents' advisory locks, in one statement and in the
    order of their keys: a commit of three documents waits while another session holds the
    lock of any one of them."""
    from collab.store.postgres import DOC_LOCK_SPACE, doc_lock_key

    names = [doc_name() for _ in range(3)]
    other = await asyncpg.connect(database)
    try:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1, $2)", DOC_LOCK_SPACE,
                                doc_lock_key(names[2]))
            stored = [store.append(name, typing_updates(1, name)[0][0]) for name in names]
            done, _ = await asyncio.wait(stored, timeout=0.5)
            assert not done  # the commit waits for the lock the other session holds
            held = await other.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND granted "
                "AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())", DOC_LOCK_SPACE)
            # the commit took, in order, the locks that sort before the one it waits for
            blocked = doc_lock_key(names[2])
            assert held == sum(doc_lock_key(name) < blocked for name in names)
        assert len(set(await asyncio.wait_for(asyncio.gather(*stored), 10))) == 3
    finally:
        await other.close()
    for name in names:
        assert text_of((await store.load(name)).updates) == f"{name}0 "
