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
