"""Stock npm clients (y-websocket 3 + yjs 13 in Node) against a real ``collab serve``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from collab import protocol
from tests.jsclient import JsClient, JsClientError, js_clients, need_node
from tests.servers import ServerProcess

pytestmark = [pytest.mark.node, pytest.mark.timeout(90)]

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(autouse=True)
def _node() -> None:
    need_node()


async def restart(server_factory: ServerFactory, old: ServerProcess, **kwargs: object) -> ServerProcess:
    """A new server on the old one's port (the clients' URL stays valid)."""
    return await asyncio.to_thread(server_factory, port=old.port, **kwargs)


async def converged(*clients: JsClient, tokens: tuple[str, ...]) -> str:
    """Wait until every client holds every token, then check they hold the same text."""
    texts = [await c.wait_text(*tokens) for c in clients]
    # Each already has all tokens; give stragglers the final text to match.
    final = texts[0]
    texts = [await c.wait_text(equals=final) for c in clients]
    assert len(set(texts)) == 1
    return final


async def test_several_clients_converge(server: ServerProcess) -> None:
    async with js_clients() as js:
        clients = [await js.start(server.ws_url, "converge") for _ in range(3)]
        for client in clients:
            await client.wait_synced()
        tokens = tuple(f"<token-{i}>" for i in range(len(clients)))
        # Concurrent inserts at the same position: the CRDT must order them identically everywhere.
        await asyncio.gather(*(c.insert(0, t) for c, t in zip(clients, tokens, strict=True)))
        await asyncio.gather(*(c.append(t.upper()) for c, t in zip(clients, tokens, strict=True)))
        text = await converged(*clients, tokens=tokens + tuple(t.upper() for t in tokens))
        assert len(text) == 2 * sum(len(t) for t in tokens)


async def test_late_joiner_gets_whole_document(server: ServerProcess) -> None:
    async with js_clients() as js:
        first, second = await js.start(server.ws_url, "late"), await js.start(server.ws_url, "late")
        await first.wait_synced()
        await second.wait_synced()
        await first.append("first line\n")
        await second.wait_text("first line")
        await second.append("second line\n")
        full = await first.wait_text("second line")
        late = await js.start(server.ws_url, "late")
        assert await late.wait_synced() == full


async def test_large_document(server: ServerProcess) -> None:
    big = "".join(f"line {i:06d} ✓\n" for i in range(80_000))  # about 1.1 MB of UTF-8
    async with js_clients() as js:
        writer = await js.start(server.ws_url, "large")
        await writer.wait_synced()
        await writer.call("append", text=big, timeout=30)
        await writer.wait_saved(timeout=30)
        reader = await js.start(server.ws_url, "large")
        await reader.wait_synced(timeout=30)
        assert (await reader.call("text", timeout=30))["text"] == big


async def test_offline_edits_merge_on_reconnect(server: ServerProcess) -> None:
    async with js_clients() as js:
        online, offline = await js.start(server.ws_url, "offline"), await js.start(server.ws_url, "offline")
        await online.append("shared start.")
        await offline.wait_text("shared start.")
        await offline.disconnect()
        await offline.insert(0, "[written offline]")
        await online.append("[written online]")
        await online.wait_saved()
        assert "[written online]" not in await offline.text()
        assert "[written offline]" not in await online.text()
        await offline.connect()
        await converged(online, offline, tokens=("shared start.", "[written offline]", "[written online]"))


async def test_awareness_reaches_others_and_dies_with_the_connection(server: ServerProcess) -> None:
    async with js_clients() as js:
        alice, bob = await js.start(server.ws_url, "presence"), await js.start(server.ws_url, "presence")
        await alice.set_awareness({"user": {"name": "Alice", "color": "#f00"}, "cursor": 3})
        await bob.set_awareness({"user": {"name": "Bøb ✓"}})
        seen_by_bob = await bob.wait_awareness(present=[alice.client_id])
        seen_by_alice = await alice.wait_awareness(present=[bob.client_id])
        assert seen_by_bob[alice.client_id] == {"user": {"name": "Alice", "color": "#f00"}, "cursor": 3}
        assert seen_by_alice[bob.client_id] == {"user": {"name": "Bøb ✓"}}

        # Killed, so it cannot send its own removal: the server must announce it.
        started = time.monotonic()
        await alice.kill()
        after = await bob.wait_awareness(absent=[alice.client_id], timeout=10)
        elapsed = time.monotonic() - started
        assert alice.client_id not in after and bob.client_id in after
        assert elapsed < 10, f"presence removed after {elapsed:.1f} s (stock clients time out at 30 s)"


async def test_presence_returns_after_a_dropped_connection(server: ServerProcess) -> None:
    async with js_clients() as js:
        alice, bob = await js.start(server.ws_url, "comeback"), await js.start(server.ws_url, "comeback")
        await alice.call("reannounce_on_connect")
        await alice.set_awareness({"name": "alice"})
        await bob.wait_awareness(present=[alice.client_id])
        await alice.call("drop")
        # The server announces the cut at once ...
        await bob.wait_awareness(absent=[alice.client_id], timeout=5)
        # ... and alice, reconnecting and re-announcing herself, must be seen again; a removal
        # the server made up with a newer clock than alice's own would hide her until her state
        # is renewed twice (30 s).
        await alice.wait_event(lambda e: e.get("status") == "connected", start=1)
        await alice.wait_synced()
        assert (await bob.wait_awareness(present=[alice.client_id], timeout=5))[alice.client_id] == {
            "name": "alice"}


async def read_until(ws: object, predicate: Callable[[protocol.Message], bool], timeout: float = 5.0
                     ) -> protocol.Message:
    async def scan() -> protocol.Message:
        while True:
            message = protocol.decode_message(await ws.recv())  # type: ignore[attr-defined]
            if predicate(message):
                return message

    return await asyncio.wait_for(scan(), timeout)


def awareness_states(message: protocol.Message) -> dict[int, object]:
    assert isinstance(message, protocol.AwarenessUpdate)
    return {e.client_id: json.loads(e.state) for e in protocol.decode_awareness_payload(message.payload)}


async def test_query_awareness_is_answered(server: ServerProcess) -> None:
    async with js_clients() as js:
        alice, bob = await js.start(server.ws_url, "query"), await js.start(server.ws_url, "query")
        await alice.set_awareness({"name": "alice"})
        await bob.set_awareness({"name": "bob"})
        await alice.wait_awareness(present=[bob.client_id])
        await bob.wait_awareness(present=[alice.client_id])
        expected = {alice.client_id: {"name": "alice"}, bob.client_id: {"name": "bob"}}

        async with connect(f"{server.ws_url}/query", open_timeout=5) as ws:
            await read_until(ws, lambda m: isinstance(m, protocol.SyncStep1))
            await ws.send(protocol.encode_query_awareness())
            answer = await read_until(
                ws, lambda m: isinstance(m, protocol.AwarenessUpdate)
                and set(awareness_states(m)) >= set(expected))
            states = awareness_states(answer)
            assert {cid: states[cid] for cid in expected} == expected


async def test_documents_are_isolated(server: ServerProcess) -> None:
    async with js_clients() as js:
        one, two = await js.start(server.ws_url, "room-one"), await js.start(server.ws_url, "room-two")
        await one.wait_synced()
        await two.wait_synced()
        await one.append("only in one")
        await two.append("only in two")
        await one.wait_saved()
        await two.wait_saved()
        reader_one = await js.start(server.ws_url, "room-one")
        reader_two = await js.start(server.ws_url, "room-two")
        assert await reader_one.wait_text(equals="only in one") == "only in one"
        assert await reader_two.wait_text(equals="only in two") == "only in two"
        assert await one.text() == "only in one"
        assert await two.text() == "only in two"


@pytest.mark.parametrize(("first", "second"), [
    pytest.param("a/b", "a%2Fb", id="slash and encoded slash"),
    pytest.param("caf\u00e9", "cafe\u0301", id="two Unicode spellings"),
])
async def test_names_that_decode_alike_are_different_documents(
        server: ServerProcess, first: str, second: str) -> None:
    async with js_clients() as js:
        one, two = await js.start(server.ws_url, first), await js.start(server.ws_url, second)
        await one.wait_synced()
        await two.wait_synced()
        await one.append("first")
        await two.append("second")
        await one.wait_saved()
        await two.wait_saved()
        assert await (await js.start(server.ws_url, first)).wait_text(equals="first") == "first"
        assert await (await js.start(server.ws_url, second)).wait_text(equals="second") == "second"
        assert await one.text() == "first"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_documents_survive_a_restart(server_factory: ServerFactory, how: str) -> None:
    server = server_factory()
    async with js_clients() as js:
        writer, watcher = await js.start(server.ws_url, "durable"), await js.start(server.ws_url, "durable")
        await writer.wait_synced()
        await writer.append("survives ")
        await writer.append("the restart")
        # The server has applied it once another client sees it...
        await watcher.wait_text(equals="survives the restart")
        if how == "sigterm":
            # ...and a graceful stop must flush it with no further help.
            assert await asyncio.to_thread(server.terminate) == 0
            closed = await watcher.wait_event(lambda e: e["event"] == "closed")
            assert closed["code"] == 1012, closed  # "service restart": reconnect at once
        else:
            # ...and a crash loses nothing the server acknowledged as stored.
            await writer.wait_saved()
            await asyncio.to_thread(server.kill)
        # No client that still holds the text may hand it back to the new server.
        await writer.kill()
        await watcher.kill()

        server = await restart(server_factory, server)
        reader = await js.start(server.ws_url, "durable")
        assert await reader.wait_text(equals="survives the restart") == "survives the restart"


async def test_empty_server_gets_document_back_from_open_clients(
        server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory()
    async with js_clients() as js:
        alice, bob = await js.start(server.ws_url, "phoenix"), await js.start(server.ws_url, "phoenix")
        await alice.wait_synced()
        await bob.wait_synced()
        await alice.call("reannounce_on_connect")  # see test_presence_returns_after_a_dropped_connection
        await alice.set_awareness({"name": "alice"})
        await alice.append("[alice before]")
        await bob.wait_text("[alice before]")
        await bob.append("[bob before]")
        await converged(alice, bob, tokens=("[alice before]", "[bob before]"))

        await asyncio.to_thread(server.kill)
        await alice.wait_event(lambda e: e == {"event": "status", "status": "disconnected"})
        await bob.wait_event(lambda e: e == {"event": "status", "status": "disconnected"})
        # Edits made while no server runs.
        await alice.insert(0, "[alice offline]")
        await bob.append("[bob offline]")

        empty = f"sqlite:///{tmp_path / 'empty.db'}"
        server = await restart(server_factory, server, store=empty)
        tokens = ("[alice before]", "[bob before]", "[alice offline]", "[bob offline]")
        # They reconnect on their own (stock backoff, at most 2.5 s) and exchange everything.
        text = await converged(alice, bob, tokens=tokens)
        # Presence comes back too: the reconnecting client announces itself to the new server.
        assert (await bob.wait_awareness(present=[alice.client_id]))[alice.client_id] == {"name": "alice"}
        newcomer = await js.start(server.ws_url, "phoenix")
        assert await newcomer.wait_text(equals=text) == text

        # And the new server stored what the clients gave back.
        await alice.wait_saved()
        await bob.wait_saved()
        for client in (alice, bob, newcomer):
            await client.kill()
        assert await asyncio.to_thread(server.terminate) == 0
        server = await restart(server_factory, server, store=empty)
        assert await (await js.start(server.ws_url, "phoenix")).wait_text(equals=text) == text


async def test_a_lone_silent_stock_client_is_never_dropped(server: ServerProcess) -> None:
    """The stock client closes a socket that carried nothing for 30 s. With no presence of its
    own (so no renewals to echo) and nobody else in the room, only the server's keepalive
    (every 15 s by default) holds it: 40 s here without a single disconnection."""
    async with js_clients() as js:
        client = await js.start(server.ws_url, "lonely")
        await client.wait_synced()
        await client.set_awareness(None)
        start = len(client.events)
        with pytest.raises(JsClientError, match="no matching event"):
            await client.wait_event(
                lambda e: e.get("event") == "closed" or e.get("status") == "disconnected",
                timeout=40, start=start)
        assert (await client.call("info")).get("status", "connected") == "connected"


async def test_one_client_leaving_removes_only_its_own_presence(server: ServerProcess) -> None:
    """Stock clients re-send every awareness change they hear, others' states included; the
    server must still remove only the leaver's presence, or every cursor flickers."""
    async with js_clients() as js:
        alice, bob, carol = [await js.start(server.ws_url, "trio", label) for label in "abc"]
        for client in (alice, bob, carol):
            await client.set_awareness({"name": client.label})
        everyone = [alice.client_id, bob.client_id, carol.client_id]
        for client in (bob, carol):
            await client.wait_awareness(present=everyone)
        start = len(carol.events)
        await alice.kill()
        await carol.wait_awareness(absent=[alice.client_id], present=[bob.client_id, carol.client_id])
        removed = [cid for e in carol.events[start:] if e.get("event") == "awareness"
                   for cid in e["removed"]]
        assert removed == [alice.client_id]
