"""The complete example of docs/embedding.md, run as it is written there: a host application
with a login of its own mounts collab under /collab. Stock clients and headless Chromium open
documents through the prefix with the host's session cookie."""

from __future__ import annotations

import asyncio
import http.client
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pyclient import PyClient
from tests.servers import ROOT, ServerProcess
from tests.test_browser import Editor, browser, editors  # noqa: F401
from tests.test_browser_poll import Background, background  # noqa: F401

pytestmark = pytest.mark.timeout(120)

DOC = ROOT / "docs" / "embedding.md"


def example_source() -> str:
    """The one Python block under "A complete example"."""
    section = DOC.read_text().split("## A complete example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "docs/embedding.md has no complete example"
    return match.group(1)


class ExampleProcess(ServerProcess):
    """The example, started with ``python example.py`` (its port from PORT)."""

    def __init__(self, script: Path, store: str, log_path: Path) -> None:
        super().__init__(store, log_path=log_path)
        self.script = script
        self.env.update({"PORT": str(self.port), "COLLAB_STORE": store})

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{self.host_url}/collab"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/collab/ws"

    def command(self) -> list[str]:
        return [sys.executable, str(self.script)]

    def post(self, path: str, cookie: str | None) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("POST", path, headers={"cookie": cookie} if cookie else {})
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def login(self, user: str) -> tuple[int, str | None, str | None]:
        """(status, session cookie, where it redirects)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", f"/login?user={user}")
            response = connection.getresponse()
            response.read()
            cookie = response.getheader("set-cookie")
            session = cookie.split(";", 1)[0] if cookie else None
            return response.status, session, response.getheader("location")
        finally:
            connection.close()


@pytest.fixture
def example(tmp_path: Path) -> Iterator[ExampleProcess]:
    script = tmp_path / "example.py"
    script.write_text(example_source())
    process = ExampleProcess(script, f"sqlite:///{tmp_path / 'example.db'}", tmp_path / "example.log")
    process.start()
    yield process
    process.stop()


async def _session_clients(example: ExampleProcess) -> None:
    status, writer_cookie, location = example.login("ada")
    assert (status, location) == (303, "/collab/d/welcome") and writer_cookie is not None
    _, reader_cookie, _ = example.login("guest")
    assert example.login("mallory")[0] == 403
    writer = await PyClient(example.ws_url, "welcome", headers={"cookie": writer_cookie}).start()
    reader = await PyClient(example.ws_url, "welcome", headers={"cookie": str(reader_cookie)}).start()
    await writer.insert("written by ada")
    await reader.wait_text("written by ada")
    await reader.insert(" and not by the guest")
    anonymous = PyClient(example.ws_url, "welcome", reconnect=False)
    with pytest.raises(asyncio.TimeoutError):
        await anonymous.start(timeout=2)
    assert anonymous.close_codes == [403]
    late = await PyClient(example.ws_url, "welcome", headers={"cookie": writer_cookie}).start()
    assert late.text() == "written by ada"
    assert example.post("/stamp/welcome", reader_cookie)[0] == 403
    status, body = example.post("/stamp/welcome", writer_cookie)  # server.edit, then server.text
    assert (status, body) == (200, "written by adastamped for ada\n")
    await writer.wait_text("written by adastamped for ada\n")
    for client in (anonymous, late, reader, writer):
        await client.close()


def test_the_example_admits_by_the_hosts_session(example: ExampleProcess) -> None:
    asyncio.run(_session_clients(example))
    final = "document welcome changed: 30 characters"  # the text after the stamp
    deadline = time.monotonic() + 15  # on_change runs once the document has been quiet
    while final not in example.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert final in example.log()


@pytest.mark.browser
def test_a_page_under_the_prefix_co_edits_with_a_stock_client(
        example: ExampleProcess, background: Background,  # noqa: F811
        editors: Callable[[str], Editor]) -> None:  # noqa: F811
    _, cookie, _ = example.login("ada")
    assert cookie is not None
    client = background.run(PyClient(example.ws_url, "welcome", headers={"cookie": cookie}).start())
    background.run(client.insert("from python\n"))
    ada = editors("ada")
    ada.page.goto(f"{example.host_url}/login?user=ada")  # the host's login, then its redirect
    assert ada.page.url == f"{example.host_url}/collab/d/welcome"
    ada.wait_started()
    ada.wait_synced()
    ada.wait_text("from python\n")
    ada.type_at("end", "from the browser")
    background.run(client.wait_text("from python\nfrom the browser"))
    ada.wait_saved()
    loaded = ada_requests(ada)
    assert loaded and all(url.startswith(f"{example.host_url}/collab/") for url in loaded)
    background.run(client.close())


def ada_requests(editor: Editor) -> list[str]:
    """Every URL the page loaded (its resources, its sockets)."""
    return editor.page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => !u.startsWith('data:'))")
