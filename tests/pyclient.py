"""A Python Yjs client for tests: collab.protocol for framing, collab.crdt for the document,
the ``websockets`` library for the socket. It reconnects and resyncs like the stock client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

import websockets

from collab import crdt, protocol


class PyClient:
    def __init__(self, base_url: str, room: str, *, reconnect: bool = True, acks: bool = True,
                 params: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        query = {**({"acks": "1"} if acks else {}), **(params or {})}
        self.url = f"{base_url}/{room}" + (f"?{urlencode(query)}" if query else "")
        self.headers = dict(headers or {})
        self.reconnect = reconnect
        self.doc = crdt.Document()
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_codes: list[int | None] = []
        self.received: list[protocol.Message] = []
        self.connections = 0
        self._ws: websockets.ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._pending_sends: set[asyncio.Future[None]] = set()

    async def start(self, timeout: float = 10.0) -> PyClient:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.synced.wait(), timeout)
        return self

    async def _run(self) -> None:
        delay = 0.05
        while not self._stopping:
            try:
                async with websockets.connect(self.url, max_size=None,
                                              additional_headers=self.headers) as ws:
                    self._ws = ws
                    self.connections += 1
                    delay = 0.05
                    await ws.send(protocol.encode_sync_step1(self.doc.state_vector()))
                    async for frame in ws:
                        self._handle(ws, frame)  # type: ignore[arg-type]
                    self.close_codes.append(ws.close_code)
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                if isinstance(exc, websockets.InvalidStatus):
                    code = exc.response.status_code  # refused before the upgrade
                self.close_codes.append(code)
            finally:
                self._ws = None
                self.synced.clear()
            if not self.reconnect:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        self.closed.set()

    def _handle(self, ws: websockets.ClientConnection, frame: bytes) -> None:
        message = protocol.decode_message(frame)
        self.received.append(message)
        if isinstance(message, protocol.SyncStep1):
            reply = protocol.encode_sync_step2(self.doc.diff(message.state_vector))
            self._pending_sends.add(task := asyncio.ensure_future(ws.send(reply)))
            task.add_done_callback(self._pending_sends.discard)
        elif isinstance(message, protocol.SyncStep2):
            self.doc.apply(message.update)
            self.synced.set()
        elif isinstance(message, protocol.SyncUpdate):
            self.doc.apply(message.update)
        self.changed.set()  # wait_for re-checks on every message (presence included)

    async def insert(self, text: str, index: int | None = None) -> None:
        """Edit locally; send now if connected (else the next resync carries it)."""
        position = len(self.doc.text()) if index is None else index
        update = self.doc.edit_text(position, text)
        if update is not None and self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(protocol.encode_sync_update(update))

    async def send_raw(self, data: bytes | str) -> None:
        assert self._ws is not None
        await self._ws.send(data)

    def text(self) -> str:
        return self.doc.text()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def poll() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(poll(), timeout)

    async def wait_text(self, text: str, timeout: float = 10.0) -> None:
        try:
            await self.wait_for(lambda: self.text() == text, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"text is {self.text()!r}, expected {text!r}") from None

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_codes[-1] if self.close_codes else None

    def auth_messages(self) -> list[protocol.Auth]:
        return [m for m in self.received if isinstance(m, protocol.Auth)]

    async def drop(self) -> None:
        """End the connection from this side; the client reconnects (and resends) by itself."""
        if self._ws is not None:
            await self._ws.close()

    async def close(self) -> None:
        self._stopping = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
