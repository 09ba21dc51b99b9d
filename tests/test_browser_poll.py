"""The editor on the HTTP fallback, in headless Chromium: behind a balancer that refuses
WebSocket upgrades and sends every HTTP request to the next of two instances (Redis fan-out,
PostgreSQL store), pages fall back by themselves, co-edit with a WebSocket client, reach
"Saved", vanish from the others when closed, and move back to WebSockets once they pass."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from collab import protocol
from collab.protocol import AwarenessEntry
from tests.balancer import Balancer
from tests.pyclient import PyClient
from tests.servers import ServerProcess
from tests.test_browser import SYNC_TIMEOUT_MS, Editor, browser, editors, wait_for_presence  # noqa: F401
from tests.test_browser_scale import database  # noqa: F401
from tests.test_poll import presence_seen

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(180)]

T = TypeVar("T")
FALLBACK_TIMEOUT_MS = 30_000
"""Two refused WebSocket attempts (with backoff) and then the fallback's first sync."""


class Background:
    """An event loop on a thread of its own: Playwright's synchronous API holds this one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def background() -> Iterator[Background]:
    made = Background()
    yield made
    made.close()


@pytest.fixture
def instances(server_factory: Callable[..., ServerProcess], database: str,  # noqa: F811
              redis_server: Any) -> list[ServerProcess]:
    return [server_factory(database, args=["--redis", redis_server.url, "--poll-timeout", "2"])
            for _ in range(2)]


@pytest.fixture
def balancer(background: Background, instances: list[ServerProcess]) -> Iterator[Balancer]:
    made = Balancer([("127.0.0.1", s.port) for s in instances], http=True, refuse_upgrades=True)
    background.run(made.start())
    yield made
    background.run(made.close())


def on_fallback(editor: Editor, timeout: int = FALLBACK_TIMEOUT_MS) -> None:
    editor.page.wait_for_selector('#connection[data-state="connected"][data-transport="poll"]',
                                  timeout=timeout)
    editor.wait_synced()


def poll_requests(editor: Editor) -> list[str]:
    """Every request the page makes to the fallback, counted as it goes out."""
    made: list[str] = []
    editor.page.on("request", lambda request: made.append(request.url) if "/poll/" in request.url else None)
    return made


def test_pages_fall_back_co_edit_with_a_websocket_client_save_and_leave(
        instances: list[ServerProcess], balancer: Balancer, background: Background,
        editors: Callable[[str], Editor]) -> None:  # noqa: F811
    url = f"{balancer.http_url}/d/fallback"
    ada, bob = editors("ada"), editors("bob")
    bob_polls = poll_requests(bob)
    ada.open(url)
    bob.open(url)
    for editor in (ada, bob):
        on_fallback(editor)
    assert ada.page.locator("#connection .label").inner_text() == "Connected (HTTP fallback)"
    refused = [target for _method, target, backend in balancer.requests if backend is None]
    assert len(refused) >= 4 and all(t.startswith("/ws/fallback") for t in refused)  # two each, then poll
    ada.set_name("Ada")
    bob.set_name("Bob")

    socket_client = background.run(PyClient(instances[1].ws_url, "fallback").start())
    entry = AwarenessEntry(777, 1, json.dumps({"user": {"name": "Socket", "color": "#30bced"}}))
    background.run(socket_client.send_raw(protocol.encode_awareness(protocol.encode_awareness_payload([entry]))))
    ada.type_at("start", "ada on the fallback\n")
    bob.wait_text("ada on the fallback\n")
    bob.type_at("end", "bob too")
    background.run(socket_client.insert(" | socket"))
    expected = "ada on the fallback\nbob too | socket"
    ada.wait_text(expected)
    bob.wait_text(expected)
    background.run(socket_client.wait_text(expected))
    for editor in (ada, bob):
        editor.wait_saved()
        assert editor.saved_label() == "Saved"
    wait_for_presence(ada, "Bob")
    wait_for_presence(ada, "Socket")
    wait_for_presence(bob, "Ada")

    def names_seen_by_socket() -> set[str]:
        return {state["user"]["name"] for state in presence_seen(socket_client.received).values()
                if isinstance(state, dict) and "user" in state}

    background.run(socket_client.wait_for(lambda: {"Ada", "Bob"} <= names_seen_by_socket(), 15))
    ada.screenshot("browser-fallback-ada")

    # Idle: with a 2 s poll timeout, 10 s make about five polls (a presence renewal may add a
    # request or two), not a busy loop; a busy machine may make fewer, but the page goes on.
    before = len(bob_polls)
    bob.page.wait_for_timeout(10_000)
    idle = len(bob_polls) - before
    assert 1 <= idle <= 9, bob_polls[before:]

    # Ada closes her tab: her goodbye removes her for the others at once, well before the 20 s
    # her presence would otherwise be held (and the housekeeping round after it). The tab, not
    # her whole browser: a browser shut down with it may drop the goodbye still on its way.
    ada.page.close()
    bob.page.wait_for_function(
        "() => ![...document.querySelectorAll('#people-list .person-name')]"
        ".some(e => e.textContent === 'Ada')", timeout=15_000)
    background.run(socket_client.wait_for(lambda: "Ada" not in names_seen_by_socket(), 15))
    background.run(socket_client.close())


def test_a_forced_fallback_never_tries_a_websocket(server: ServerProcess,
                                                    editors: Callable[[str], Editor]) -> None:  # noqa: F811
    page = editors("forced")
    sockets: list[str] = []
    page.page.on("websocket", lambda ws: sockets.append(ws.url))
    page.open(f"{server.http_url}/d/forced?transport=poll")
    on_fallback(page, SYNC_TIMEOUT_MS)
    page.type_at("end", "forced")
    page.wait_saved()
    assert sockets == []


def test_a_page_moves_back_to_websockets_when_they_pass_again(
        instances: list[ServerProcess], balancer: Balancer,
        editors: Callable[[str], Editor]) -> None:  # noqa: F811
    page = editors("mover")
    page.page.clock.install()  # time flows as usual, but the probe's wait can be skipped
    page.open(f"{balancer.http_url}/d/mover")
    on_fallback(page)
    page.type_at("end", "typed on the fallback. ")
    page.wait_saved()
    balancer.refuse_upgrades = False
    page.page.clock.fast_forward(31_000)  # past the interval between WebSocket probes
    page.page.wait_for_selector('#connection[data-state="connected"][data-transport="websocket"]',
                                timeout=SYNC_TIMEOUT_MS)
    page.wait_synced()
    page.type_at("end", "typed on a socket.")
    page.wait_saved()
    expected = "typed on the fallback. typed on a socket."
    assert page.text() == expected  # nothing lost, nothing doubled
    other = editors("check").open(f"{instances[0].http_url}/d/mover")
    other.wait_text(expected)
