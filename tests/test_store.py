"""The stores' shared semantics, on real SQLite files and the in-memory store."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collab import crdt
from collab.store import Store, UnsupportedStore, open_store
from collab.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path / 'db' / 'collab.db'}" if request.param == "sqlite" else "memory://"
    store = open_store(url, commit_window=0.002, compact_threshold=10_000)
    await store.open()
    yield store
    await store.close()


def typing_updates(count: int, seed: int = 1) -> tuple[list[bytes], str]:
    """Updates of one author typing and deleting, and the text they produce."""
    rng = random.Random(seed)
    doc = crdt.Document()
    updates = []
    for i in range(count):
        text = doc.text()
        if text and rng.random() < 0.3:
            update = doc.edit_text(rng.randrange(len(text)), delete=1)
        else:
            update = doc.edit_text(rng.randint(0, len(text)), insert=f"{i % 10}")
        assert update is not None
        updates.append(update)
    return updates, doc.text()


def text_of(updates: list[bytes]) -> str:
    return crdt.document_from(updates).text()


async def test_append_resolves_with_increasing_positions_and_loads_back(store: Store) -> None:
    updates, text = typing_updates(50)
    positions = await asyncio.gather(*(store.append("doc", u) for u in updates))
    assert positions == sorted(positions) and len(set(positions)) == 50
    stored = await store.load("doc")
    assert text_of(stored.updates) == text
    assert stored.position == positions[-1]
    assert (await store.load("other")).updates == []


async def test_documents_are_isolated(store: Store) -> None:
    a, text_a = typing_updates(5, seed=1)
    b, text_b = typing_updates(5, seed=2)
    await asyncio.gather(*(store.append("a", u) for u in a), *(store.append("b", u) for u in b))
    assert text_of((await store.load("a")).updates) == text_a
    assert text_of((await store.load("b")).updates) == text_b
    assert await store.names() == ["a", "b"]


async def test_compaction_folds_the_log_into_one_snapshot(store: Store) -> None:
    updates, text = typing_updates(40)
    for update in updates:
        store.append("doc", update)
    await store.flush()
    before = await store.load("doc")
    assert await store.compact("doc") is True
    after = await store.load("doc")
    assert len(after.updates) == 1 and text_of(after.updates) == text
    assert after.position == before.position
    assert await store.compact("doc") is False  # nothing left to fold


async def test_compaction_racing_with_appends_loses_nothing(store: Store) -> None:
    updates, text = typing_updates(300, seed=7)

    async def writer() -> None:
        for i, update in enumerate(updates):
            store.append("doc", update)
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def compactor() -> int:
        swaps = 0
        for _ in range(25):
            swaps += await store.compact("doc")
            await asyncio.sleep(0.001)
        return swaps

    _, swaps = await asyncio.gather(writer(), compactor())
    await store.flush()
    await store.compact("doc")
    assert swaps > 0
    assert text_of((await store.load("doc")).updates) == text


async def test_a_stale_compaction_is_refused(store: Store) -> None:
    updates, text = typing_updates(10)
    for update in updates[:5]:
        store.append("doc", update)
    await store.flush()
    stale = await store._read_log("doc")
    for update in updates[5:]:
        store.append("doc", update)
    await store.flush()
    assert await store.compact("doc") is True
    # A compactor that read before the swap must not overwrite the newer snapshot.
    merged = crdt.merge(stale.updates)
    assert await store._swap_snapshot("doc", stale.version, merged, stale.positions) is False
    assert text_of((await store.load("doc")).updates) == text


async def test_automatic_compaction_past_the_threshold(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db", commit_window=0.001, compact_threshold=20)
    await store.open()
    updates, text = typing_updates(45)
    for update in updates:
        await store.append("doc", update)
    await store.close()  # waits for compactions it started
    reopened = SQLiteStore(tmp_path / "c.db")
    await reopened.open()
    stored = await reopened.load("doc")
    await reopened.close()
    assert len(stored.updates) < 45 and text_of(stored.updates) == text


async def _settled(store: Store) -> None:
    """Everything appended is stored and every compaction it started is over."""
    assert await store.flush(timeout=10)
    await asyncio.wait_for(asyncio.gather(*list(store._compacting.values())), 10)


async def test_a_large_document_is_folded_once_its_log_is_a_share_of_its_snapshot(tmp_path: Path) -> None:
    """Past the count of updates, a document's log is folded only once its bytes reach the
    ratio of its snapshot's: a fold reads the whole document, whatever its log holds."""
    store = SQLiteStore(tmp_path / "c.db", commit_window=0, compact_threshold=20, compact_log_ratio=0.5)
    await store.open()
    doc = crdt.Document()
    await store.append("big", doc.edit_text(0, "x" * 20_000))
    assert await store.compact("big")
    snapshot = (await store.load("big")).updates[0]
    typed = 0
    while typed + 200 < len(snapshot) // 2:  # well past the count, short of half the snapshot
        update = doc.edit_text(typed % 100, "a")
        assert update is not None
        await store.append("big", update)
        typed += len(update)
    await _settled(store)
    assert store.stats.compactions == 1
    while typed < len(snapshot) // 2 + 200:
        update = doc.edit_text(0, "b")
        assert update is not None
        await store.append("big", update)
        typed += len(update)
    await _settled(store)
    assert store.stats.compactions == 2
    await store.close()

    # A store started again learns the snapshot's size when the document is loaded.
    reopened = SQLiteStore(tmp_path / "c.db", commit_window=0, compact_threshold=20,
                           compact_log_ratio=0.5)
    await reopened.open()
    await reopened.load("big")
    for _ in range(60):
        await reopened.append("big", doc.edit_text(0, "c"))
    await _settled(reopened)
    assert reopened.stats.compactions == 0
    assert crdt.document_from((await reopened.load("big")).updates).text() == doc.text()
    await reopened.close()


async def test_a_ratio_of_zero_folds_by_the_count_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db", commit_window=0, compact_threshold=20, compact_log_ratio=0)
    await store.open()
    doc = crdt.Document()
    await store.append("big", doc.edit_text(0, "x" * 20_000))
    assert await store.compact("big")
    for _ in range(60):
        await store.append("big", doc.edit_text(0, "a"))
    await _settled(store)
    assert store.stats.compactions >= 2
    await store.close()


async def test_sqlite_is_durable_across_reopen_and_close_flushes(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store = SQLiteStore(path, commit_window=0.05)
    await store.open()
    updates, text = typing_updates(20)
    futures = [store.append("doc", u) for u in updates]
    await store.close()  # inside the commit window: close must still commit everything
    assert all(f.done() and not f.exception() for f in futures)
    reopened = SQLiteStore(path)
    await reopened.open()
    assert text_of((await reopened.load("doc")).updates) == text
    await reopened.close()


async def test_append_after_close_fails_clearly(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db")
    await store.open()
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.append("doc", b"\x00\x00")


def test_unknown_store_urls_are_refused() -> None:
    for url in ("mysql://x", "sqlite:///", "./data.db"):
        with pytest.raises(UnsupportedStore):
            open_store(url)


async def test_sqlite_loads_at_once_each_get_their_own_document(tmp_path: Path) -> None:
    """Loads queued together are answered together by the reader; each waiter gets its own
    document, a failing read only fails its own waiter, and a cancelled one spoils nothing."""
    store = SQLiteStore(tmp_path / "collab.db", commit_window=0.002)
    await store.open()
    try:
        texts = {}
        for i in range(30):
            updates, texts[f"d{i}"] = typing_updates(5, seed=i)
            await asyncio.gather(*(store.append(f"d{i}", u) for u in updates))
        assert await store.flush()

        def broken() -> None:
            raise RuntimeError("read failed")

        cancelled = asyncio.ensure_future(store.load("d0"))
        loads = [asyncio.ensure_future(store.load(name)) for name in texts]
        failing = store._read_lane.run(broken)
        await asyncio.sleep(0)  # every load has queued its read
        cancelled.cancel()
        stored = await asyncio.gather(*loads)
        assert {name: text_of(s.updates) for name, s in zip(texts, stored, strict=True)} == texts
        with pytest.raises(RuntimeError, match="read failed"):
            await failing
        assert cancelled.cancelled()
        assert text_of((await store.load("d1")).updates) == texts["d1"]
    finally:
        await store.close()


def _log_rows(path: Path, name: str) -> list[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT seq FROM updates WHERE doc = ? ORDER BY seq",
                                             (name,))]


async def test_sqlite_folded_log_rows_are_skipped_then_swept_for_many_documents(tmp_path: Path) -> None:
    """Compaction's folded rows wait for one sweep of every document folded meanwhile: no read
    sees them in between, and a clean close sweeps what is still waiting."""
    path = tmp_path / "collab.db"
    store = SQLiteStore(path, commit_window=0, compact_threshold=10_000)
    await store.open()
    updates = {name: typing_updates(45 if name == "a" else 40, seed=seed)
               for seed, name in enumerate("abc")}
    for name, (some, _text) in updates.items():
        await asyncio.gather(*(store.append(name, u) for u in some[:40]))
    assert await store.compact("a") and await store.compact("b")
    for update in updates["a"][0][40:]:  # "a" goes on typing after its compaction
        await store.append("a", update)
    assert len(_log_rows(path, "a")) == 45 and len(_log_rows(path, "b")) == 40  # not swept yet
    loaded = await store.load("a")
    assert loaded.snapshot and len(loaded.updates) == 1 + 5
    assert text_of(loaded.updates) == updates["a"][1]
    assert len((await store.load("b")).updates) == 1
    sizes = {info.name: info.size for info in await store.list()}
    assert sizes["a"] == len(loaded.updates[0]) + sum(len(u) for u in loaded.updates[1:])
    await store.close()
    assert len(_log_rows(path, "a")) == 5 and _log_rows(path, "b") == [] and len(_log_rows(path, "c")) == 40
    reopened = SQLiteStore(path)
    await reopened.open()
    assert {n: text_of((await reopened.load(n)).updates) for n in "abc"} == {
        n: text for n, (_u, text) in updates.items()}
    await reopened.close()


async def test_sqlite_folded_rows_left_by_a_stopped_run_go_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "collab.db"
    store = SQLiteStore(path, commit_window=0, compact_threshold=10_000)
    await store.open()
    updates, text = typing_updates(30)
    await asyncio.gather(*(store.append("doc", u) for u in updates))
    folded = _log_rows(path, "doc")
    assert await store.compact("doc")
    await store.close()
    # A run killed before its sweep leaves the folded rows: put them back as it would have.
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO updates (seq, doc, data) VALUES (?, 'doc', ?)",
                       list(zip(folded, updates, strict=True)))
    assert _log_rows(path, "doc") == folded
    reopened = SQLiteStore(path)
    await reopened.open()
    assert _log_rows(path, "doc") == []
    stored = await reopened.load("doc")
    assert stored.snapshot and len(stored.updates) == 1 and text_of(stored.updates) == text
    await reopened.close()
