"""The browser editor in headless Chromium against real ``collab serve`` processes.

Each page gets its own browser context (its own IndexedDB and localStorage), as two people on
two machines would. Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_service
from tests.servers import ROOT, ServerProcess

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
]
INDEX_HTML = ROOT / "web" / "dist" / "index.html"
ARTIFACTS = ROOT / "test-artifacts"
VIEWPORT = {"width": 1180, "height": 720}
SYNC_TIMEOUT_MS = 15_000
# Reconnection backs off up to ~10 s between attempts, so allow a couple of attempts.
RECONNECT_TIMEOUT_MS = 35_000

# The browser logs failed connection attempts itself while the server is down; those are the
# expected symptom of an outage, not errors of the page.
_NETWORK_NOISE = re.compile(
    r"WebSocket connection to .* failed|Failed to load resource|ERR_CONNECTION_REFUSED")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        require_service("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    if not INDEX_HTML.is_file():
        require_service("web bundle", "web/dist/index.html is not built (run `make web`)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Editor:
    """One person's tab: a page in its own browser context, with its console watched."""

    def __init__(self, browser: object, label: str, viewport: dict[str, int] | None = None) -> None:
        self.label = label
        self.context = browser.new_context(viewport=viewport or VIEWPORT)  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on("console", self._on_console)
        self.page.on("dialog", self._on_dialog)

    def _on_console(self, message: object) -> None:
        text = message.text  # type: ignore[attr-defined]
        if message.type == "error" and not _NETWORK_NOISE.search(text):  # type: ignore[attr-defined]
            self.errors.append(f"console.error: {text}")

    def _on_dialog(self, dialog: object) -> None:
        self.dialogs.append(dialog.type)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    def open(self, url: str) -> Editor:
        self.page.goto(url)
        self.wait_started()
        return self

    def wait_started(self) -> None:
        self.page.wait_for_function("() => window.collab !== undefined", timeout=SYNC_TIMEOUT_MS)

    def open_home(self, url: str) -> Editor:
        """The list of documents (the app's root)."""
        self.page.goto(url)
        self.page.wait_for_function("() => window.collabHome !== undefined", timeout=SYNC_TIMEOUT_MS)
        return self

    def wait_synced(self, timeout: int = SYNC_TIMEOUT_MS) -> None:
        self.page.wait_for_function("() => window.collab && window.collab.provider.synced", timeout=timeout)

    def set_name(self, name: str) -> None:
        field = self.page.locator("#me-name")
        field.fill(name)
        field.press("Enter")

    def type_at(self, where: str, text: str) -> None:
        """Type as a person would: at the start, at the end of the first line, or at the end."""
        self.page.locator(".cm-content").focus()
        self.page.keyboard.press("Control+End" if where == "end" else "Control+Home")
        if where == "first-line-end":
            self.page.keyboard.press("End")
        self.page.keyboard.type(text, delay=5)

    def text(self) -> str:
        return str(self.page.evaluate("() => window.collab.view.state.doc.toString()"))

    def wait_text(self, expected: str, timeout: int = SYNC_TIMEOUT_MS) -> None:
        try:
            self.page.wait_for_function("(want) => window.collab.view.state.doc.toString() === want",
                                        arg=expected, timeout=timeout)
        except Exception as exc:
            status = self.page.evaluate("() => JSON.stringify(window.collab.provider.status)")
            raise AssertionError(f"{self.label}: text is {self.text()!r}, expected {expected!r} "
                                 f"(connection {status})") from exc

    def wait_saved(self, timeout: int = SYNC_TIMEOUT_MS) -> None:
        self.page.wait_for_selector('#saved[data-state="saved"]', timeout=timeout)

    def saved_label(self) -> str:
        return self.page.locator("#saved").inner_text().strip()

    def connection(self) -> str:
        return str(self.page.locator("#connection").get_attribute("data-state"))

    def people(self) -> list[str]:
        """Everyone else here, as the people list (opened from the header) names them."""
        return [n.strip() for n in self.page.locator("#people-list .person-name").all_text_contents()]

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def editors(browser: object) -> Iterator[Callable[..., Editor]]:
    """Open tabs (``editors(label, viewport=...)``); at the end, assert that none of them had an
    uncaught error."""
    opened: list[Editor] = []

    def make(label: str, viewport: dict[str, int] | None = None) -> Editor:
        editor = Editor(browser, label, viewport)
        opened.append(editor)
        return editor

    yield make
    errors = [f"{e.label}: {err}" for e in opened for err in e.errors]
    for editor in opened:
        editor.close()
    assert errors == [], "errors in the browser console"


def document_url(server: ServerProcess, name: str) -> str:
    return f"{server.http_url}/d/{name}"


def two_synced_pages(editors: Callable[[str], Editor], url: str) -> tuple[Editor, Editor]:
    """Ada's and Bob's tabs on ``url``, both synced with the server."""
    ada, bob = editors("ada").open(url), editors("bob").open(url)
    ada.wait_synced()
    bob.wait_synced()
    return ada, bob


def wait_for_presence(editor: Editor, name: str) -> None:
    editor.page.wait_for_function(
        "(name) => [...document.querySelectorAll('#people-list .person-name')]"
        ".some(e => e.textContent === name)", arg=name, timeout=SYNC_TIMEOUT_MS)


def test_two_pages_converge_and_show_each_other(server: ServerProcess,
                                                editors: Callable[[str], Editor]) -> None:
    url = document_url(server, "two-pages")
    ada, bob = two_synced_pages(editors, url)
    ada.set_name("Ada")
    bob.set_name("Bob")

    ada.type_at("start", "\n")
    bob.wait_text("\n")
    ada_words = [f"ada{i} " for i in range(6)]
    bob_words = [f"bob{i} " for i in range(6)]
    for a_word, b_word in zip(ada_words, bob_words, strict=True):
        ada.type_at("first-line-end", a_word)
        bob.type_at("end", b_word)
    expected = "".join(ada_words) + "\n" + "".join(bob_words)

    ada.wait_text(expected)
    bob.wait_text(expected)
    wait_for_presence(ada, "Bob")
    wait_for_presence(bob, "Ada")
    assert ada.people() == ["Bob"]
    assert bob.people() == ["Ada"]
    # The other person's cursor carries their name.
    ada.page.wait_for_selector(".cm-yLabel:text('Bob')", timeout=SYNC_TIMEOUT_MS)
    bob.page.wait_for_selector(".cm-yLabel:text('Ada')", timeout=SYNC_TIMEOUT_MS)
    # Renaming shows at once in the other tab: in the people list and on the cursor.
    bob.set_name("Robert")
    wait_for_presence(ada, "Robert")
    ada.page.wait_for_selector(".cm-yLabel:text('Robert')", timeout=SYNC_TIMEOUT_MS)
    ada.page.wait_for_selector(".cm-ySelectionInfo:text('Robert')", state="attached", timeout=SYNC_TIMEOUT_MS)
    assert ada.page.locator(".cm-yLabel:text('Bob')").count() == 0
    assert ada.page.locator(".cm-ySelectionInfo:text('Bob')").count() == 0
    assert bob.page.evaluate("() => localStorage.getItem('collab:name')") == "Robert"
    ada.wait_saved()
    bob.wait_saved()
    assert ada.saved_label() == "Saved"
    assert ada.connection() == "connected"
    ada.screenshot("browser-two-pages-ada")
    bob.screenshot("browser-two-pages-bob")


def test_home_starts_a_new_document(server: ServerProcess, editors: Callable[[str], Editor]) -> None:
    first = editors("first").open_home(server.http_url + "/")
    first.page.click("#new-doc")
    first.wait_started()
    match = re.fullmatch(rf"{re.escape(server.http_url)}/d/([a-z]+-[a-z]+-\d{{4}})", first.page.url)
    assert match, first.page.url
    name = match.group(1)
    assert first.page.locator("#doc-title").input_value() == ""
    assert first.page.locator("#doc-title").get_attribute("placeholder") == "Untitled document"
    assert first.page.title().startswith(name)
    first.wait_synced()
    assert first.text() == ""
    first.type_at("end", "a brand new document")
    first.wait_saved()
    first.screenshot("browser-new-document")

    second = editors("second").open_home(server.http_url + "/")
    second.page.click("#new-doc")
    second.wait_started()
    assert second.page.url != first.page.url
    second.wait_synced()
    assert second.text() == ""
    # The link in the address bar opens the same document for someone else.
    third = editors("third").open(first.page.url)
    third.wait_text("a brand new document")


@pytest.mark.parametrize("restart", ["same-store", "empty-store"])
def test_outage_both_pages_keep_typing_and_converge(restart: str, tmp_path: Path,
                                                    server_factory: Callable[..., ServerProcess],
                                                    editors: Callable[[str], Editor]) -> None:
    first_store = f"sqlite:///{tmp_path / 'first.db'}"
    server = server_factory(first_store)
    url = document_url(server, f"outage-{restart}")
    ada, bob = two_synced_pages(editors, url)
    ada.type_at("start", "ada online\n")
    bob.wait_text("ada online\n")
    bob.type_at("end", "bob online")
    online = "ada online\nbob online"
    ada.wait_text(online)
    ada.wait_saved()
    bob.wait_saved()

    assert server.terminate() == 0
    for editor in (ada, bob):
        editor.page.wait_for_selector('#connection:not([data-state="connected"])', timeout=SYNC_TIMEOUT_MS)
    ada.type_at("start", "ada offline ")
    bob.type_at("end", " bob offline")
    for editor in (ada, bob):
        editor.page.wait_for_selector('#saved[data-state="unsaved"]', timeout=SYNC_TIMEOUT_MS)
    assert ada.text() == "ada offline ada online\nbob online"
    assert bob.text() == "ada online\nbob online bob offline"
    assert re.fullmatch(r"Unsaved changes \(\d+\)", ada.saved_label())
    ada.screenshot(f"browser-outage-{restart}-ada-offline")

    second_store = first_store if restart == "same-store" else f"sqlite:///{tmp_path / 'second.db'}"
    server = server_factory(second_store, port=server.port)
    expected = "ada offline ada online\nbob online bob offline"
    for editor in (ada, bob):
        editor.wait_text(expected, timeout=RECONNECT_TIMEOUT_MS)
        editor.wait_saved(timeout=RECONNECT_TIMEOUT_MS)
        assert editor.connection() == "connected"
    ada.screenshot(f"browser-outage-{restart}-ada-back")
    bob.screenshot(f"browser-outage-{restart}-bob-back")

    # "Saved" was true: with both tabs gone, a restarted server still has every edit.
    ada.close()
    bob.close()
    assert server.terminate() == 0
    server = server_factory(second_store, port=server.port)
    carol = editors("carol").open(url)
    carol.wait_text(expected)


def test_reload_during_outage_keeps_edits(tmp_path: Path, server_factory: Callable[..., ServerProcess],
                                          editors: Callable[[str], Editor]) -> None:
    store = f"sqlite:///{tmp_path / 'reload.db'}"
    server = server_factory(store)
    url = document_url(server, "reload-outage")
    ada = editors("ada").open(url)
    ada.wait_synced()
    ada.type_at("end", "typed online\n")
    ada.wait_saved()
    # The service worker keeps the page itself loadable while the server is down.
    assert ada.page.evaluate("() => navigator.serviceWorker.ready.then(r => r.active !== null)")

    assert server.terminate() == 0
    ada.type_at("end", "typed while the server is down")
    ada.page.wait_for_selector('#saved[data-state="unsaved"]', timeout=SYNC_TIMEOUT_MS)
    ada.page.reload()
    assert "beforeunload" in ada.dialogs, "closing a tab with unsaved changes must warn"
    ada.wait_started()
    expected = "typed online\ntyped while the server is down"
    ada.wait_text(expected)
    # Restored from the browser, not from a server: still unsaved, still not connected.
    assert ada.page.locator("#saved").get_attribute("data-state") == "unsaved"
    assert ada.connection() != "connected"
    ada.screenshot("browser-reload-offline")

    server = server_factory(store, port=server.port)
    ada.wait_synced(timeout=RECONNECT_TIMEOUT_MS)
    ada.wait_saved(timeout=RECONNECT_TIMEOUT_MS)
    bob = editors("bob").open(url)
    bob.wait_text(expected)


def test_served_with_sensible_caching(server: ServerProcess) -> None:
    if not INDEX_HTML.is_file():
        require_service("web bundle", "web/dist/index.html is not built (run `make web`)")
    with urllib.request.urlopen(server.http_url + "/d/cache-check", timeout=5) as resp:
        html = resp.read().decode()
        assert resp.headers["Cache-Control"] == "no-cache"
    # Relative to the app's root (the page sets its base URL), so the app can live under a prefix.
    assets = re.findall(r'"(assets/app-[A-Za-z0-9]+\.(?:js|css))"', html)
    assert len(assets) == 2, html
    for asset in assets:
        with urllib.request.urlopen(f"{server.http_url}/{asset}", timeout=5) as resp:
            assert resp.status == 200
            assert "immutable" in resp.headers["Cache-Control"]
    with urllib.request.urlopen(server.http_url + "/sw.js", timeout=5) as resp:
        assert resp.headers["Cache-Control"] == "no-cache"
        assert "javascript" in resp.headers["Content-Type"]
        worker = resp.read().decode()
    assert all(asset in worker for asset in assets)



def test_offline_status_and_immediate_retry_when_back_online(
        tmp_path: Path, server_factory: Callable[..., ServerProcess],
        editors: Callable[[str], Editor]) -> None:
    store = f"sqlite:///{tmp_path / 'online.db'}"
    server = server_factory(store)
    ada = editors("ada").open(document_url(server, "back-online"))
    ada.wait_synced()
    assert server.terminate() == 0
    # Let the backoff grow until the next scheduled attempt is seconds away.
    ada.page.wait_for_function(
        "() => collab.provider.state === 'waiting' && collab.provider.retryAt - Date.now() > 3000",
        timeout=RECONNECT_TIMEOUT_MS, polling=50)
    ada.page.wait_for_selector("#connection:has-text('Reconnecting in')")
    ada.context.set_offline(True)
    ada.page.wait_for_selector("#connection[data-state='offline']:has-text('Offline — edits are kept')")
    ada.type_at("end", "written offline")
    ada.page.wait_for_selector("#saved:has-text('Unsaved changes')")
    ada.screenshot("browser-offline")

    server = server_factory(store, port=server.port)
    ada.page.wait_for_function("() => collab.provider.retryAt - Date.now() > 1500",
                               timeout=RECONNECT_TIMEOUT_MS, polling=50)
    retry_at = ada.page.evaluate("() => collab.provider.retryAt")
    ada.context.set_offline(False)  # fires `online`: the page must not wait for its timer
    ada.wait_synced(timeout=RECONNECT_TIMEOUT_MS)
    synced_at = ada.page.evaluate("() => Date.now()")
    assert synced_at < retry_at, "reconnected only when the backoff timer fired"
    ada.wait_saved()


def test_saved_only_after_the_store_committed(server_factory: Callable[..., ServerProcess],
                                              editors: Callable[[str], Editor]) -> None:
    # A long group-commit window: the other tab sees the edit at once (broadcasts go out before
    # the commit), but the author's tab must not claim "saved" until the commit acks it.
    server = server_factory(args=["--commit-window", "3"])
    url = document_url(server, "honest-saved")
    ada, bob = two_synced_pages(editors, url)
    ada.type_at("end", "durable?")
    bob.wait_text("durable?")
    assert ada.page.locator("#saved").get_attribute("data-state") == "unsaved"
    assert ada.saved_label().startswith("Unsaved changes (")
    ada.wait_saved()
    assert ada.saved_label() == "Saved"


def test_going_offline_while_connected_says_so_at_once(server: ServerProcess,
                                                      editors: Callable[[str], Editor]) -> None:
    # The server is up and the socket looks open: the browser's own word that the network is
    # gone must win over "connected" (a dead socket may otherwise look open for half a minute).
    ada = editors("ada").open(document_url(server, "offline-while-connected"))
    ada.wait_synced()
    ada.context.set_offline(True)
    ada.page.wait_for_selector("#connection[data-state='offline']:has-text('Offline — edits are kept')",
                               timeout=5_000)
    ada.type_at("end", "typed offline")
    ada.page.wait_for_selector('#saved[data-state="unsaved"]', timeout=SYNC_TIMEOUT_MS)
    ada.context.set_offline(False)
    ada.wait_synced(timeout=RECONNECT_TIMEOUT_MS)
    ada.wait_saved()
    assert ada.connection() == "connected"
    editors("bob").open(document_url(server, "offline-while-connected")).wait_text("typed offline")


@pytest.mark.parametrize("name", ["x" * 256, "a%00b", "tab%09name"])
def test_a_name_the_server_refuses_is_explained_not_retried(name: str, server: ServerProcess,
                                                            editors: Callable[[str], Editor]) -> None:
    ada = editors("ada")
    sockets: list[str] = []
    ada.page.on("websocket", lambda ws: sockets.append(ws.url))
    ada.page.goto(document_url(server, name))
    ada.page.wait_for_selector(".notice:has-text('This link cannot open a document')",
                               timeout=SYNC_TIMEOUT_MS)
    assert ada.page.locator("#connection .label").inner_text() == "Not opened"
    assert not ada.page.locator("#saved").is_visible()
    assert ada.page.locator(".notice a[href='./']").is_visible()
    assert sockets == []
    ada.screenshot("browser-refused-name")
    ada.page.click(".notice button:has-text('Start a new document')")
    ada.wait_started()
    assert re.fullmatch(rf"{re.escape(server.http_url)}/d/[a-z]+-[a-z]+-\d{{4}}", ada.page.url), ada.page.url


def test_the_longest_allowed_name_opens(server: ServerProcess, editors: Callable[[str], Editor]) -> None:
    name = "n" * 255
    ada = editors("ada").open(document_url(server, name))
    ada.wait_synced()
    ada.type_at("end", "at the limit")
    ada.wait_saved()
