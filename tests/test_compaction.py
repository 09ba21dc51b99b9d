"""Compaction collects deleted content: a churned document's store holds about its visible
text, loads to the same text, and still merges with clients that hold the old history."""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pycrdt
import pytest

from collab import crdt
from collab.store import Store, base, open_store
from collab.store.base import _fold_collected
from tests.jsclient import js_clients
from tests.servers import ServerProcess
from tests.services import fresh_database, need_postgres

CHUNK = 20_000


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    need_postgres()
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return {"sqlite": f"sqlite:///{tmp_path / 'collab.db'}", "memory": "memory://"}.get(
        request.param) or str(request.getfixturevalue("postgres_database"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = open_store(store_url, commit_window=0, compact_threshold=1_000_000)
    await store.open()
    yield store
    await store.close()


def churn(doc: crdt.Document, rounds: int, at: int = 20) -> list[bytes]:
    """Insert CHUNK characters and delete them again, ``rounds`` times: two updates a round."""
    updates = []
    for round_ in range(rounds):
        inserted = doc.edit_text(at, chr(ord("a") + round_ % 26) * CHUNK)
        deleted = doc.edit_text(at, delete=CHUNK)
        assert inserted and deleted
        updates += [inserted, deleted]
    return updates


async def test_a_compacted_churned_document_is_about_its_visible_text(store: Store) -> None:
    doc = crdt.Document()
    base = doc.edit_text(0, "0123456789" * 4)  # 40 characters
    assert base
    updates = [base, *churn(doc, 100)]
    for update in updates:
        store.append("churned", update)
    await store.flush()
    churned = sum(len(update) for update in updates)
    assert churned > 100 * CHUNK  # two megabytes of history
    assert await store.compact("churned")
    stored = await store.load("churned")
    size = sum(len(update) for update in stored.updates)
    assert len(stored.updates) == 1 and size < 40 + 400, size  # the text and a little metadata
    assert store.stats.collected_compactions == 1
    assert stored.document().text() == "0123456789" * 4
    assert stored.document().clocks() == doc.clocks()
    # More edits after the collected snapshot fold on top of it, and are collected too.
    more = [*churn(doc, 10), doc.edit_text(40, "!") or b""]
    for update in more:
        store.append("churned", update)
    await store.flush()
    assert await store.compact("churned")
    again = await store.load("churned")
    assert again.document().text() == "0123456789" * 4 + "!"
    assert sum(len(update) for update in again.updates) < 40 + 400


async def test_a_log_that_is_not_causally_complete_is_merged_and_keeps_everything(store: Store) -> None:
    doc = crdt.Document()
    first = doc.edit_text(0, "first")
    [inserted, deleted] = churn(doc, 1, at=5)
    later = doc.edit_text(5, " later")
    assert first and later
    # Stored without ``first`` (another instance's commit still on its way): the rest waits.
    for update in (inserted, deleted, later):
        store.append("partial", update)
    await store.flush()
    assert await store.compact("partial")
    assert store.stats.collected_compactions == 0
    stored = await store.load("partial")
    assert crdt.contains_all(stored.updates[0], [inserted, deleted, later])
    # Once ``first`` is stored, the next compaction folds everything and collects.
    store.append("partial", first)
    await store.flush()
    assert await store.compact("partial")
    assert store.stats.collected_compactions == 1
    stored = await store.load("partial")
    assert stored.document().text() == "first later"
    assert sum(len(update) for update in stored.updates) < 200


async def test_a_collected_snapshot_merges_with_a_client_that_kept_the_old_history() -> None:
    """A client that never collects (it holds every deleted character) and an offline client
    that inserted inside text deleted meanwhile: both merge with the collected snapshot."""
    server = crdt.Document()
    history = [server.edit_text(0, "start end") or b""]
    keeper = pycrdt.Doc(skip_gc=True)  # holds the old history, deleted content included
    offline = pycrdt.Doc()
    history.append(server.edit_text(6, "CHUNK-0123456789") or b"")
    for update in history:
        keeper.apply_update(update)
        offline.apply_update(update)
    # Offline from here: it types inside the chunk, which the others delete meanwhile.
    offline_text = offline.get("text", type=pycrdt.Text)
    offline_before = offline.get_state()
    offline_text.insert(11, "[offline]")
    offline_edit = offline.get_update(offline_before)
    history.append(server.edit_text(6, delete=16) or b"")
    history += churn(server, 5, at=6)
    keeper.apply_update(pycrdt.merge_updates(*history[2:]))
    folded = await _fold_collected(history)
    assert folded is not None
    snapshot = folded[0]
    assert b"CHUNK" not in snapshot and b"aaaa" not in snapshot  # the deleted text is gone
    fresh = crdt.document_from([snapshot])
    assert fresh.text() == "start end"
    # The keeper syncs both ways with a document loaded from the collected snapshot.
    from_keeper = keeper.get_update(fresh.state_vector())
    fresh.apply(from_keeper)
    keeper.apply_update(fresh.diff(keeper.get_state()))
    assert str(keeper.get("text", type=pycrdt.Text)) == fresh.text() == "start end"
    # The offline client's insert refers to characters that were collected: it still lands.
    fresh.apply(offline_edit)
    offline.apply_update(fresh.diff(offline.get_state()))
    keeper.apply_update(offline_edit)
    assert fresh.text() == "start [offline]end"
    assert str(offline_text) == str(keeper.get("text", type=pycrdt.Text)) == fresh.text()


# --- the next fold starts from the document the last one checked ------------------------------


async def _typed_and_compacted(store: Store, name: str, doc: crdt.Document, text: str) -> None:
    for character in text:
        update = doc.edit_text(len(doc.text()), character)
        assert update
        store.append(name, update)
    await store.flush()
    assert await store.compact(name)


async def test_the_next_compaction_folds_only_the_log_into_the_document_the_last_one_checked(
        store: Store) -> None:
    doc = crdt.Document()
    await _typed_and_compacted(store, "kept", doc, "first part; ")
    assert store.stats.compactions_from_kept == 0  # nothing kept yet: the whole log is read
    await _typed_and_compacted(store, "kept", doc, "second part; ")
    await _typed_and_compacted(store, "kept", doc, "third")
    assert store.stats.compactions_from_kept == 2
    stored = await store.load("kept")
    assert len(stored.updates) == 1
    assert stored.document().text() == "first part; second part; third" == doc.text()
    assert stored.document().clocks() == doc.clocks()


async def test_a_kept_document_is_dropped_with_its_document_and_bounded_by_bytes(store_url: str) -> None:
    store = open_store(store_url, commit_window=0, compact_threshold=1_000_000)
    await store.open()
    try:
        docs = {name: crdt.Document() for name in ("a", "b", "c")}
        for name, doc in docs.items():
            await _typed_and_compacted(store, name, doc, "twenty characters ok")
            if name == "a":  # room for two such snapshots (client ids differ by a byte or two)
                snapshot = (await store.read_log("a")).snapshot
                assert snapshot is not None
                store._kept_folds.max_bytes = 2 * len(snapshot) + 8
        assert len(store._kept_folds) == 2  # the oldest went
        await _typed_and_compacted(store, "a", docs["a"], "!")
        assert store.stats.compactions_from_kept == 0  # "a" was the one that went
        assert await store.delete("b")
        assert store._kept_folds.take("b", (await store.read_log("b")).snapshot) is None
    finally:
        await store.close()
    unkept = open_store(store_url, commit_window=0, compact_threshold=1_000_000, kept_fold_bytes=0)
    await unkept.open()
    try:
        await _typed_and_compacted(unkept, "d", crdt.Document(), "x")
        await _typed_and_compacted(unkept, "d", crdt.Document(), "y")
        assert len(unkept._kept_folds) == 0 and unkept.stats.compactions_from_kept == 0
    finally:
        await unkept.close()


@pytest.mark.parametrize("shared", ["sqlite", "postgres"])
async def test_a_snapshot_another_instance_swapped_in_is_folded_from_what_is_stored(
        shared: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two instances on one database: the one that kept a document must not fold the next log
    into it once the other has compacted the same document (its edits would be lost)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}" if shared == "sqlite" else str(
        request.getfixturevalue("postgres_database"))
    first, second = (open_store(url, commit_window=0, compact_threshold=1_000_000) for _ in range(2))
    await first.open()
    await second.open()
    try:
        doc = crdt.Document()
        await _typed_and_compacted(first, "shared", doc, "from the first; ")
        elsewhere = crdt.Document()
        elsewhere.load((await second.load("shared")).updates)
        await _typed_and_compacted(second, "shared", elsewhere, "from the second; ")
        doc.load([elsewhere.full_state()])
        await _typed_and_compacted(first, "shared", doc, "the first again")
        assert first.stats.compactions_from_kept == 0  # the stored snapshot is not the kept one
        stored = (await first.load("shared")).document()
        assert stored.text() == "from the first; from the second; the first again"
        # The first instance kept what it checked this time, and uses it next.
        await _typed_and_compacted(first, "shared", doc, ".")
        assert first.stats.compactions_from_kept == 1
        assert (await second.load("shared")).document().text() == doc.text()
    finally:
        await first.close()
        await second.close()


# --- with the stock Yjs client, through a real server -------------------------------------------


def _metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _stored_bytes(store: Path, name: str) -> bytes:
    """Everything the SQLite file holds for ``name``: its snapshot and every log row."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT data FROM snapshots WHERE doc = ? UNION ALL "
                          "SELECT data FROM updates WHERE doc = ?", (name, name)).fetchall()
    return b"".join(row[0] for row in rows)


async def _until(predicate: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_stock_yjs_clients_with_old_history_merge_after_collection(server_factory: object,
                                                                         tmp_path: Path) -> None:
    store = tmp_path / "collab.db"
    server = server_factory(f"sqlite:///{store}", args=["--room-idle", "0.2"])  # type: ignore[operator]
    async with js_clients() as clients:
        writer = await clients.start(server.ws_url, "doc", "writer")
        offline = await clients.start(server.ws_url, "doc", "offline")
        await writer.wait_synced()
        await offline.wait_synced()
        await writer.insert(0, "start end")
        await writer.insert(6, "CHUNK-0123456789")
        await offline.wait_text(equals="start CHUNK-0123456789end")
        await offline.disconnect()
        # While it is away: the chunk is deleted, and a lot is typed and deleted again.
        await writer.call("delete", index=6, length=16)
        for round_ in range(20):
            await writer.insert(6, chr(ord("a") + round_) * 2000)
            await writer.call("delete", index=6, length=2000)
        await writer.wait_saved()
        await offline.insert(11, "[offline]")  # inside the chunk it still sees
        await writer.exit()
        # The room is evicted once idle, and compacted on the way: deleted content collected.
        await _until(lambda: _metric(server, "collab_rooms") == 0
                     and _metric(server, "collab_store_collected_compactions_total") >= 1)
        # Gone from the file too, once the folded log rows are swept (within seconds).
        await _until(lambda: b"CHUNK" not in _stored_bytes(store, "doc"))
        stored = _stored_bytes(store, "doc")
        assert b"CHUNK" not in stored and b"aaaa" not in stored and len(stored) < 1000, len(stored)
        # A new client loads the collected document; the one with the old history comes back.
        late = await clients.start(server.ws_url, "doc", "late")
        assert await late.wait_synced() == "start end"
        await offline.connect()
        await offline.wait_saved()
        assert await late.wait_text(equals="start [offline]end") == "start [offline]end"
        assert await offline.wait_text(equals="start [offline]end") == "start [offline]end"


async def test_a_fold_of_many_small_updates_gives_the_loop_back_between_slices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A log of typed characters is small in bytes but not in work: the fold takes it in slices
    of a few updates, and the event loop runs between them, not once the whole log is in."""
    doc = crdt.Document()
    typed = [doc.edit_text(i, "x") or b"" for i in range(300)]
    monkeypatch.setattr(base, "FOLD_SLICE_SECONDS", 0.0)  # give the loop back after every slice
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    folded = await _fold_collected(typed)
    counter.cancel()
    assert folded is not None and crdt.document_from([folded[0]]).text() == "x" * 300
    assert turns >= 300 // base.FOLD_SLICE_UPDATES
