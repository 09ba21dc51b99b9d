"""Store faults as an operator meets them: a full disk, a database that refuses connections.
Nothing the server accepted is lost, no ack is sent for what the store lacks, and health and
shutdown say what is so. Real parts only: SQLite on a small tmpfs filled to its last byte,
the real PostgreSQL, real servers and clients on loopback."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from collab import codes, crdt, gate, protocol
from collab.admission import READ
from collab.bus import BusMessage, Kind, LocalBus
from collab.cli import EXIT_NOT_STORED
from collab.codes import Refused
from collab.room import Room
from collab.store import open_store
from collab.store.sqlite import SQLiteStore
from tests.faults import allow_connections, fill, refuse_connections, small_disk
from tests.metrics import scrape
from tests.pollclient import PollClient
from tests.pyclient import PyClient
from tests.servers import ServerProcess
from tests.services import POSTGRES_URL, PrivateRedis, fresh_database, wait_until
from tests.test_room import RecordingPeer, joined, updates


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk") as mounted:
        yield mounted


def typed(count: int, size: int = 24_000) -> tuple[crdt.Document, list[bytes]]:
    """``count`` edits of one writer (each ``size`` characters, so that a full disk cannot
    take them in whatever room SQLite's files have left)."""
    doc = crdt.Document()
    edits = []
    for i in range(count):
        update = doc.edit_text(len(doc.text()), f"<{i}>" + "x" * size)
        assert update is not None
        edits.append(update)
    return doc, edits


async def test_a_full_disk_keeps_refused_updates_and_writes_them_in_order_once_space_returns(
        disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="collab.store")
    store = SQLiteStore(disk / "collab.db", commit_window=0)
    await store.open()
    try:
        doc, edits = typed(8)
        await store.append("doc", edits[0])
        filler = fill(disk)
        waiting = [store.append("doc", update) for update in edits[1:]]
        await wait_until(lambda: store.stats.commit_failures >= 3)
        assert "database or disk is full" in str(store.failing)
        assert not any(future.done() for future in waiting)  # not stored: not resolved
        assert store.unstored == len(waiting)
        assert store.unstored_bytes == sum(len(update) for update in edits[1:])
        filler.unlink()
        positions = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert positions == sorted(positions)  # in the order they were accepted
        assert store.failing is None and store.unstored == 0
        stored = await store.load("doc")
        assert crdt.document_from(stored.updates).text() == doc.text()
    finally:
        await store.close(timeout=2)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # once per episode, with the real error
    assert "database or disk is full" in errors[0]
    assert not any("cannot rollback" in r.getMessage() for r in caplog.records)
    assert store.stats.failure_episodes == 1
    assert any("takes commits again" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)


async def test_closing_a_store_that_refuses_reports_what_it_could_not_store(disk: Path) -> None:
    store = SQLiteStore(disk / "collab.db", commit_window=0)
    await store.open()
    _doc, edits = typed(4)
    filler = fill(disk)
    try:
        waiting = [store.append("doc", update) for update in edits]
        await wait_until(lambda: store.failing is not None)
        assert await store.close(timeout=0.3) == len(edits)
        assert store.stats.updates_not_stored == len(edits)
        for future in waiting:
            assert isinstance(future.exception(), Exception)
    finally:
        filler.unlink()


async def test_a_client_resending_what_the_store_lacks_is_acked_only_once_it_is_stored(
        disk: Path) -> None:
    store = SQLiteStore(disk / "collab.db", commit_window=0)
    await store.open()
    try:
        room = Room("doc", store, LocalBus())
        room.load(await store.load("doc"))
        _doc, edits = typed(3)
        filler = fill(disk)
        first = joined(room)
        for update in edits[:2]:
            room.receive(first, protocol.SyncUpdate(update))
        # Heard from another instance, not stored by this one: a resend of it must store it.
        room.on_bus_message(BusMessage("doc", Kind.UPDATE, edits[2]))
        await wait_until(lambda: store.stats.commit_failures >= 2)
        room.leave(first)
        again = joined(room)  # the client reconnects and resends what was never acked
        before = len(updates(again))
        for update in edits:
            room.receive(again, protocol.SyncUpdate(update))
        await wait_until(lambda: store.stats.commit_failures >= 4)
        assert len(updates(again)) == before  # duplicates, but not stored: no ack
        assert len(updates(first)) == 1  # the update heard on the bus; no ack
        filler.unlink()
        await wait_until(lambda: len(updates(again)) == before + 3)
        assert room.stats.stored_again_for_acks == 1
        stored = crdt.document_from((await store.load("doc")).updates)
        assert all(stored.covers(update) for update in edits)
    finally:
        await store.close(timeout=2)


async def test_past_the_backlog_bound_writers_are_told_to_try_again(disk: Path) -> None:
    store = SQLiteStore(disk / "collab.db", commit_window=0, max_unstored_updates=2)
    await store.open()
    try:
        room = Room("doc", store, LocalBus())
        _doc, edits = typed(3)
        filler = fill(disk)
        writer, reader, newcomer = joined(room), joined(room, READ), joined(room)
        room.receive(writer, protocol.SyncUpdate(edits[0]))
        room.receive(writer, protocol.SyncUpdate(edits[1]))
        assert store.backlog_full
        with pytest.raises(Refused) as refused:
            room.receive(newcomer, protocol.SyncUpdate(edits[2]))
        assert refused.value.close_code == codes.TRY_AGAIN.close
        assert not room.doc.covers(edits[2])  # refused: the document did not change
        assert isinstance(writer.peer, RecordingPeer) and isinstance(reader.peer, RecordingPeer)
        assert writer.peer.closed is not None and writer.peer.closed[0] == codes.TRY_AGAIN.close
        assert reader.peer.closed is None  # it brought nothing unstored
        filler.unlink()
        assert await store.flush(timeout=10)
        stored = crdt.document_from((await store.load("doc")).updates)
        assert stored.covers(edits[0]) and stored.covers(edits[1])
    finally:
        await store.close(timeout=2)


# --- a real server ---------------------------------------------------------------------------

def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


async def status_of(url: str) -> int:
    return await asyncio.to_thread(http_status, url)


async def wait_status(url: str, wanted: int, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (status := await status_of(url)) != wanted:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{url} answers {status}, not {wanted}")
        await asyncio.sleep(0.1)


async def metric(server: ServerProcess, name: str) -> float:
    return (await asyncio.to_thread(scrape, server.http_url)).value(name)


async def wait_metric(server: ServerProcess, name: str, wanted: float, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await metric(server, name)) != wanted:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} is {value}, not {wanted}")
        await asyncio.sleep(0.1)


class Typist:
    """A client that types into its document and counts how much of it was acknowledged."""

    def __init__(self, client: PyClient) -> None:
        self.client = client
        self.own: int | None = None
        self.typed = 0

    async def type(self, count: int) -> None:
        for _ in range(count):
            before = set(self.client.doc.clocks())
            await self.client.insert(chr(ord("a") + self.typed % 26))
            self.typed += 1
            if self.own is None:
                self.own = next(iter(set(self.client.doc.clocks()) - before))
            await asyncio.sleep(0.01)

    def acked(self) -> int:
        """How many of its edits (one character, one clock each) the server acknowledged."""
        best = 0
        for message in self.client.received:
            if isinstance(message, protocol.SyncUpdate):
                clocks = gate.inspect(message.update).clocks
                if self.own in clocks:
                    best = max(best, clocks[self.own][1])
        return best


async def stored_texts(url: str, names: list[str]) -> dict[str, str]:
    store = open_store(url)
    await store.open()
    try:
        return {name: crdt.document_from((await store.load(name)).updates).text() for name in names}
    finally:
        await store.close()


async def test_a_server_on_a_full_disk_is_unready_keeps_every_edit_and_stores_it_after(
        disk: Path, server_factory: Callable[..., ServerProcess]) -> None:
    url = f"sqlite:///{disk / 'collab.db'}"
    server = server_factory(url, args=["--room-idle", "0.2"])
    names = ["alpha", "beta"]
    typists = [Typist(await PyClient(server.ws_url, name).start()) for name in names]
    try:
        await asyncio.gather(*(t.type(10) for t in typists))
        await wait_until(lambda: all(t.acked() == 10 for t in typists))
        filler = fill(disk)
        try:
            await asyncio.gather(*(t.type(15) for t in typists))
            await wait_status(server.http_url + "/readiness_check", 503)
            assert await status_of(server.http_url + "/liveness_check") == 200
            assert await metric(server, "collab_store_failing") == 1
            assert await metric(server, "collab_store_unstored_updates") >= 2
            failures = await metric(server, "collab_store_commit_failures_total")
            assert all(t.acked() == 10 for t in typists)  # nothing acked that is not stored
            assert failures >= 1
        finally:
            filler.unlink()
        await wait_status(server.http_url + "/readiness_check", 200)
        await wait_until(lambda: all(t.acked() == 25 for t in typists), timeout=15)
        expected = {name: t.client.text() for name, t in zip(names, typists, strict=True)}
    finally:
        for typist in typists:
            await typist.client.close()
    await wait_metric(server, "collab_rooms", 0)  # evicted: everything it held is stored
    assert server.terminate() == 0
    log = server.log()
    assert log.count("database or disk is full") == 1, log
    assert "cannot rollback" not in log
    assert "takes commits again" in log
    assert await stored_texts(url, names) == expected


async def test_sigterm_with_unstored_updates_waits_then_reports_them_and_fails(
        disk: Path, server_factory: Callable[..., ServerProcess]) -> None:
    url = f"sqlite:///{disk / 'collab.db'}"
    server = server_factory(url, args=["--shutdown-store-wait", "1"])
    typist = Typist(await PyClient(server.ws_url, "doc").start())
    filler = None
    try:
        await typist.type(3)
        await wait_until(lambda: typist.acked() == 3)
        filler = fill(disk)
        await typist.type(7)
        await wait_status(server.http_url + "/readiness_check", 503)
        assert await metric(server, "collab_store_unstored_updates") == 7
        started = time.monotonic()
        code = await asyncio.to_thread(server.terminate, 30.0)
        waited = time.monotonic() - started
    finally:
        await typist.client.close()
        if filler is not None:
            filler.unlink()
    assert code == EXIT_NOT_STORED
    assert "collab stopped with 7 accepted updates NOT stored" in server.log()
    assert waited < 30  # bounded: it did not wait for the disk
    assert typist.acked() == 3


# --- PostgreSQL unavailable, two instances and Redis --------------------------------------------

@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


async def test_a_database_outage_under_two_instances_loses_nothing_and_acks_nothing_unstored(
        database: str, redis_server: PrivateRedis,
        server_factory: Callable[..., ServerProcess]) -> None:
    name = urlsplit(database).path.lstrip("/")
    shared = ["--redis", redis_server.url, "--room-idle", "0.2"]
    servers = [server_factory(database, args=shared) for _ in range(2)]
    typists = [Typist(await PyClient(server.ws_url, "shared").start()) for server in servers]
    try:
        await asyncio.gather(*(t.type(10) for t in typists))
        await wait_until(lambda: all(t.acked() == 10 for t in typists))
        await refuse_connections(POSTGRES_URL, name)
        try:
            await asyncio.gather(*(t.type(15) for t in typists))
            for server in servers:
                await wait_status(server.http_url + "/readiness_check", 503)
                assert await status_of(server.http_url + "/liveness_check") == 200
            assert all(t.acked() == 10 for t in typists)  # nothing acked that is not stored
        finally:
            await allow_connections(POSTGRES_URL, name)
        for server in servers:
            await wait_status(server.http_url + "/readiness_check", 200, timeout=20)
        await wait_until(lambda: all(t.acked() == 25 for t in typists), timeout=20)
        await wait_until(lambda: typists[0].client.text() == typists[1].client.text())
        expected = typists[0].client.text()
        assert len(expected) == 50
    finally:
        for typist in typists:
            await typist.client.close()
    for server in servers:
        await wait_metric(server, "collab_rooms", 0)  # evicted: everything it held is stored
    for server in servers:
        assert server.terminate() == 0
        assert server.log().count("the store refuses commits") == 1, server.log()
        assert "takes commits again" in server.log()
    assert await stored_texts(database, ["shared"]) == {"shared": expected}


async def test_over_the_http_fallback_acks_wait_for_the_store_through_503_and_resends(
        disk: Path, server_factory: Callable[..., ServerProcess]) -> None:
    url = f"sqlite:///{disk / 'collab.db'}"
    server = server_factory(url, args=["--room-idle", "0.2", "--poll-presence-hold", "0.5"])
    client = await PollClient(server.http_url + "/poll", "doc").start()
    try:
        for ch in "abc":
            await client.insert(ch)
        await client.wait_for(lambda: client.acks >= 3)
        await asyncio.sleep(0.3)  # a quiet moment: no ack is on its way
        acked = client.acks
        filler = fill(disk)
        try:
            for ch in "defg":
                await client.insert(ch)
            await wait_status(server.http_url + "/readiness_check", 503)
            # A send waits for the store, then is answered "try again"; the client resends.
            deadline = asyncio.get_running_loop().time() + 30
            while (await asyncio.to_thread(scrape, server.http_url)).value(
                    "collab_poll_refused_total", status="503") < 1:
                assert asyncio.get_running_loop().time() < deadline, "no send was answered 503"
                await asyncio.sleep(0.2)
            assert client.acks == acked  # nothing acked that is not stored
        finally:
            filler.unlink()
        await client.wait_for(lambda: client.acks >= acked + 4, timeout=20)
        expected = client.text()
    finally:
        await client.close()
    await wait_metric(server, "collab_rooms", 0, timeout=40)
    assert server.terminate() == 0
    assert await stored_texts(url, ["doc"]) == {"doc": expected}


def test_an_import_into_a_store_that_refuses_fails_clearly_instead_of_waiting(disk: Path) -> None:
    store = f"sqlite:///{disk / 'collab.db'}"
    text = disk.parent / "notes.txt"
    text.write_text("before\n")
    assert cli("db", "upgrade", "--store", store).returncode == 0
    assert cli("import", "first", str(text), "--store", store).returncode == 0
    text.write_text("x" * 200_000)
    filler = fill(disk)
    try:
        result = cli("import", "second", str(text), "--store", store)
    finally:
        filler.unlink()
    assert result.returncode != 0
    # SQLite fails opening its write-ahead log, or the write: either way the real reason.
    assert "disk I/O error" in result.stderr or "database or disk is full" in result.stderr
    assert "Traceback" not in result.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collab", *args], capture_output=True, text=True,
                          timeout=60)
