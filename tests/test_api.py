"""The document API against a real server: read, apply (a stock client sees it), list, delete
(live clients closed with 4410, nothing comes back on reconnect), bad requests refused with the
reason, and a delete on one instance closing the clients of another."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collab import crdt
from tests.jsclient import js_clients, need_node
from tests.pyclient import PyClient
from tests.servers import ServerProcess
from tests.services import PrivateRedis, fresh_database

ServerFactory = Callable[..., ServerProcess]


def call(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


async def acall(method: str, url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(call, method, url, body)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition no event announces (a client's close codes), bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def update_inserting(text: str, base: bytes | None = None) -> bytes:
    doc = crdt.document_from([base] if base else [])
    update = doc.edit_text(len(doc.text()), insert=text)
    assert update is not None
    return update


async def test_read_text_and_update_of_a_live_document(server: ServerProcess) -> None:
    writer = await PyClient(server.ws_url, "caf%C3%A9%20notes").start()
    await writer.insert("héllo ✓")
    status, kind, body = await acall("GET", server.http_url + "/api/docs/caf%C3%A9%20notes")
    assert (status, kind, body.decode()) == (200, "text/plain; charset=utf-8", "héllo ✓")
    status, kind, body = await acall("GET", server.http_url + "/api/docs/caf%C3%A9%20notes/update")
    assert (status, kind) == (200, "application/octet-stream")
    assert crdt.document_from([body]).text() == "héllo ✓"
    await writer.close()
    missing = await acall("GET", server.http_url + "/api/docs/nothing-here")
    assert missing[0] == 404 and b"no document named 'nothing-here'" in missing[2]


@pytest.mark.node
async def test_an_applied_update_reaches_a_stock_client_and_the_store(server_factory: ServerFactory,
                                                                      tmp_path: Path) -> None:
    need_node()
    store = f"sqlite:///{tmp_path / 'api.db'}"
    server = server_factory(store)
    async with js_clients() as js:
        client = await js.start(server.ws_url, "shared")
        await client.wait_synced()
        await client.append("typed ")
        status, _kind, state = await acall("GET", server.http_url + "/api/docs/shared/update")
        assert status == 200
        status, _kind, body = await acall("POST", server.http_url + "/api/docs/shared/update",
                                          update_inserting("from the API", state))
        assert (status, body) == (204, b"")
        await client.wait_text(equals="typed from the API")
    assert server.terminate() == 0  # 204 meant stored: a fresh process reads it back
    again = server_factory(store)
    status, _kind, body = await acall("GET", again.http_url + "/api/docs/shared")
    assert (status, body.decode()) == (200, "typed from the API")


async def test_listing_pages_in_name_order(server: ServerProcess) -> None:
    for name in ("b", "a%2Fb", "c", "a"):
        status, _kind, _body = await acall("POST", f"{server.http_url}/api/docs/{name}/update",
                                           update_inserting(f"text of {name}"))
        assert status == 204
    status, kind, body = await acall("GET", server.http_url + "/api/docs")
    assert (status, kind) == (200, "application/json")
    listing = json.loads(body)
    assert [d["name"] for d in listing["documents"]] == ["a", "a%2Fb", "b", "c"]
    assert listing["next"] is None
    assert all(d["size"] > 0 and d["last_change"].endswith("Z") for d in listing["documents"])
    first = json.loads((await acall("GET", server.http_url + "/api/docs?limit=2"))[2])
    assert [d["name"] for d in first["documents"]] == ["a", "a%2Fb"] and first["next"] == "a%2Fb"
    after = urllib.request.quote(first["next"], safe="")
    second = json.loads((await acall("GET", f"{server.http_url}/api/docs?limit=2&after={after}"))[2])
    assert [d["name"] for d in second["documents"]] == ["b", "c"]
    bad = await acall("GET", server.http_url + "/api/docs?limit=0")
    assert bad[0] == 400 and b"limit must be a whole number from 1 to 1000" in bad[2]


def update_titled(title: str, text: str = "") -> bytes:
    doc = crdt.document_from([])
    doc.edit_text(0, insert=title, field="title")
    if text:
        doc.edit_text(0, insert=text)
    return doc.full_state()


async def test_listing_carries_titles_and_searches_them(server: ServerProcess) -> None:
    docs = {"plan": "Quarterly Plan", "caf%C3%A9": "Menu du café", "notes": "", "r%C3%A9sum%C3%A9": ""}
    for name, title in docs.items():
        status, _kind, _body = await acall("POST", f"{server.http_url}/api/docs/{name}/update",
                                           update_titled(title, f"text of {name}"))
        assert status == 204

    def listing(query: str = "") -> dict[str, object]:
        return dict(json.loads(call("GET", f"{server.http_url}/api/docs{query}")[2]))

    everything = listing()
    assert {d["name"]: d["title"] for d in everything["documents"]} == docs  # type: ignore[index, union-attr]
    # By title or by name, case and accents ignored; a title seen live is the room's own.
    assert [d["name"] for d in listing("?q=PLAN")["documents"]] == ["plan"]  # type: ignore[index, union-attr]
    assert [d["name"] for d in listing("?q=cafe")["documents"]] == ["caf%C3%A9"]  # type: ignore[index, union-attr]
    assert [d["name"] for d in listing("?q=resume")["documents"]] == ["r%C3%A9sum%C3%A9"]  # type: ignore[index, union-attr]
    assert listing("?q=nothing%20like%20it") == {"documents": [], "next": None}
    # A renamed document is found by its new title (the old one was not kept).
    state = (await acall("GET", f"{server.http_url}/api/docs/notes/update"))[2]
    rename = crdt.document_from([state]).edit_text(0, insert="Meeting notes", field="title")
    assert rename is not None
    assert (await acall("POST", f"{server.http_url}/api/docs/notes/update", rename))[0] == 204
    found = listing("?q=meeting")["documents"]
    assert [(d["name"], d["title"]) for d in found] == [("notes", "Meeting notes")]  # type: ignore[index]
    # Paged like the plain listing.
    first = listing("?q=e&limit=2")
    assert [d["name"] for d in first["documents"]] == ["caf%C3%A9", "notes"]  # type: ignore[index, union-attr]
    after = urllib.request.quote(str(first["next"]), safe="")
    rest = listing(f"?q=e&limit=2&after={after}")
    assert [d["name"] for d in rest["documents"]] == ["plan", "r%C3%A9sum%C3%A9"]  # type: ignore[index, union-attr]
    long = call("GET", f"{server.http_url}/api/docs?q={'x' * 201}")
    assert long[0] == 400 and b"q is longer than 200 characters" in long[2]


async def test_delete_closes_live_clients_and_a_reconnect_does_not_bring_it_back(
        server: ServerProcess) -> None:
    first = await PyClient(server.ws_url, "doomed").start()
    second = await PyClient(server.ws_url, "doomed").start()
    await first.insert("soon gone")
    await second.wait_text("soon gone")
    status, _kind, body = await acall("DELETE", server.http_url + "/api/docs/doomed")
    assert (status, body) == (204, b"")
    await until(lambda: 4410 in first.close_codes and 4410 in second.close_codes)
    # Both keep reconnecting (PyClient retries like a naive client) with their copy: refused.
    await until(lambda: first.close_codes.count(4410) >= 3, timeout=15)
    assert (await acall("GET", server.http_url + "/api/docs/doomed"))[0] == 410
    assert (await acall("GET", server.http_url + "/api/docs/doomed/update"))[0] == 410
    listing = json.loads((await acall("GET", server.http_url + "/api/docs"))[2])
    assert "doomed" not in [d["name"] for d in listing["documents"]]
    again = await acall("DELETE", server.http_url + "/api/docs/doomed")
    assert again[0] == 410
    for client in (first, second):
        await client.close()
    # Only an explicit recreate uses the name again.
    refused = await acall("POST", server.http_url + "/api/docs/doomed/update", update_inserting("x"))
    assert refused[0] == 410 and b"?recreate=1" in refused[2]
    status, _kind, _body = await acall("POST", server.http_url + "/api/docs/doomed/update?recreate=1",
                                       update_inserting("fresh start"))
    assert status == 204
    reader = await PyClient(server.ws_url, "doomed").start()
    assert reader.text() == "fresh start"
    await reader.close()
    assert (await acall("DELETE", server.http_url + "/api/docs/never-was"))[0] == 404


@pytest.mark.parametrize(("method", "path", "body", "status", "reason"), [
    ("POST", "/api/docs/x/update", b"", 400, b"empty body"),
    ("POST", "/api/docs/x/update", b"\x05\x03garbage-update", 400, b"invalid Yjs update"),
    ("POST", "/api/docs/x/update", b"\x00" * 5000, 413, b"body larger than 4096 bytes"),
    ("GET", "/api/docs/bad%01name", None, 400, b"control characters"),
    ("GET", "/api/docs/" + "n" * 300, None, 400, b"longer than 255 bytes"),
    ("POST", "/api/docs/x", b"text", 405, b"use GET or DELETE"),
    ("DELETE", "/api/docs/x/update", None, 405, b"use GET or DELETE"),
])
def test_bad_requests_are_refused_with_the_reason_and_change_nothing(
        server_factory: ServerFactory, method: str, path: str, body: bytes | None, status: int,
        reason: bytes) -> None:
    server = server_factory(args=["--max-message-size", "4096"])
    answer = call(method, server.http_url + path, body)
    assert answer[0] == status and reason in answer[2], answer
    assert call("GET", server.http_url + "/api/docs/x")[0] == 404  # nothing was created
    listing = json.loads(call("GET", server.http_url + "/api/docs")[2])
    assert listing["documents"] == []


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


async def test_a_delete_on_one_instance_closes_the_clients_of_another(
        server_factory: ServerFactory, redis_server: PrivateRedis, database: str) -> None:
    shared = ["--redis", redis_server.url]
    one = server_factory(database, args=shared)
    two = server_factory(database, args=shared)
    client = await PyClient(two.ws_url, "across").start()
    await client.insert("on two")
    await until(lambda: call("GET", one.http_url + "/api/docs/across")[2] == b"on two")  # stored
    assert (await acall("DELETE", one.http_url + "/api/docs/across"))[0] == 204
    await until(lambda: client.close_codes.count(4410) >= 2)  # closed, and its reconnection too
    assert (await acall("GET", two.http_url + "/api/docs/across"))[0] == 410
    await client.close()
    for server in (one, two):
        server.stop()  # before the database goes
