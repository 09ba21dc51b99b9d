"""A document edited with y-py (the older Python Yjs binding) syncs through the server with a
JavaScript Yjs client and a pycrdt client: users of older Python stacks can connect."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable

import pytest
import websockets

from collab import protocol
from tests.conftest import require_service
from tests.jsclient import js_clients, need_node
from tests.pyclient import PyClient
from tests.servers import ServerProcess

if sys.version_info >= (3, 13):
    pytest.skip("y-py has no build for Python 3.13 and later", allow_module_level=True)
try:
    import y_py as Y
except ImportError:
    require_service("y-py", "the test-only dependency y-py is not installed: pip install -e '.[test]'")

pytestmark = [pytest.mark.node, pytest.mark.timeout(60)]

FIELD = "text"


class YpyClient:
    """The y-websocket sync protocol over the ``websockets`` client, with a y-py document."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.doc = Y.YDoc()
        self.ytext = self.doc.get_text(FIELD)
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self._ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    def text(self) -> str:
        return str(self.ytext)

    def edit(self, index: int, insert: str = "", delete: int = 0) -> bytes:
        """Edit the y-py document; returns the update it made (a diff against the state before)."""
        before = Y.encode_state_vector(self.doc)
        with self.doc.begin_transaction() as txn:
            if delete:
                self.ytext.delete_range(txn, index, delete)
            if insert:
                self.ytext.insert(txn, index, insert)
        return bytes(Y.encode_state_as_update(self.doc, before))

    async def connect(self, timeout: float = 10.0) -> None:
        self._ws = await websockets.connect(self.url, open_timeout=timeout)
        self._reader = asyncio.create_task(self._read(self._ws))
        await self._ws.send(protocol.encode_sync_step1(bytes(Y.encode_state_vector(self.doc))))
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def _read(self, ws: websockets.ClientConnection) -> None:
        async for frame in ws:
            assert isinstance(frame, bytes)
            message = protocol.decode_message(frame)
            if isinstance(message, protocol.SyncStep1):
                diff = bytes(Y.encode_state_as_update(self.doc, message.state_vector))
                await ws.send(protocol.encode_sync_step2(diff))
            elif isinstance(message, (protocol.SyncStep2, protocol.SyncUpdate)):
                Y.apply_update(self.doc, message.update)
                if isinstance(message, protocol.SyncStep2):
                    self.synced.set()
                self.changed.set()

    async def send_edit(self, index: int, insert: str = "", delete: int = 0) -> None:
        assert self._ws is not None
        await self._ws.send(protocol.encode_sync_update(self.edit(index, insert, delete)))

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        async def poll() -> str:
            while not predicate(self.text()):
                self.changed.clear()
                await self.changed.wait()
            return self.text()

        try:
            return await asyncio.wait_for(poll(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"y-py text is {self.text()!r}") from None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


async def test_ypy_document_syncs_with_yjs_and_pycrdt(server: ServerProcess) -> None:
    need_node()
    room = "from-y-py"
    ypy = YpyClient(f"{server.ws_url}/{room}")
    # A document that already existed in a y-py program before it ever met the server.
    ypy.edit(0, "written offline in y-py;")
    pyclient: PyClient | None = None
    async with js_clients() as js:
        try:
            await ypy.connect()
            await ypy.send_edit(len(ypy.text()), " live from y-py;")

            yjs = await js.start(server.ws_url, room)
            await yjs.wait_text(equals="written offline in y-py; live from y-py;")
            await yjs.append(" from yjs;")
            await ypy.wait_for(lambda t: t.endswith(" from yjs;"))

            pyclient = await PyClient(server.ws_url, room).start()
            assert pyclient.text() == "written offline in y-py; live from y-py; from yjs;"
            await pyclient.insert(" from pycrdt;")
            await ypy.wait_for(lambda t: t.endswith(" from pycrdt;"))

            # y-py deletes what Yjs wrote; both others see the deletion.
            start = ypy.text().index(" from yjs;")
            await ypy.send_edit(start, delete=len(" from yjs;"))
            expected = "written offline in y-py; live from y-py; from pycrdt;"
            assert await yjs.wait_text(equals=expected) == expected
            await pyclient.wait_text(expected)
            assert ypy.text() == expected
        finally:
            await ypy.close()
            if pyclient is not None:
                await pyclient.close()


async def test_ypy_reads_what_yjs_stored(server_factory: Callable[..., ServerProcess]) -> None:
    need_node()
    server = server_factory()
    async with js_clients() as js:
        yjs = await js.start(server.ws_url, "to-y-py")
        await yjs.wait_synced()
        await yjs.append("Yjs wrote ✓ this")
        await yjs.call("delete", index=0, length=4)
        await yjs.wait_saved()
        await yjs.exit()
    assert await asyncio.to_thread(server.terminate) == 0
    server = await asyncio.to_thread(server_factory, port=server.port)
    ypy = YpyClient(f"{server.ws_url}/to-y-py")
    try:
        await ypy.connect()
        assert ypy.text() == "wrote ✓ this"
    finally:
        await ypy.close()
