"""The editor as a document tool, in headless Chromium against real ``collab serve`` processes:
the home page, titles, Markdown preview and its sanitizing, download and upload, many people.

Every test fails on an uncaught page error or a console error (the ``editors`` fixture).
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest

from collab import crdt
from collab.tokens import mint
from tests.servers import ServerProcess
from tests.test_browser import (  # noqa: F401
    RECONNECT_TIMEOUT_MS,
    SYNC_TIMEOUT_MS,
    Editor,
    browser,
    document_url,
    editors,
    two_synced_pages,
    wait_for_presence,
)

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 760}


@pytest.fixture
def tabs(editors: Callable[..., Editor]) -> Callable[..., Editor]:  # noqa: F811
    """Browser tabs, each its own person: ``tabs(label, viewport=...)``."""
    return editors


def set_title(editor: Editor, title: str) -> None:
    field = editor.page.locator("#doc-title")
    field.fill(title)
    field.press("Enter")


def wait_title(editor: Editor, title: str) -> None:
    """The header field and the tab both show ``title``."""
    try:
        editor.page.wait_for_function(
            "(t) => document.getElementById('doc-title').value === t && document.title.startsWith(t + ' ·')",
            arg=title, timeout=SYNC_TIMEOUT_MS)
    except Exception as exc:
        shown = editor.page.evaluate("() => [document.getElementById('doc-title').value, document.title]")
        raise AssertionError(f"{editor.label}: title is {shown!r}, expected {title!r}") from exc


def home_rows(editor: Editor) -> list[dict[str, str]]:
    return list(editor.page.evaluate("""() => [...document.querySelectorAll('#recent .doc-row')].map(r => ({
        room: r.dataset.room, title: r.querySelector('.row-title').textContent,
        time: r.querySelector('.row-time').textContent,
        href: r.querySelector('a').getAttribute('href')}))"""))


def set_text(editor: Editor, text: str) -> None:
    """Replace the whole text, as another Yjs client would (not typed: no auto-indent or pairing)."""
    editor.page.evaluate("(t) => { const y = collab.ytext; y.doc.transact(() => { y.delete(0, y.length); "
                         "y.insert(0, t) }) }", text)


def choose_view(editor: Editor, mode: str) -> None:
    if editor.page.locator("#view-mode").is_visible():
        editor.page.click(f"#view-mode [data-mode='{mode}']")
    else:
        editor.page.click("#menu-button")
        editor.page.click(f"#menu #view-mode [data-mode='{mode}']")
        editor.page.keyboard.press("Escape")
    editor.page.wait_for_selector(f"#workspace[data-mode='{mode}']")


# --- finding and naming documents -----------------------------------------------------------------

def test_home_lists_documents_opened_before_and_opens_one(server: ServerProcess,
                                                          tabs: Callable[..., Editor]) -> None:
    ada = tabs("ada")
    for name, title, text in [("alpha-plan", "Alpha plan", "the alpha text"),
                              ("beta-notes", "Beta notes", "the beta text"),
                              ("gamma-untitled", "", "no title here")]:
        ada.open(document_url(server, name))
        ada.wait_synced()
        if title:
            set_title(ada, title)
            wait_title(ada, title)
        ada.type_at("end", text)
        ada.wait_saved()

    ada.open_home(server.http_url + "/")
    assert ada.page.title() == "Documents · collab"
    rows = home_rows(ada)
    assert [r["room"] for r in rows] == ["gamma-untitled", "beta-notes", "alpha-plan"]  # most recent first
    assert [r["title"] for r in rows] == ["Untitled document", "Beta notes", "Alpha plan"]
    assert all(r["time"] == "just now" for r in rows)
    assert rows[2]["href"] == "d/alpha-plan"  # relative to the app's root
    ada.screenshot("documents-home")

    # Search by title (case and accents ignored) or by name.
    ada.page.fill("#search", "ALPHA")
    ada.page.wait_for_function("() => document.querySelectorAll('#recent .doc-row').length === 1")
    assert home_rows(ada)[0]["room"] == "alpha-plan"
    ada.page.fill("#search", "gamma")
    ada.page.wait_for_function("() => document.querySelectorAll('#recent .doc-row').length === 1")
    ada.page.fill("#search", "nothing like this")
    ada.page.wait_for_selector("#recent-empty:has-text('No document here matches')")
    ada.page.fill("#search", "")

    # Remove from the list (the document stays), then undo.
    ada.page.hover("#recent .doc-row[data-room='beta-notes']")
    ada.page.click("#recent .doc-row[data-room='beta-notes'] [data-action='remove']")
    ada.page.wait_for_function("() => !document.querySelector(\"#recent .doc-row[data-room='beta-notes']\")")
    ada.page.click("#toast .toast-action")
    ada.page.wait_for_selector("#recent .doc-row[data-room='beta-notes']")
    assert [r["room"] for r in home_rows(ada)] == ["gamma-untitled", "beta-notes", "alpha-plan"]

    ada.page.click("#recent .doc-row[data-room='alpha-plan'] a")
    ada.wait_started()
    assert ada.page.url == document_url(server, "alpha-plan")
    ada.wait_text("the alpha text")
    wait_title(ada, "Alpha plan")
    # Opening it moved it to the front.
    ada.open_home(server.http_url + "/")
    assert home_rows(ada)[0]["room"] == "alpha-plan"


def api(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def put_document(server: ServerProcess, name: str, title: str, text: str) -> None:
    """A document made by another program, through the document API."""
    doc = crdt.document_from([])
    doc.edit_text(0, insert=title, field="title")
    doc.edit_text(0, insert=text)
    status, body = api("POST", f"{server.http_url}/api/docs/{name}/update", doc.full_state())
    assert status == 204, body


def server_rows(editor: Editor) -> list[dict[str, str]]:
    return list(editor.page.evaluate("""() => [...document.querySelectorAll('#server-docs .doc-row')]
        .map(r => ({ room: r.dataset.room, title: r.querySelector('.row-title').textContent,
        meta: r.querySelector('.row-meta').textContent}))"""))


def wait_server_rows(editor: Editor, count: int) -> None:
    editor.page.wait_for_function("(n) => document.querySelectorAll('#server-docs .doc-row').length === n",
                                  arg=count, timeout=SYNC_TIMEOUT_MS)


def test_home_lists_every_document_on_the_server_pages_searches_renames_and_deletes(
        server: ServerProcess, tabs: Callable[..., Editor]) -> None:
    for i in range(53):
        put_document(server, f"bulk-{i:02d}", f"Bulk document {i}", f"text {i}")
    put_document(server, "quarterly", "Quarterly Plan", "the plan")
    put_document(server, "caf%C3%A9", "Menu du café", "the menu")
    put_document(server, "doomed", "Doomed notes", "soon gone")
    bob = tabs("bob").open(document_url(server, "doomed"))
    bob.wait_text("soon gone")
    sockets: list[str] = []
    bob.page.on("websocket", lambda ws: sockets.append(ws.url))

    ada = tabs("ada").open_home(server.http_url + "/")  # a browser that opened nothing yet
    wait_server_rows(ada, 50)  # the first page, in name order
    assert server_rows(ada)[0] == {"room": "bulk-00", "title": "Bulk document 0",
                                   "meta": server_rows(ada)[0]["meta"]}
    assert re.fullmatch(r"bulk-00 · \d+ bytes", server_rows(ada)[0]["meta"])
    ada.page.click("#server-more")
    wait_server_rows(ada, 56)
    assert ada.page.locator("#server-more").is_hidden()
    assert [r["room"] for r in server_rows(ada)[-3:]] == ["caf%C3%A9", "doomed", "quarterly"]
    ada.screenshot("documents-home-server")

    # Searched on the server, by title (accents and case ignored) or by name.
    ada.page.fill("#search", "CAFE")
    wait_server_rows(ada, 1)
    assert server_rows(ada)[0]["title"] == "Menu du café"
    ada.page.fill("#search", "quarterly")
    wait_server_rows(ada, 1)
    ada.page.fill("#search", "no such thing")
    ada.page.wait_for_selector("#server-empty:has-text('No document on the server matches')")
    ada.page.fill("#search", "")
    wait_server_rows(ada, 50)

    # Rename from the list: Bob, who has it open, sees the new title.
    ada.page.fill("#search", "doomed")
    wait_server_rows(ada, 1)
    row = "#server-docs .doc-row[data-room='doomed']"
    ada.page.hover(row)
    ada.page.click(f"{row} [data-action='rename']")
    ada.page.locator(f"{row} .rename-field").fill("Notes to delete")
    ada.page.locator(f"{row} .rename-field").press("Enter")
    ada.page.wait_for_selector("#toast:has-text('Renamed to “Notes to delete”')", timeout=SYNC_TIMEOUT_MS)
    wait_title(bob, "Notes to delete")
    assert server_rows(ada)[0]["title"] == "Notes to delete"

    # Delete asks first; cancelling changes nothing.
    ada.page.hover(row)
    ada.page.click(f"{row} [data-action='delete']")
    ada.page.wait_for_selector("#confirm-dialog[open]:has-text('Delete “Notes to delete”?')")
    ada.screenshot("documents-delete-confirm")
    ada.page.click("#confirm-no")
    ada.page.wait_for_selector("#confirm-dialog", state="hidden")
    assert api("GET", f"{server.http_url}/api/docs/doomed")[0] == 200
    ada.page.hover(row)
    ada.page.click(f"{row} [data-action='delete']")
    ada.page.click("#confirm-yes")
    ada.page.wait_for_selector("#toast:has-text('Deleted “Notes to delete”')", timeout=SYNC_TIMEOUT_MS)
    wait_server_rows(ada, 0)
    assert api("GET", f"{server.http_url}/api/docs/doomed")[0] == 410

    # Bob's page says so, stops editing and stops reconnecting.
    bob.page.wait_for_selector("#ended[data-code='4410']:has-text('This document was deleted')",
                               timeout=SYNC_TIMEOUT_MS)
    assert bob.page.locator("#connection .label").inner_text() == "Deleted"
    assert bob.page.evaluate("() => collab.provider.shouldConnect") is False
    bob.page.locator(".cm-content").press("End")
    bob.page.keyboard.type("typed after the delete")
    assert bob.text() == "soon gone"
    bob.screenshot("documents-deleted-notice")
    bob.page.wait_for_timeout(2000)  # longer than the first reconnection delays
    assert sockets == [], "the page reconnected to a deleted document"
    with bob.page.expect_download() as info:
        bob.page.click("#ended button:has-text('Download this copy')")
    assert info.value.suggested_filename == "Notes to delete.md"
    # The deleted document left Bob's list of documents too.
    bob.open_home(server.http_url + "/")
    assert "doomed" not in [r["room"] for r in home_rows(bob)]


def test_the_server_list_is_hidden_where_the_server_does_not_list_documents(
        server_factory: Callable[..., ServerProcess], tabs: Callable[..., Editor]) -> None:
    server = server_factory("memory://", env={"COLLAB_SECRET": "s" * 40})
    ada = tabs("ada").open_home(server.http_url + "/")
    ada.page.wait_for_function("() => collabHome.listed.then(() => true)")
    assert ada.page.locator("#server-section").is_hidden()
    assert ada.page.locator("#recent-empty").is_visible()


def test_a_title_renamed_in_one_tab_shows_in_the_other(server: ServerProcess,
                                                       tabs: Callable[..., Editor]) -> None:
    url = document_url(server, "titled")
    ada, bob = two_synced_pages(tabs, url)
    assert ada.page.title() == "titled · collab"  # no title yet: the tab shows the name
    set_title(ada, "Quarterly report")
    wait_title(bob, "Quarterly report")
    # Both edit the title at once, at either end: both edits survive.
    ada.page.locator("#doc-title").focus()
    ada.page.keyboard.press("End")
    bob.page.locator("#doc-title").focus()
    bob.page.keyboard.press("Home")
    ada.page.keyboard.type(" (draft)", delay=5)
    bob.page.keyboard.type("Q3 ", delay=5)
    for editor in (ada, bob):
        wait_title(editor, "Q3 Quarterly report (draft)")
    ada.wait_saved()
    bob.wait_saved()
    bob.screenshot("documents-title-live")

    # Renamed from the home page of another browser, while Ada has the document open.
    bob.open_home(server.http_url + "/")
    assert home_rows(bob)[0]["title"] == "Q3 Quarterly report (draft)"
    row = "#recent .doc-row[data-room='titled']"
    bob.page.hover(row)
    bob.page.click(f"{row} [data-action='rename']")
    field = bob.page.locator(f"{row} .rename-field")
    field.fill("Final report")
    field.press("Enter")
    bob.page.wait_for_selector("#toast:has-text('Renamed to “Final report”')", timeout=SYNC_TIMEOUT_MS)
    assert home_rows(bob)[0]["title"] == "Final report"
    wait_title(ada, "Final report")
    # Stored: a new visitor gets it from the server.
    carol = tabs("carol").open(url)
    wait_title(carol, "Final report")
    assert carol.page.evaluate("() => collab.title.toString()") == "Final report"


def test_the_home_page_and_new_documents_work_offline(tmp_path: Path,
                                                      server_factory: Callable[..., ServerProcess],
                                                      tabs: Callable[..., Editor]) -> None:
    store = f"sqlite:///{tmp_path / 'offline.db'}"
    server = server_factory(store)
    ada = tabs("ada").open(document_url(server, "before-the-outage"))
    ada.wait_synced()
    set_title(ada, "Written online")
    ada.wait_saved()
    assert ada.page.evaluate("() => navigator.serviceWorker.ready.then(r => r.active !== null)")

    assert server.terminate() == 0
    ada.open_home(server.http_url + "/")  # the service worker's copy of the page
    assert [r["title"] for r in home_rows(ada)] == ["Written online"]
    ada.page.click("#new-doc")
    ada.wait_started()
    ada.type_at("end", "started offline")
    ada.page.wait_for_selector('#saved[data-state="unsaved"]', timeout=SYNC_TIMEOUT_MS)
    assert ada.connection() != "connected"

    server = server_factory(store, port=server.port)
    ada.wait_synced(timeout=RECONNECT_TIMEOUT_MS)
    ada.wait_saved(timeout=RECONNECT_TIMEOUT_MS)
    tabs("bob").open(ada.page.url).wait_text("started offline")


# --- Markdown -------------------------------------------------------------------------------------

HOSTILE = """# Heading one

Some **bold** text.

## Heading two

- apple
- banana

1. first
2. second

![a picture](missing.png)

<script>window.__xss = 'script'</script>

<img src="missing.png" onerror="window.__xss = 'img'">

<svg><image href="missing.svg" onerror="window.__xss = 'svg'"></image></svg>

<p onclick="window.__xss = 'click'">clickable</p>

<p id="saved">not the page's saved status</p>

[a link](javascript:window.__xss='link') and <a href="javascript:window.__xss='anchor'">anchor</a>

<iframe srcdoc="<script>parent.__xss = 'iframe'</script>"></iframe>

<div style="position:fixed;inset:0;background:red">covering the page</div>

<form action="https://example.com/"><input name="q"><button>send</button></form>

<details><summary>More</summary>kept: harmless HTML still renders</details>
"""


def test_markdown_preview_renders_and_no_script_from_the_document_runs(
        server: ServerProcess, tabs: Callable[..., Editor]) -> None:
    ada, bob = two_synced_pages(tabs, document_url(server, "markdown"))
    set_text(bob, HOSTILE)
    ada.wait_text(HOSTILE)
    # Highlighting in the editor: the heading is styled as one.
    ada.page.wait_for_selector(".cm-content .md-h1:has-text('Heading one')")
    choose_view(ada, "split")
    preview = ada.page.locator("#preview")
    ada.page.wait_for_selector("#preview h1")
    assert preview.locator("h1").inner_text() == "Heading one"
    assert preview.locator("h2").inner_text() == "Heading two"
    assert preview.locator("ul > li").all_inner_texts() == ["apple", "banana"]
    assert preview.locator("ol > li").all_inner_texts() == ["first", "second"]
    assert preview.locator("strong").inner_text() == "bold"
    # Let every image try to load (and fail), so that an onerror would have had its chance.
    ada.page.wait_for_function("() => [...document.querySelectorAll('#preview img')].every(i => i.complete)")
    checks = ada.page.evaluate("""() => {
        const p = document.getElementById('preview')
        const all = [...p.querySelectorAll('*')]
        return {
            xss: window.__xss === undefined ? null : window.__xss,
            scripts: p.querySelectorAll('script, iframe, form, input, button, style').length,
            handlers: all.filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
            styled: all.filter(e => e.hasAttribute('style')).length,
            jsLinks: all.filter(e => /javascript:/i.test(e.getAttribute('href') || '')).length,
            savedStatus: document.querySelectorAll('#saved').length,
            images: p.querySelectorAll('img').length,
        }
    }""")
    assert checks == {"xss": None, "scripts": 0, "handlers": 0, "styled": 0, "jsLinks": 0,
                      "savedStatus": 1, "images": 1}
    # HTML carrying an event handler is shown as text rather than parsed at all; other HTML is
    # sanitized, and what is harmless stays.
    assert "onerror=\"window.__xss = 'img'\"" in preview.inner_text()
    assert "<script>" not in preview.inner_text()
    assert preview.locator("details summary").inner_text() == "More"
    assert preview.locator("text=covering the page").count() == 1  # the text stays, not the style
    ada.screenshot("documents-markdown-split")
    choose_view(ada, "preview")
    assert not ada.page.locator("#editor").is_visible()
    ada.screenshot("documents-markdown-preview")
    # The preview follows edits.
    bob.type_at("start", "# A new first heading\n\n")
    ada.page.wait_for_function(
        "() => document.querySelector('#preview h1').textContent === 'A new first heading'")
    choose_view(ada, "edit")
    assert not ada.page.locator("#preview").is_visible()
    assert ada.page.evaluate("() => window.__xss") is None


def heading_offset(editor: Editor, pane: str, target: str) -> float:
    """How far below the top of ``pane`` the element ``target`` is, in pixels."""
    return float(editor.page.evaluate(
        "([pane, target]) => document.querySelector(target).getBoundingClientRect().top - "
        "document.querySelector(pane).getBoundingClientRect().top", [pane, target]))


def test_split_view_scrolls_text_and_preview_together(server: ServerProcess,
                                                      tabs: Callable[..., Editor]) -> None:
    ada, bob = two_synced_pages(tabs, document_url(server, "long-read"))
    set_text(bob, "\n\n".join(f"## Section {i}\n\n" + "Some words in a paragraph. " * 25 for i in range(60)))
    choose_view(ada, "split")
    ada.page.wait_for_function("() => document.querySelectorAll('#preview h2').length === 60")
    # Scroll the text to section 40: the preview follows to its heading.
    ada.page.evaluate("""() => {
        const view = collab.view
        const at = view.state.doc.toString().indexOf('## Section 40')
        view.dispatch({ effects: view.constructor.scrollIntoView(at, { y: 'start' }) })
    }""")
    ada.page.wait_for_function("""() => {
        const h = [...document.querySelectorAll('#preview h2')][40].getBoundingClientRect().top
        const top = document.getElementById('preview-pane').getBoundingClientRect().top
        return h - top > -60 && h - top < 140
    }""", timeout=5_000)
    # Scroll the preview to section 10: the text follows.
    ada.page.evaluate("""() => {
        const pane = document.getElementById('preview-pane')
        const h = [...document.querySelectorAll('#preview h2')][10]
        pane.scrollTop += h.getBoundingClientRect().top - pane.getBoundingClientRect().top
    }""")
    ada.page.wait_for_function("""() => {
        const line = [...document.querySelectorAll('.cm-line')].find(l => l.textContent === '## Section 10')
        if (!line) return false
        const pane = document.getElementById("editor-pane")
        const top = line.getBoundingClientRect().top - pane.getBoundingClientRect().top
        return top > -60 && top < 140
    }""", timeout=5_000)
    ada.screenshot("documents-split-scrolled")


def test_word_and_character_counts(server: ServerProcess, tabs: Callable[..., Editor]) -> None:
    ada = tabs("ada").open(document_url(server, "counts"))
    ada.wait_synced()
    counts = ada.page.locator("#counts")
    assert counts.inner_text() == "0 words · 0 characters"
    ada.type_at("end", "Hello wide world\nnaïve café 😀")
    # Line breaks are not characters; an emoji or an accented letter is one.
    ada.page.wait_for_function("() => document.getElementById('counts').textContent === "
                               "'5 words · 28 characters'")
    ada.page.keyboard.press("Control+Home")
    ada.page.keyboard.press("Shift+End")
    ada.page.wait_for_function("() => document.getElementById('counts').textContent === "
                               "'3 of 5 words · 16 of 28 characters'")


# --- text in and out ------------------------------------------------------------------------------

EXACT = "# Notes\r\n\ttabbed line  \nnaïve café 😀 中文\n\n- [ ] task\nno newline at the end"


@pytest.mark.parametrize("fmt", ["md", "txt"])
def test_download_gives_the_exact_text(fmt: str, server: ServerProcess, tabs: Callable[..., Editor],
                                       tmp_path: Path) -> None:
    ada, bob = two_synced_pages(tabs, document_url(server, f"download-{fmt}"))
    set_text(bob, EXACT)
    ada.wait_text(EXACT)
    set_title(ada, "Trip: plan/notes?")
    ada.page.click("#menu-button")
    with ada.page.expect_download() as info:
        ada.page.click(f"#menu [data-action='download-{fmt}']")
    download = info.value
    assert download.suggested_filename == f"Trip plan notes.{fmt}"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == EXACT.encode("utf-8")


def choose_file(editor: Editor, selector: str, name: str, data: bytes, mime: str) -> None:
    editor.page.set_input_files(selector, files=[{"name": name, "mimeType": mime, "buffer": data}])


def test_upload_creates_a_document_with_the_files_text(server: ServerProcess,
                                                       tabs: Callable[..., Editor]) -> None:
    text = "# Trip plan\n\n- pack\n- go\n\nnaïve 😀\n"
    ada = tabs("ada").open_home(server.http_url + "/")
    choose_file(ada, "#home-file", "Trip plan.md", text.encode(), "text/markdown")
    ada.wait_started()
    pattern = rf"{re.escape(server.http_url)}/d/trip-plan-[a-z0-9]{{6}}"
    assert re.fullmatch(pattern, ada.page.url), ada.page.url
    ada.wait_text(text)
    wait_title(ada, "Trip plan")
    ada.wait_synced()
    ada.wait_saved()
    ada.screenshot("documents-uploaded")
    # On the server, for everyone with the link.
    bob = tabs("bob").open(ada.page.url)
    bob.wait_text(text)
    wait_title(bob, "Trip plan")


def drop_file(editor: Editor, name: str, text: str, mime: str) -> None:
    """Drop a file on the page, as dragging it from the desktop does."""
    editor.page.evaluate("""([name, text, mime]) => {
        const data = new DataTransfer()
        data.items.add(new File([text], name, { type: mime }))
        for (const type of ['dragenter', 'dragover', 'drop']) {
            const event = new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true })
            document.body.dispatchEvent(event)
        }
    }""", [name, text, mime])


def test_a_dropped_file_becomes_a_document_and_a_binary_one_is_refused(
        server: ServerProcess, tabs: Callable[..., Editor]) -> None:
    ada = tabs("ada").open_home(server.http_url + "/")
    choose_file(ada, "#home-file", "photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png")
    ada.page.wait_for_selector("#toast:has-text('is not a Markdown or text file')")
    choose_file(ada, "#home-file", "fake.txt", b"text\x00with a NUL", "text/plain")
    ada.page.wait_for_selector("#toast:has-text('“fake.txt” is not a text file')")
    assert ada.page.url == server.http_url + "/"

    drop_file(ada, "Windows notes.txt", "line one\r\nline two\r\n", "text/plain")
    ada.wait_started()
    assert "/d/windows-notes-" in ada.page.url
    ada.wait_text("line one\nline two\n")  # line endings become the editor's
    wait_title(ada, "Windows notes")
    ada.wait_saved()
    # The new document is in the list, with its title.
    ada.open_home(server.http_url + "/")
    assert home_rows(ada)[0]["title"] == "Windows notes"


# --- many people ----------------------------------------------------------------------------------

HEADER_ITEMS = ".doc-bar .brand, #doc-title, .status, #view-mode, #people, #copy-link, #me, #menu-button"


def header_layout(editor: Editor) -> dict[str, object]:
    return dict(editor.page.evaluate("""(selector) => {
        const bar = document.querySelector('.doc-bar')
        const items = [...document.querySelectorAll(selector)]
            .filter(e => bar.contains(e) && e.getClientRects().length > 0)
            .map(e => e.getBoundingClientRect())
        return {
            height: bar.getBoundingClientRect().height,
            overflow: bar.scrollWidth - bar.clientWidth,
            rowTop: Math.max(...items.map(r => r.top)),
            rowBottom: Math.min(...items.map(r => r.bottom)),
            right: Math.max(...items.map(r => r.right)),
            width: window.innerWidth,
            items: items.length,
        }
    }""", HEADER_ITEMS))


def label_boxes(editor: Editor) -> list[dict[str, float]]:
    return list(editor.page.evaluate("""() => [...document.querySelectorAll('.cm-yLabel')].map(e => {
        const r = e.getBoundingClientRect()
        return { name: e.textContent, left: r.left, top: r.top, right: r.right, bottom: r.bottom }
    })"""))


def assert_one_row(editor: Editor) -> None:
    layout = header_layout(editor)
    assert layout["overflow"] <= 0, layout
    assert layout["rowTop"] < layout["rowBottom"], layout  # every item shares one horizontal band
    assert layout["height"] <= 57, layout
    assert layout["right"] <= layout["width"], layout


def test_eight_people_keep_the_header_one_row_with_plus_n(server: ServerProcess,
                                                          tabs: Callable[..., Editor]) -> None:
    url = document_url(server, "crowded")
    line = "Everyone puts their cursor somewhere on this one line of text, close together."
    # Six people, and two more who watch: on a phone and on a desktop. Each sees seven others.
    names = ["Ada Lovelace", "Bob Kahn", "Carol Shaw", "Dan Bricklin", "Eve Astrid", "Fran Allen"]
    others = []
    for i, name in enumerate(names):
        person = tabs(name).open(url)
        person.wait_synced()
        person.set_name(name)
        if i == 0:
            person.type_at("end", line)
        else:
            person.wait_text(line)
        # Carets two characters apart: their labels would cover each other if simply drawn.
        person.page.evaluate(
            "(pos) => { collab.view.focus(); collab.view.dispatch({ selection: { anchor: pos } }) }",
            10 + 2 * i)
        others.append(person)

    phone = tabs("phone", viewport=PHONE)
    phone.open(url)
    phone.wait_synced()
    desk = tabs("desk").open(url)
    desk.wait_synced()

    for viewer, shown, more in ((phone, 2, 5), (desk, 4, 3)):
        viewer.page.wait_for_function("() => document.getElementById('people').dataset.count === '7'",
                                      timeout=SYNC_TIMEOUT_MS)
        assert viewer.page.locator("#people .person:not(.more)").count() == shown
        assert viewer.page.locator("#people-more").inner_text() == f"+{more}"
        assert_one_row(viewer)
    phone.screenshot("documents-eight-people-phone")

    # "+N" opens the list of everyone.
    phone.page.click("#people")
    phone.page.wait_for_selector("#people-panel:not([hidden])")
    assert len(phone.people()) == 7 and set(names) <= set(phone.people())
    phone.screenshot("documents-eight-people-phone-list")
    phone.page.keyboard.press("Escape")
    # On a phone, your own name is in the menu.
    phone.page.click("#menu-button")
    assert phone.page.locator("#menu #me-name").is_visible()
    phone.screenshot("documents-phone-menu")
    phone.page.keyboard.press("Escape")

    # Cursor labels: drawn for as many as fit, never overlapping each other.
    desk.page.wait_for_function("() => document.querySelectorAll('.cm-yLabel').length >= 2")
    boxes = label_boxes(desk)
    assert {b["name"] for b in boxes} <= set(desk.people())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a["right"] <= b["left"] or b["right"] <= a["left"] or \
                a["bottom"] <= b["top"] or b["bottom"] <= a["top"]
            assert apart, (a, b)
    # Whoever moved last gets their label.
    others[0].page.evaluate("() => collab.view.dispatch({ selection: { anchor: 60 } })")
    desk.page.wait_for_function("() => [...document.querySelectorAll('.cm-yLabel')]"
                                ".some(e => e.textContent === 'Ada Lovelace')")
    desk.screenshot("documents-eight-people-desktop")
    desk.page.click("#people")
    assert len(desk.people()) == 7 and set(names) <= set(desk.people())
    desk.screenshot("documents-eight-people-desktop-list")


# --- mounted under a prefix -------------------------------------------------------------------------

class PrefixedServer(ServerProcess):
    """collab behind a proxy that strips ``/collab`` (``tests/prefixed.py``)."""

    PREFIX = "/collab"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.PREFIX}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.prefixed", "--port", str(self.port), "--store", self.store,
                "--prefix", self.PREFIX]


@pytest.fixture
def prefixed(tmp_path: Path) -> Iterator[PrefixedServer]:
    server = PrefixedServer(f"sqlite:///{tmp_path / 'prefixed.db'}", log_path=tmp_path / "prefixed.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_every_url_is_relative_so_the_app_works_under_a_prefix(prefixed: PrefixedServer,
                                                               tabs: Callable[..., Editor]) -> None:
    ada = tabs("ada")
    requests: list[str] = []
    sockets: list[str] = []
    ada.page.on("request", lambda request: requests.append(request.url))
    ada.page.on("websocket", lambda socket: sockets.append(socket.url))
    ada.open_home(prefixed.http_url + "/")
    ada.page.click("#new-doc")
    ada.wait_started()
    match = re.fullmatch(rf"{re.escape(prefixed.http_url)}/d/([a-z]+-[a-z]+-\d{{4}})", ada.page.url)
    assert match, ada.page.url
    ada.wait_synced()
    ada.type_at("end", "under a prefix")
    ada.wait_saved()
    scope = ada.page.evaluate("() => navigator.serviceWorker.ready.then(r => r.scope)")
    assert scope == prefixed.http_url + "/"
    # A room name with slashes in it: still the app's root before the first /d/.
    ada.open(prefixed.http_url + "/d/team/notes")
    ada.wait_synced()
    ada.type_at("end", "nested name")
    ada.wait_saved()
    ada.page.click(".doc-bar .brand")
    ada.page.wait_for_function("() => window.collabHome !== undefined")
    assert [r["href"] for r in home_rows(ada)] == ["d/team/notes", f"d/{match.group(1)}"]

    ws = f"ws://127.0.0.1:{prefixed.port}{prefixed.PREFIX}/ws"
    assert sockets == [f"{ws}/{match.group(1)}?acks=1", f"{ws}/team/notes?acks=1"]
    outside = [u for u in requests if not u.startswith((prefixed.http_url + "/", "data:", "blob:"))]
    assert outside == []
    assert any("/assets/app-" in u for u in requests)


# --- sharing with the right rights ----------------------------------------------------------------

SHARE_SECRET = "share-secret-" + "s" * 32


def share_link(editor: Editor, mode: str, expiry: str) -> str:
    """Open the share panel, pick an expiry, make a link; returns the link it shows."""
    editor.page.click("#copy-link")
    editor.page.wait_for_selector("#share-panel[data-state='signed']", timeout=SYNC_TIMEOUT_MS)
    editor.page.select_option("#share-expiry", label=expiry)
    button = "#share-read" if mode == "read" else "#share-edit"
    editor.page.click(button)
    editor.page.wait_for_function(
        "(m) => { const f = document.getElementById('share-url');"
        " return !f.hidden && f.dataset.mode === m && f.value.includes('#token=') }",
        arg=mode, timeout=SYNC_TIMEOUT_MS)
    link = str(editor.page.locator("#share-url").input_value())
    editor.page.keyboard.press("Escape")
    return link


def test_share_links_edit_and_read_only_with_the_expiry_the_sharer_picks(
        server_factory: Callable[..., ServerProcess], tabs: Callable[..., Editor]) -> None:
    server = server_factory("memory://", env={"COLLAB_SECRET": SHARE_SECRET})
    owner = mint(SHARE_SECRET, mode="write", ttl=3 * 86400, doc_prefix="", name="Ada")
    ada = tabs("ada")
    ada.context.grant_permissions(["clipboard-read", "clipboard-write"])
    ada.open(f"{document_url(server, 'shared-plan')}#token={owner}")
    ada.wait_synced()
    assert ada.page.url == document_url(server, "shared-plan")  # the token left the address bar
    ada.type_at("end", "the plan")
    ada.wait_saved()

    # The expiry choices stop at what Ada's own token allows (3 days).
    ada.page.click("#copy-link")
    ada.page.wait_for_selector("#share-panel[data-state='signed']", timeout=SYNC_TIMEOUT_MS)
    labels = ada.page.locator("#share-expiry option").all_inner_texts()
    assert labels == ["1 hour", "1 day"]
    ada.screenshot("documents-share-panel")
    ada.page.keyboard.press("Escape")
    read_link = share_link(ada, "read", "1 day")
    assert ada.page.evaluate("() => navigator.clipboard.readText()") == read_link
    token = read_link.split("#token=", 1)[1]
    claims = jwt.decode(token, SHARE_SECRET, algorithms=["HS256"])
    assert claims["doc"] == "shared-plan" and claims["mode"] == "read"
    assert 86400 - 120 <= claims["exp"] - time.time() <= 86400

    # The read-only visitor sees the text and the people live, cannot type, and is told so.
    bob = tabs("bob").open(read_link)
    bob.wait_synced()
    bob.wait_text("the plan")
    bob.page.wait_for_selector("#read-only:not([hidden])")
    assert bob.page.locator("#read-only").inner_text().strip() == "Read only"
    bob.set_name("Bob")
    wait_for_presence(ada, "Bob")
    wait_for_presence(bob, "Ada")
    ada.type_at("end", ", live")
    bob.wait_text("the plan, live")
    bob.page.locator(".cm-content").click()
    bob.page.keyboard.type("bob was here")
    assert bob.text() == "the plan, live"
    assert bob.page.locator("#doc-title").evaluate("e => e.readOnly") is True
    bob.screenshot("documents-read-only-visitor")
    # Not even a change made behind the editor's back gets anywhere.
    bob.page.evaluate("() => collab.ytext.insert(0, 'forced ')")
    ada.type_at("end", ".")
    bob.page.wait_for_function("() => collab.ytext.toString().endsWith('live.')", timeout=SYNC_TIMEOUT_MS)
    assert ada.text() == "the plan, live."
    status, text = api("GET", f"{server.http_url}/api/docs/shared-plan?token={owner}")
    assert (status, text.decode()) == (200, "the plan, live.")

    # An edit link lets its visitor write.
    edit_link = share_link(ada, "write", "1 hour")
    carol = tabs("carol").open(edit_link)
    carol.wait_synced()
    carol.type_at("end", " Carol agrees.")
    ada.wait_text("the plan, live. Carol agrees.")
    assert carol.page.locator("#read-only").is_hidden()
    # The link keeps working from the home page (the token stays with the document).
    carol.open_home(server.http_url + "/")
    carol.page.click("#recent .doc-row[data-room='shared-plan'] a")
    carol.wait_started()
    carol.wait_text("the plan, live. Carol agrees.")

    # An expired link is explained, and the page stops trying.
    stale = mint(SHARE_SECRET, mode="read", ttl=-60, doc="shared-plan")
    dan = tabs("dan").open(f"{document_url(server, 'shared-plan')}#token={stale}")
    dan.page.wait_for_selector("#ended[data-code='4401']:has-text('This link no longer gives access')",
                               timeout=RECONNECT_TIMEOUT_MS)
    dan.screenshot("documents-expired-link")


def test_an_open_server_shares_the_page_link_itself(server: ServerProcess,
                                                    tabs: Callable[..., Editor]) -> None:
    ada = tabs("ada").open(document_url(server, "open-share"))
    ada.wait_synced()
    ada.page.click("#copy-link")
    ada.page.wait_for_selector(
        "#share-panel[data-state='open']:has-text('anyone with the link can read and edit')",
        timeout=SYNC_TIMEOUT_MS)
    assert ada.page.locator("#share-signed").is_hidden()
    ada.page.click("#share-plain")
    ada.page.wait_for_selector("#share-url:not([hidden])")
    assert ada.page.locator("#share-url").input_value() == document_url(server, "open-share")


# --- rewind -----------------------------------------------------------------------------------------

def versions_of(server: ServerProcess, name: str) -> list[dict[str, object]]:
    status, body = api("GET", f"{server.http_url}/api/docs/{name}/versions")
    assert status == 200, body
    return list(json.loads(body)["versions"])


def wait_versions(server: ServerProcess, name: str, count: int) -> None:
    deadline = time.monotonic() + SYNC_TIMEOUT_MS / 1000
    while len(versions_of(server, name)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} versions of {name!r} were kept"
        time.sleep(0.1)


def test_history_lists_versions_shows_differences_and_restores_undoably(
        server_factory: Callable[..., ServerProcess], tabs: Callable[..., Editor]) -> None:
    server = server_factory(args=["--version-quiet", "0.5", "--version-interval", "60"])
    url = document_url(server, "rewind")
    ada, bob = two_synced_pages(tabs, url)
    ada.set_name("Ada")
    bob.set_name("Bob")
    wait_for_presence(bob, "Ada")
    set_text(ada, "# Plan\nfirst draft\nthe end\n")  # one edit: one burst, however slow the machine
    ada.wait_saved()
    wait_versions(server, "rewind", 1)
    bob.wait_text("# Plan\nfirst draft\nthe end\n")
    set_text(bob, "# Plan\ncleaned up\nthe end\nmore from Bob\n")
    ada.wait_text("# Plan\ncleaned up\nthe end\nmore from Bob\n")
    bob.wait_saved()
    wait_versions(server, "rewind", 2)

    # The history, newest first, with who edited; a named version on request.
    ada.page.click("#menu-button")
    ada.page.click("#menu [data-action='history']")
    ada.page.wait_for_selector("#history:not([hidden]) .version-row")
    ada.page.fill("#version-label", "Before the review")
    ada.page.click("#version-name")
    ada.page.wait_for_selector("#toast:has-text('Kept this version as “Before the review”')")
    ada.page.wait_for_function("() => document.querySelectorAll('#version-list .version-row').length === 3")
    rows = ada.page.evaluate("""() => [...document.querySelectorAll('#version-list .version-row')].map(r => ({
        kind: r.dataset.kind, title: r.querySelector('.version-title').textContent,
        meta: r.querySelector('.version-meta').textContent}))""")
    assert [r["kind"] for r in rows] == ["named", "auto", "auto"]
    assert rows[0]["title"] == "Before the review"
    assert rows[2]["meta"].endswith("Ada"), rows
    assert "Bob" in rows[1]["meta"], rows

    # The first version beside the current text, the differences marked.
    ada.page.click("#version-list .version-row:last-child button")
    ada.page.wait_for_selector("#workspace[data-history='version'] #version-diff .diff-line")
    lines = ada.page.evaluate("""() => [...document.querySelectorAll('#version-diff .diff-line')]
        .map(l => [l.dataset.kind, l.querySelector('.diff-text').textContent])""")
    assert lines == [["same", "# Plan"], ["removed", "first draft"], ["added", "cleaned up"],
                     ["same", "the end"], ["added", "more from Bob"]]
    assert ada.page.locator("#version-summary").inner_text() == "Since then: 2 lines added, 1 removed."
    assert ada.page.locator("#editor").is_visible()  # beside the current text
    ada.screenshot("documents-history-version")

    # Restore: an edit everyone receives and the store keeps; undo takes it back.
    ada.page.click("#version-restore")
    first = "# Plan\nfirst draft\nthe end\n"
    ada.wait_text(first)
    bob.wait_text(first)
    ada.wait_saved()
    assert api("GET", f"{server.http_url}/api/docs/rewind") == (200, first.encode())
    ada.page.wait_for_selector("#version-summary:has-text('The same text as now.')")
    ada.page.click("#toast .toast-action")  # Undo
    restored = "# Plan\ncleaned up\nthe end\nmore from Bob\n"
    ada.wait_text(restored)
    bob.wait_text(restored)
    ada.wait_saved()
    assert api("GET", f"{server.http_url}/api/docs/rewind") == (200, restored.encode())
    # Restoring was itself kept as a version, and the history says so once reopened.
    wait_versions(server, "rewind", 4)
    ada.page.click("#version-close")
    ada.page.wait_for_selector("#workspace[data-history='list']")
    ada.page.click("#history-close")
    assert ada.page.locator("#history").is_hidden()


def test_a_document_is_deleted_from_its_own_page_after_a_confirmation(
        server: ServerProcess, tabs: Callable[..., Editor]) -> None:
    ada, bob = two_synced_pages(tabs, document_url(server, "delete-here"))
    ada.type_at("end", "short-lived")
    bob.wait_text("short-lived")
    ada.wait_saved()
    ada.page.click("#menu-button")
    ada.page.click("#menu [data-action='delete']")
    ada.page.wait_for_selector("#confirm-dialog[open]:has-text('Delete “delete-here”?')")
    ada.page.click("#confirm-no")
    ada.page.wait_for_selector("#confirm-dialog", state="hidden")
    assert api("GET", f"{server.http_url}/api/docs/delete-here")[0] == 200
    ada.page.click("#menu-button")
    ada.page.click("#menu [data-action='delete']")
    ada.page.click("#confirm-yes")
    for editor in (ada, bob):
        editor.page.wait_for_selector("#ended[data-code='4410']", timeout=SYNC_TIMEOUT_MS)
    assert api("GET", f"{server.http_url}/api/docs/delete-here")[0] == 410
