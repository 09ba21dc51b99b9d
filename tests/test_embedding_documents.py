"""Documents from Python (``server.text``, ``server.apply``, ``server.edit``) and webhooks, with
collab embedded in a host application: the changes reach stock clients, the store and the other
instances (Redis + PostgreSQL); webhooks reach a real local receiver, signed, retried, bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from collab import Collab, Settings, crdt
from collab.rooms import DocumentDeleted
from collab.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify
from tests.embedded import Host, Sessions
from tests.jsclient import js_clients
from tests.pyclient import PyClient
from tests.servers import free_port
from tests.services import PrivateRedis, wait_until

pytestmark = pytest.mark.timeout(90)

SECRET = "webhook-secret-of-the-receiver"


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(store=f"sqlite:///{tmp_path / 'host.db'}", log_level="warning", **overrides)


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    made = await Host(Collab(settings(tmp_path))).start()
    yield made
    await made.close()


# --- documents from Python ----------------------------------------------------------------------


@pytest.mark.node
async def test_an_edit_from_python_reaches_a_stock_client_and_the_store(tmp_path: Path) -> None:
    sessions = Sessions({"alice-session": ("Alice", "write")})
    server = Collab(settings(tmp_path), authorize=sessions.authorize)
    host = await Host(server).start()
    try:
        async with js_clients() as clients:
            stock = await clients.start(host.ws_url, "report", params={"session": "alice-session"})
            await stock.wait_synced()
            await stock.append("written by a person\n")
            await stock.wait_saved()  # the server holds it
            async with server.edit("report") as text:
                assert text.value == "written by a person\n"
                text.append("appended by the server: café\n")
                text.insert(0, "# Report\n")
            expected = "# Report\nwritten by a person\nappended by the server: café\n"
            await stock.wait_text(equals=expected)
            assert await server.text("report") == expected
            refused = await clients.start(host.ws_url, "report")  # no session: the host refuses
            closed = await refused.wait_event(lambda e: e.get("event") == "closed")
            assert closed["code"] != 1000
            assert not any(e.get("event") == "sync" and e.get("synced") for e in refused.events)
        stored = await server.store.load("report")
        assert crdt.document_from(stored.updates).text() == expected
    finally:
        await host.close()


async def test_an_edit_merges_with_what_clients_typed_meanwhile(host: Host) -> None:
    server = host.server
    client = await PyClient(host.ws_url, "merged").start()
    await client.insert("middle")
    await wait_until(lambda: server.rooms.rooms.get("merged") is not None
                     and server.rooms.rooms["merged"].doc.text() == "middle", 10)
    async with server.edit("merged") as text:
        text.append(" end")
        await client.insert("start ", 0)  # while the server's edit is open
        await wait_until(lambda: server.rooms.rooms["merged"].doc.text() == "start middle", 10)
    await client.wait_text("start middle end")
    async with server.edit("merged") as text:
        text.replace("start MIDDLE end")
        assert text.value == "start MIDDLE end"
    await client.wait_text("start MIDDLE end")
    with pytest.raises(ValueError, match="the block failed"):
        async with server.edit("merged") as text:
            text.append(" never applied")
            raise ValueError("the block failed")
    assert await server.text("merged") == "start MIDDLE end"
    await client.close()


async def test_apply_refuses_bad_updates_and_reads_what_it_applied(host: Host) -> None:
    server = host.server
    update = crdt.Document().edit_text(0, "from an update")
    assert update is not None
    await server.apply("applied", update)
    assert await server.text("applied") == "from an update"
    with pytest.raises(crdt.InvalidUpdate):
        await server.apply("applied", b"\x01\x02garbage")
    assert await server.text("applied") == "from an update"
    assert await server.text("never-written") == ""
    from collab.codes import Refused

    with pytest.raises(Refused, match="control characters"):
        await server.text("bad\x01name")
    assert await server.rooms.delete("applied")
    with pytest.raises(DocumentDeleted):
        await server.text("applied")
    with pytest.raises(DocumentDeleted):
        await server.apply("applied", update)
    await server.apply("applied", update, recreate=True)
    assert await server.text("applied") == "from an update"


async def test_documents_are_reachable_only_while_the_server_runs(tmp_path: Path) -> None:
    server = Collab(settings(tmp_path))
    with pytest.raises(RuntimeError, match="inside its lifespan"):
        await server.text("notes")
    async with server.lifespan():
        async with server.edit("notes") as text:
            text.append("kept")
        assert await server.text("notes") == "kept"
    with pytest.raises(RuntimeError, match="stopped"):
        async with server.edit("notes"):
            pass


@pytest.mark.redis
@pytest.mark.postgres
async def test_text_reads_and_edit_reaches_a_document_that_lives_on_another_instance(
        database: str, redis_server: PrivateRedis) -> None:
    def instance() -> Collab:
        return Collab(Settings(store=database, redis=redis_server.url, log_level="warning"))

    one, two = await Host(instance()).start(), await Host(instance()).start()
    try:
        client = await PyClient(one.ws_url, "shared").start()  # lives on instance one
        await client.insert("typed on one")
        room = one.server.rooms.rooms["shared"]
        await wait_until(lambda: room.doc.text() == "typed on one" and one.server.store.unstored == 0, 10)
        assert "shared" not in two.server.rooms.rooms
        assert await two.server.text("shared") == "typed on one"
        async with two.server.edit("shared") as text:
            text.append(", edited on two")
        await client.wait_text("typed on one, edited on two")  # through the bus
        assert await one.server.text("shared") == "typed on one, edited on two"
        await client.close()
    finally:
        await one.close()
        await two.close()


# --- webhooks -----------------------------------------------------------------------------------


class Receiver:
    """A real HTTP receiver on loopback (Starlette on uvicorn) that records every request and
    answers ``failures`` of them with ``status`` first."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.failures = 0
        self.status = 500
        self.arrived = asyncio.Event()

        async def hook(request: Request) -> PlainTextResponse:
            self.requests.append((dict(request.headers), await request.body()))
            self.arrived.set()
            if self.failures:
                self.failures -= 1
                return PlainTextResponse("not now\n", status_code=self.status)
            return PlainTextResponse("thanks\n")

        app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self.task = asyncio.create_task(self.server.serve())
        await wait_until(lambda: self.server.started, 10)
        return self

    async def close(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _headers, body in self.requests]

    async def wait_requests(self, count: int, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = await Receiver().start()
    yield made
    await made.close()


async def hooked(tmp_path: Path, receiver: Receiver, **overrides: Any) -> Host:
    server = Collab(settings(tmp_path, webhook=(receiver.url,), webhook_secret=SECRET,
                             change_debounce=0.3, **overrides))
    return await Host(server).start()


async def test_webhooks_tell_a_receiver_what_happened_signed(tmp_path: Path, receiver: Receiver) -> None:
    host = await hooked(tmp_path, receiver)
    try:
        client = await PyClient(host.ws_url, "hooked").start()
        await client.insert("hello webhooks")
        await receiver.wait_requests(3)  # opened, created, then changed once quiet
        await client.close()
        await receiver.wait_requests(4)  # closed
        assert await host.server.rooms.delete("hooked")
        await receiver.wait_requests(5)
    finally:
        await host.close()
    events = receiver.events()
    assert [e["event"] for e in events] == ["document.opened", "document.created", "document.changed",
                                            "document.closed", "document.deleted"]
    assert all(e["document"] == "hooked" and e["instance"] == host.server.settings.instance_id
               for e in events)
    assert events[2]["text"] == "hello webhooks" and "text" not in events[0]
    for headers, body in receiver.requests:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER.lower()])
        assert headers[EVENT_HEADER.lower()] == json.loads(body)["event"]
        assert headers[DELIVERY_HEADER.lower()] == json.loads(body)["id"]
        assert headers["content-type"] == "application/json"
    headers, body = receiver.requests[0]
    assert not verify("another secret", body, headers[SIGNATURE_HEADER.lower()])
    assert host.server.webhooks.stats.delivered == 5


async def test_a_failing_receiver_is_retried_and_given_up_on_after_the_bound(
        tmp_path: Path, receiver: Receiver) -> None:
    from tests.metrics import scrape

    host = await hooked(tmp_path, receiver, webhook_attempts=3)
    stats = host.server.webhooks.stats
    try:
        receiver.failures = 2  # the first event succeeds at its third attempt
        client = await PyClient(host.ws_url, "flaky").start()  # document.opened
        await receiver.wait_requests(3)
        first = receiver.requests[0][0][DELIVERY_HEADER.lower()]
        assert [h[DELIVERY_HEADER.lower()] for h, _ in receiver.requests] == [first] * 3
        await wait_until(lambda: stats.delivered == 1, 10)  # once the third answer is back
        assert (stats.attempts_failed, stats.given_up) == (2, 0)
        receiver.failures, receiver.status = 3, 503  # the next event fails every attempt
        await client.insert("x")  # document.created, then document.changed
        await receiver.wait_requests(3 + 3)
        await wait_until(lambda: stats.given_up == 1, 10)
        created = [json.loads(b)["event"] for _h, b in receiver.requests[3:6]]
        assert created == ["document.created"] * 3
        await receiver.wait_requests(7)  # the queue goes on: document.changed gets through
        assert json.loads(receiver.requests[6][1])["event"] == "document.changed"
        metrics = await asyncio.to_thread(scrape, host.url)
        assert metrics.value("collab_webhooks_given_up_total") == 1
        assert metrics.value("collab_webhooks_attempts_failed_total") == 5
        await client.close()
    finally:
        await host.close()


def test_webhook_urls_come_from_repeated_flags_or_one_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from collab.cli import _settings, build_parser

    args = build_parser().parse_args(["serve", "--webhook", "http://a.example/hook",
                                      "--webhook", "https://b.example/x", "--webhook-secret", "k"])
    chosen = _settings(args)
    assert chosen.webhook == ("http://a.example/hook", "https://b.example/x")
    assert chosen.webhook_secret == "k"
    monkeypatch.setenv("COLLAB_WEBHOOK", "http://c.example/1 http://d.example/2")
    assert _settings(build_parser().parse_args(["serve"])).webhook == ("http://c.example/1",
                                                                       "http://d.example/2")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--webhook", "ftp://nope"])
    assert "'ftp://nope' is not an http:// or https:// URL" in capsys.readouterr().err


async def test_collab_serve_sends_webhooks_from_its_flags(tmp_path: Path, receiver: Receiver) -> None:
    from tests.servers import ServerProcess

    served = ServerProcess(f"sqlite:///{tmp_path / 'served.db'}", log_path=tmp_path / "served.log",
                           args=["--webhook", receiver.url, "--webhook-secret", SECRET,
                                 "--change-debounce", "0.2"])
    await asyncio.to_thread(served.start)
    try:
        client = await PyClient(served.ws_url, "served").start()
        await client.insert("through collab serve")
        await receiver.wait_requests(3)
        await client.close()
    finally:
        await asyncio.to_thread(served.stop)
    events = receiver.events()
    assert [e["event"] for e in events[:3]] == ["document.opened", "document.created", "document.changed"]
    assert events[2]["text"] == "through collab serve"
    assert all(verify(SECRET, body, headers[SIGNATURE_HEADER.lower()]) for headers, body in receiver.requests)


def test_a_text_edit_counts_characters_whatever_their_encoding() -> None:
    from collab.documents import TextEdit

    text = TextEdit(crdt.Document())
    text.append("café 😀 x")
    text.insert(7, "!")  # after the emoji and its space: characters, not bytes or UTF-16 units
    assert text.value == "café 😀 !x"
    text.delete(5, 1)
    assert text.value == "café  !x"
    text.replace("naïve café ok!")
    assert str(text) == "naïve café ok!" and len(text) == 14
    with pytest.raises(IndexError):
        text.insert(15, "?")
    with pytest.raises(IndexError):
        text.delete(10, 5)
    assert crdt.document_from(text.updates).text() == "naïve café ok!"  # what the room applies
