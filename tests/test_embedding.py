"""collab embedded in a host application: ``Collab.app`` mounted under ``/collab`` in a
Starlette app of the host's, ``Collab.lifespan`` as the host's lifespan, served by uvicorn on
loopback; real WebSocket and HTTP fallback clients through the prefix."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collab import Collab, Settings
from tests.embedded import SESSION_COOKIE, Host, Sessions
from tests.pollclient import PollClient
from tests.pyclient import PyClient
from tests.services import wait_until

pytestmark = pytest.mark.timeout(60)

ALICE = {"cookie": f"{SESSION_COOKIE}=alice-session"}
BOB = {"cookie": f"{SESSION_COOKIE}=bob-session"}


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(store=f"sqlite:///{tmp_path / 'host.db'}", log_level="warning",
                    **overrides)  # type: ignore[arg-type]


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    def fetch() -> tuple[int, str, dict[str, str]]:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), dict(error.headers)

    return await asyncio.to_thread(fetch)


@pytest.fixture
def sessions() -> Sessions:
    return Sessions({"alice-session": ("Alice", "write"), "bob-session": ("Bob", "read")})


@pytest.fixture
async def host(tmp_path: Path, sessions: Sessions) -> AsyncIterator[Host]:
    made = await Host(Collab(settings(tmp_path), authorize=sessions.authorize)).start()
    yield made
    await made.close()


async def test_everything_resolves_under_the_prefix(host: Host) -> None:
    status, body, _ = await get(host.http_url + "/")
    assert (status, body) == (200, "the host's own page\n")
    status, body, _ = await get(host.url + "/readiness_check")
    assert status == 200 and body.startswith("ready")
    status, page, headers = await get(host.url + "/d/notes")
    assert status == 200 and headers["content-type"].startswith("text/html") and "<script" in page
    script = re.search(r'src="(assets/[^"]+\.js)"', page)
    assert script is not None  # relative: the page resolves it against the app's root
    status, _, headers = await get(f"{host.url}/{script.group(1)}")
    assert status == 200 and "immutable" in headers["cache-control"]
    status, _, headers = await get(host.url + "/sw.js")
    assert status == 200 and "javascript" in headers["content-type"]
    status, _, _ = await get(host.http_url + "/ws/notes")  # not collab's outside the prefix
    assert status == 404


async def test_a_websocket_and_a_poller_co_edit_through_the_prefix_with_the_hosts_cookie(
        host: Host) -> None:
    name = "caf%C3%A9%20notes"
    writer = await PyClient(host.ws_url, name, headers=ALICE).start()
    await writer.insert("hello from the socket")
    poller = await PollClient(host.url + "/poll", name, client_id=5, headers=ALICE).start()
    assert poller.text() == "hello from the socket"
    await poller.insert(" and the fallback")
    await writer.wait_text("hello from the socket and the fallback")
    status, text, _ = await get(f"{host.url}/api/docs/{name}", ALICE)
    assert (status, text) == (200, "hello from the socket and the fallback")
    await poller.close()
    await writer.close()


async def test_without_the_hosts_credential_every_transport_is_refused(
        host: Host, sessions: Sessions) -> None:
    refused = PyClient(host.ws_url, "private", reconnect=False)
    with pytest.raises(asyncio.TimeoutError):
        await refused.start(timeout=2)
    assert refused.close_codes == [403]
    await refused.close()
    status, body, _ = await get(host.url + "/api/docs/private")
    assert (status, body) == (403, "access denied\n")
    poller = PollClient(host.url + "/poll", "private", client_id=6)
    with pytest.raises(asyncio.TimeoutError):
        await poller.start(timeout=2)
    assert poller.close_info is not None and poller.close_info[0] == 4403
    await poller.close()
    asked = {(r.transport, r.document) for r in sessions.asked}
    assert {("websocket", "private"), ("api", "private"), ("poll", "private")} <= asked


async def test_the_host_asks_with_the_request_as_sent(host: Host, sessions: Sessions) -> None:
    client = await PyClient(host.ws_url, "a%2Fb", headers={**ALICE, "X-Team": "blue"},
                            params={"view": "1"}).start()
    request = sessions.asked[-1]
    assert (request.document, request.transport) == ("a%2Fb", "websocket")
    assert request.cookies[SESSION_COOKIE] == "alice-session"
    assert request.headers["x-team"] == "blue" and request.query["view"] == "1"
    assert request.client is not None and request.client[0] == "127.0.0.1"
    await client.close()


async def test_an_app_whose_lifespan_never_ran_says_so(tmp_path: Path) -> None:
    host = await Host(Collab(settings(tmp_path)), lifespan=False).start()
    try:
        status, body, _ = await get(host.url + "/api/docs/notes")
        assert status == 503 and "lifespan=server.lifespan" in body
        status, body, _ = await get(host.url + "/liveness_check")
        assert status == 200
    finally:
        await host.close()
    assert not (tmp_path / "host.db").exists()  # nothing was opened


async def test_the_lifespan_stores_everything_and_closes_clients_with_1012(tmp_path: Path) -> None:
    server = Collab(settings(tmp_path))
    host = await Host(server).start()
    client = await PyClient(host.ws_url, "kept", reconnect=False).start()
    await client.insert("stored at shutdown")
    await host.close()
    await asyncio.wait_for(client.closed.wait(), 10)
    assert client.close_codes[-1] == 1012
    assert server.phase == "stopped" and not server.store.is_open
    await client.close()
    again = await Host(Collab(settings(tmp_path))).start()
    status, text, _ = await get(again.url + "/api/docs/kept")
    assert (status, text) == (200, "stored at shutdown")
    await again.close()


async def test_a_collab_server_runs_once(tmp_path: Path) -> None:
    server = Collab(settings(tmp_path))
    async with server.lifespan():
        with pytest.raises(RuntimeError, match="runs once"):
            async with server.lifespan():
                pass
    assert server.phase == "stopped"


# --- access decided again for open connections ------------------------------------------------


@pytest.fixture
async def rechecking(tmp_path: Path, sessions: Sessions) -> AsyncIterator[Host]:
    server = Collab(settings(tmp_path, recheck_interval=0.3), authorize=sessions.authorize)
    made = await Host(server).start()
    yield made
    await made.close()


async def test_withdrawn_access_closes_a_live_connection_at_the_next_check(
        rechecking: Host, sessions: Sessions) -> None:
    writer = await PyClient(rechecking.ws_url, "secret", headers=ALICE, reconnect=False).start()
    await writer.insert("before")
    other = await PyClient(rechecking.ws_url, "secret", headers=BOB).start()
    await other.wait_text("before")
    del sessions.users["alice-session"]  # logged out on the host
    assert await writer.wait_closed(10) == 4403
    await wait_until(lambda: len([r for r in sessions.asked if r.cookies.get(SESSION_COOKIE)
                                  == "bob-session"]) >= 3, 10)
    assert not other.closed.is_set()  # bob's access stands: he stays
    stats = rechecking.server.admission.stats
    assert stats.withdrawn == 1 and stats.rechecks >= 3
    await other.close()
    await writer.close()


async def test_a_writer_made_reader_at_a_check_is_told_and_its_changes_go_nowhere(
        rechecking: Host, sessions: Sessions) -> None:
    writer = await PyClient(rechecking.ws_url, "demoted", headers=ALICE).start()
    await writer.insert("kept")
    watcher = await PyClient(rechecking.ws_url, "demoted", headers=ALICE).start()
    await watcher.wait_text("kept")
    assert writer.auth_messages() == []
    sessions.users["alice-session"] = ("Alice", "read")
    await writer.wait_for(lambda: bool(writer.auth_messages()))
    await watcher.wait_for(lambda: bool(watcher.auth_messages()))
    assert [m.reason for m in writer.auth_messages()] == ["read-only"]
    await writer.insert(" not kept")
    status, text, _ = await get(rechecking.url + "/api/docs/demoted", BOB)
    assert (status, text) == (200, "kept")
    assert not writer.closed.is_set()
    await watcher.close()
    await writer.close()


async def test_a_poller_whose_access_was_withdrawn_is_refused_at_its_next_request(
        rechecking: Host, sessions: Sessions) -> None:
    poller = await PollClient(rechecking.url + "/poll", "polled", client_id=7, headers=ALICE).start()
    await poller.insert("polled")
    del sessions.users["alice-session"]
    await asyncio.wait_for(poller.closed.wait(), 15)
    assert poller.close_info is not None and poller.close_info[0] == 4403
    await poller.close()


async def test_an_expired_token_closes_its_connection_at_the_next_check(tmp_path: Path) -> None:
    from collab.tokens import LEEWAY, mint

    secret = "s" * 32
    server = Collab(settings(tmp_path, secret=secret, recheck_interval=0.3))
    host = await Host(server).start()
    try:
        short = mint(secret, mode="write", ttl=1, doc="timed")
        client = await PyClient(host.ws_url, "timed", params={"token": short}, reconnect=False).start()
        assert await client.wait_closed(1 + LEEWAY + 10) == 4401
        await client.close()
    finally:
        await host.close()


# --- on_change and on_update --------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.updates: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()
        self.fail = False

    async def on_change(self, name: str, text: str) -> None:
        self.calls.append((name, text))
        self.arrived.set()
        if self.fail:
            raise RuntimeError("the search index is down")

    async def on_update(self, name: str, update: bytes) -> None:
        self.updates.append((name, update))

    async def wait_calls(self, count: int, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def test_on_change_is_called_once_per_window_with_the_final_text(tmp_path: Path) -> None:
    from collab import crdt

    recorder = Recorder()
    server = Collab(settings(tmp_path, change_debounce=0.4, change_max_delay=30),
                    on_change=recorder.on_change, on_update=recorder.on_update)
    host = await Host(server).start()
    try:
        client = await PyClient(host.ws_url, "indexed").start()
        for word in ("one ", "two ", "three"):
            await client.insert(word)
        await recorder.wait_calls(1)
        assert recorder.calls == [("indexed", "one two three")]
        assert len(recorder.updates) == 1 and recorder.updates[0][0] == "indexed"
        assert crdt.document_from([recorder.updates[0][1]]).text() == "one two three"
        await client.insert("!")
        await recorder.wait_calls(2)
        assert recorder.calls[1] == ("indexed", "one two three!")
        window_update = recorder.updates[1][1]
        assert crdt.document_from([recorder.updates[0][1], window_update]).text() == "one two three!"
        assert server.changes.stats.notifications == 2 and server.changes.stats.changes == 4
        await client.close()
    finally:
        await host.close()
    assert len(recorder.calls) == 2


async def test_a_document_changed_without_a_pause_is_notified_within_the_max_delay(
        tmp_path: Path) -> None:
    recorder = Recorder()
    server = Collab(settings(tmp_path, change_debounce=0.5, change_max_delay=1.0),
                    on_change=recorder.on_change)
    host = await Host(server).start()
    try:
        client = await PyClient(host.ws_url, "busy").start()
        typed = 0
        async with asyncio.timeout(15):
            while not recorder.calls:  # never quiet for the debounce: only the max delay fires
                await client.insert("x")
                typed += 1
                await asyncio.sleep(0.1)
        assert recorder.calls[0][0] == "busy" and 0 < len(recorder.calls[0][1]) <= typed
        await client.close()
    finally:
        await host.close()


async def test_a_failing_on_change_is_logged_and_the_document_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    recorder.fail = True
    server = Collab(settings(tmp_path, change_debounce=0.2), on_change=recorder.on_change)
    host = await Host(server).start()
    try:
        client = await PyClient(host.ws_url, "fragile").start()
        await client.insert("first")
        await recorder.wait_calls(1)
        await client.insert(" second")
        await recorder.wait_calls(2)
        assert recorder.calls[1] == ("fragile", "first second")
        other = await PyClient(host.ws_url, "fragile").start()
        assert other.text() == "first second"
        assert server.changes.stats.listener_failures == 2
        assert "a change listener failed for document 'fragile'" in caplog.text
        await other.close()
        await client.close()
    finally:
        await host.close()


async def test_changes_pending_at_shutdown_are_notified_before_the_store_closes(tmp_path: Path) -> None:
    recorder = Recorder()
    server = Collab(settings(tmp_path, change_debounce=30, change_max_delay=60),
                    on_change=recorder.on_change)
    host = await Host(server).start()
    client = await PyClient(host.ws_url, "last-words").start()
    await client.insert("said just before the end")
    await wait_until(lambda: server.changes.stats.changes == 1, 10)
    await host.close()
    assert recorder.calls == [("last-words", "said just before the end")]
    await client.close()
