"""Damaged stores are never served as if whole: corrupted copies of real store files, made by a
real server, are refused at start or per document, exactly as docs/operations.md says."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from collab import codes, crdt, gate, protocol
from collab.store import open_store
from collab.transport.pollwire import encode_body
from tests.pyclient import PyClient
from tests.servers import ServerProcess, free_port
from tests.services import fresh_database, need_postgres


def collab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collab", *args], capture_output=True, text=True,
                          timeout=60)


def refused_start(store: Path) -> str:
    """Start a server on ``store``: it must refuse with one line and exit 3."""
    result = subprocess.run([sys.executable, "-m", "collab", "serve", "--port", str(free_port()),
                             "--store", f"sqlite:///{store}"], capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by a real server: "notes" (thirty edits, then compacted into a snapshot,
    then ten more in the log) and "fine". Stopped gracefully, so the file holds everything."""
    where = tmp_path_factory.mktemp("made")
    store = where / "collab.db"
    server = ServerProcess(f"sqlite:///{store}", log_path=where / "server.log",
                           args=["--compact-threshold", "20"]).start()
    try:
        async def write() -> None:
            notes = await PyClient(server.ws_url, "notes").start()
            def acks() -> int:
                return sum(isinstance(m, protocol.SyncUpdate) for m in notes.received)

            for index in range(40):  # one stored update each: wait for its durable ack
                await notes.insert(f"<edit {index:02d}>")
                await notes.wait_for(lambda index=index: acks() > index)
            other = await PyClient(server.ws_url, "fine").start()
            await other.insert("nothing wrong here")
            await other.wait_text("nothing wrong here")
            await notes.close()
            await other.close()

        asyncio.run(write())
    finally:
        assert server.terminate() == 0
    assert not Path(f"{store}-wal").exists() or Path(f"{store}-wal").stat().st_size == 0
    with sqlite3.connect(store) as db:  # the premises: a snapshot and log rows of "notes"
        assert db.execute("SELECT count(*) FROM snapshots WHERE doc = 'notes'").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM updates WHERE doc = 'notes'").fetchone()[0] >= 5
    return store


def copy_of(made: Path, into: Path) -> Path:
    copy = into / "copy.db"
    shutil.copyfile(made, copy)
    return copy


def corrupt_blob(store: Path, query: str) -> bytes:
    """Overwrite, in the file itself, the start of the blob that ``query`` selects with bytes
    the gate refuses (same length, so SQLite's pages stay well-formed): the damage a bad disk
    sector or a stray write does to a record. Returns the damaged blob as SQLite reads it."""
    with sqlite3.connect(store) as db:
        blob = db.execute(query).fetchone()[0]
    image = store.read_bytes()
    assert blob in image
    damaged = b"\xff" * 6 + blob[6:]
    store.write_bytes(image.replace(blob, damaged))
    with sqlite3.connect(store) as db:
        assert db.execute(query).fetchone()[0] == damaged
    with pytest.raises(crdt.InvalidUpdate):
        gate.check_update(damaged)
    return damaged


# --- the file as a whole: refused at start ----------------------------------------------------


def test_a_zero_byte_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    empty = tmp_path / "collab.db"
    empty.write_bytes(b"")
    line = refused_start(empty)
    assert line.startswith("collab cannot start: cannot open the store")
    assert "is not a collab store: it is empty (0 bytes)" in line
    assert empty.stat().st_size == 0  # nothing was written to it
    check = collab("db", "check", "--store", f"sqlite:///{empty}")
    assert check.returncode == 1 and "is not a collab store" in check.stdout


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (12.5)")
    before = other.read_bytes()
    line = refused_start(other)
    assert "is not a collab store: it lacks updates, snapshots (its tables: invoices)" in line
    assert other.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "collab.db"
    junk.write_bytes(b"this is a text file, not a database\n" * 200)
    assert "the file is not an SQLite database (file is not a database)" in refused_start(junk)


def test_a_store_with_damaged_pages_is_refused(made: Path, tmp_path: Path) -> None:
    copy = copy_of(made, tmp_path)
    with sqlite3.connect(copy) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'updates'").fetchone()[0]
    image = bytearray(copy.read_bytes())
    start = (root - 1) * page_size  # the root page of the update log: its header and cells
    image[start:start + page_size] = b"\x0d\xff\xff\xff" * (page_size // 4)
    copy.write_bytes(bytes(image))
    line = refused_start(copy)
    assert "the file is damaged: SQLite" in line, line
    check = collab("db", "check", "--store", f"sqlite:///{copy}")
    assert check.returncode == 1 and "is damaged" in check.stdout


def test_a_missing_file_is_created_whole(tmp_path: Path) -> None:
    store = tmp_path / "new" / "collab.db"
    result = collab("db", "upgrade", "--store", f"sqlite:///{store}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in store.parent.iterdir()) == ["collab.db"]  # nothing half-made left
    check = collab("db", "check", "--store", f"sqlite:///{store}")
    assert check.returncode == 0 and check.stdout == ""
    assert "0 documents checked, 0 damaged, 0 incomplete" in check.stderr


def test_db_check_does_not_create_a_missing_store(tmp_path: Path) -> None:
    check = collab("db", "check", "--store", f"sqlite:///{tmp_path / 'typo.db'}")
    assert check.returncode == 2 and "no SQLite store" in check.stderr
    assert not (tmp_path / "typo.db").exists()


# --- one document damaged: refused, the others served ------------------------------------------


@pytest.fixture(params=["log entry", "snapshot"])
def damaged(request: pytest.FixtureRequest, made: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A copy of the store with one stored update of "notes" damaged, and how it is named."""
    copy = copy_of(made, tmp_path)
    if request.param == "snapshot":
        corrupt_blob(copy, "SELECT data FROM snapshots WHERE doc = 'notes'")
        yield copy, "the snapshot is refused"
        return
    with sqlite3.connect(copy) as db:
        seq = db.execute("SELECT seq FROM updates WHERE doc = 'notes' ORDER BY seq LIMIT 1 OFFSET 2"
                         ).fetchone()[0]
    corrupt_blob(copy, f"SELECT data FROM updates WHERE seq = {seq}")
    yield copy, f"log entry {seq} is refused"


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


async def close_of(url: str) -> tuple[int | None, str]:
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        return ws.close_code, ws.close_reason


def test_a_damaged_document_is_refused_everywhere_and_reported(
        damaged: tuple[Path, str], tmp_path: Path) -> None:
    copy, named = damaged
    server = ServerProcess(f"sqlite:///{copy}", log_path=tmp_path / "server.log",
                           env={"COLLAB_LOG_LEVEL": "info"}).start()
    try:
        code, reason = asyncio.run(close_of(f"{server.ws_url}/notes"))
        assert code == codes.DOCUMENT_DAMAGED.close == 4500
        assert reason.startswith("document damaged in the store: ") and named in reason
        # The HTTP fallback, the document API (read and write): the same refusal and reason.
        update = crdt.Document().edit_text(0, "more") or b""
        for method, path, body in [
                ("POST", "/poll/notes?client=abcdefgh", encode_body([protocol.encode_sync_step1(b"\x00")])),
                ("GET", "/api/docs/notes", None),
                ("GET", "/api/docs/notes/update", None),
                ("POST", "/api/docs/notes/update", update)]:
            status, text = http(method, server.http_url + path, body)
            assert (status, named in text) == (codes.DOCUMENT_DAMAGED.http, True), (method, path, text)
        # Another document of the same store is served.
        assert http("GET", server.http_url + "/api/docs/fine") == (200, "nothing wrong here")
        metrics = http("GET", server.http_url + "/metrics")[1]
        assert "collab_damaged_documents 1.0" in metrics
        loads = [line for line in metrics.splitlines() if line.startswith("collab_damaged_loads_total")]
        refusals = [line for line in metrics.splitlines()
                    if line.startswith("collab_damaged_refusals_total")]
        assert float(loads[0].split()[1]) >= 1 and float(refusals[0].split()[1]) >= 5
        # Deleting is how an operator clears it; then the name may be used again.
        assert http("DELETE", server.http_url + "/api/docs/notes")[0] == 204
        assert http("POST", server.http_url + "/api/docs/notes/update?recreate=1", update)[0] == 204
        assert http("GET", server.http_url + "/api/docs/notes") == (200, "more")
    finally:
        assert server.terminate() == 0
    log = (tmp_path / "server.log").read_text()
    assert "document 'notes' is damaged in the store and is refused" in log and named in log
    assert log.count("is damaged in the store") == 1  # once per finding, not once per client


def test_export_and_db_check_report_the_damaged_document(damaged: tuple[Path, str]) -> None:
    copy, named = damaged
    store = f"sqlite:///{copy}"
    export = collab("export", "notes", "--store", store)
    assert export.returncode == 1 and export.stdout == ""
    assert "document 'notes' is damaged in the store" in export.stderr and named in export.stderr
    assert collab("export", "fine", "--store", store).stdout == "nothing wrong here"
    check = collab("db", "check", "--store", store)
    assert check.returncode == 1
    lines = check.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("damaged     notes  ") and named in lines[0]
    assert "2 documents checked, 1 damaged, 0 incomplete" in check.stderr


def test_db_check_passes_a_whole_store(made: Path, tmp_path: Path) -> None:
    check = collab("db", "check", "--store", f"sqlite:///{copy_of(made, tmp_path)}")
    assert check.returncode == 0 and check.stdout == ""
    assert "2 documents checked, 0 damaged, 0 incomplete" in check.stderr


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    need_postgres()
    with fresh_database() as url:
        yield url


def test_db_check_on_postgres_lists_damaged_and_incomplete_documents(postgres_url: str) -> None:
    import asyncpg

    writer = crdt.Document()
    first, second = writer.edit_text(0, "hello"), writer.edit_text(5, " world")
    assert first and second

    async def fill() -> None:
        store = open_store(postgres_url)
        await store.open()
        try:
            for name in ("whole", "damaged", "incomplete"):
                await store.append(name, first if name != "incomplete" else second)
                if name != "incomplete":
                    await store.append(name, second)
            await store.compact("whole")
        finally:
            await store.close()
        conn = await asyncpg.connect(postgres_url)
        try:  # a damaged row, as a bad write or a broken restore would leave it
            await conn.execute("UPDATE collab_updates SET data = overlay(data placing "
                               "'\\xffffffffffff'::bytea from 1) WHERE doc = 'damaged' AND seq = "
                               "(SELECT max(seq) FROM collab_updates WHERE doc = 'damaged')")
        finally:
            await conn.close()

    asyncio.run(fill())
    check = collab("db", "check", "--store", postgres_url)
    assert check.returncode == 1
    lines = check.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["damaged", "damaged"], ["incomplete", "incomplete"]]
    assert "is refused" in lines[0] and "1 stored updates wait" in lines[1]
    assert "3 documents checked, 1 damaged, 1 incomplete" in check.stderr
    export = collab("export", "damaged", "--store", postgres_url)
    assert export.returncode == 1 and "is damaged in the store" in export.stderr
    assert collab("export", "whole", "--store", postgres_url).stdout == "hello world"


# --- a rebuild that finds the store damaged ----------------------------------------------------


async def test_a_rebuild_that_finds_the_store_damaged_closes_the_room(tmp_path: Path) -> None:
    from collab.room import Room
    from tests.test_room import RecordingBus, RecordingPeer, joined
    from tests.test_room_hostile import PANIC, PanicDocument, client_777_text

    store = open_store(f"sqlite:///{tmp_path / 'collab.db'}")
    await store.open()
    try:
        room = Room("r", store, RecordingBus(), durable_acks=False)
        room.doc = PanicDocument()
        found: list[crdt.DamagedDocument] = []
        room.on_damaged = found.append
        alice, bob = joined(room), joined(room)
        room.receive(alice, protocol.SyncUpdate(client_777_text("hello world")))
        await store.flush()
        [position] = await store._write_batch([("r", b"\xff" * 12)])  # a damaged row, as a bad disk leaves it
        room.receive(bob, protocol.SyncUpdate(PANIC))  # the engine panics: the room rebuilds
        carol = room.join(RecordingPeer(), alice.access)  # arrived while it rebuilds
        await asyncio.wait_for(room.ready(), 5)
        assert [damage.reason.split(":")[0] for damage in found] == [f"log entry {position} is refused"]
        assert room.damaged is found[0]
        assert isinstance(alice.peer, RecordingPeer) and isinstance(carol.peer, RecordingPeer)
        assert alice.peer.closed is not None and alice.peer.closed[0] == codes.DOCUMENT_DAMAGED.close
        assert carol.peer.closed is not None and carol.peer.closed[0] == codes.DOCUMENT_DAMAGED.close
        assert f"log entry {position} is refused" in carol.peer.closed[1]
    finally:
        await store.close()
