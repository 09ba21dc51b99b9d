"""A Python client of the HTTP fallback for tests: collab.protocol for the messages, collab.crdt
for the document, the load tester's poll connection for the requests. It tracks presence like a
y-protocols Awareness (newer clock wins, a removal at the same clock wins)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from collab import crdt, protocol
from collab.loadtest.pollclient import PollConnection
from collab.protocol import AwarenessEntry


class PollClient:
    def __init__(self, base_url: str, room: str, *, acks: bool = True, client_id: int = 0,
                 params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.headers = headers
        query = {**({"acks": "1"} if acks else {}), **(params or {})}
        self.url = f"{base_url}/{room}" + ("?" + urlencode(query) if query else "")
        self.doc = crdt.Document()
        self.client_id = client_id
        self.clock = 0
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.received: list[protocol.Message] = []
        self.acks = 0
        self.presence: dict[int, tuple[int, Any]] = {}
        """client id -> (clock, state or None)."""
        self.close_info: tuple[int, str] | None = None
        self.read_only = False
        self.connection: PollConnection | None = None

    async def start(self, timeout: float = 10.0) -> PollClient:
        self.connection = PollConnection(self.url, state_vector=self.doc.state_vector,
                                         headers=self.headers)
        self.connection.on_message = self._handle
        self.connection.on_close = self._on_close
        self.connection.send(protocol.encode_sync_step1(self.doc.state_vector()))
        await asyncio.wait_for(self.synced.wait(), timeout)
        return self

    def _on_close(self, code: int, reason: str) -> None:
        self.close_info = (code, reason)
        self.closed.set()
        self.changed.set()

    def _handle(self, frame: bytes, _now: float) -> None:
        message = protocol.decode_message(frame)
        self.received.append(message)
        if isinstance(message, protocol.Auth):
            self.read_only = self.read_only or message.reason == "read-only"
        elif isinstance(message, protocol.SyncStep1):
            if not self.read_only:  # told first: it sends none of its changes
                self.send(protocol.encode_sync_step2(self.doc.diff(message.state_vector)))
        elif isinstance(message, protocol.SyncStep2):
            self.doc.apply(message.update)
            self.synced.set()
        elif isinstance(message, protocol.SyncUpdate):
            if self.doc.apply(message.update) is None:
                self.acks += 1  # our own update echoed once stored (or a duplicate)
        elif isinstance(message, protocol.AwarenessUpdate):
            for entry in protocol.decode_awareness_payload(message.payload):
                clock, state = self.presence.get(entry.client_id, (0, None))
                removal = entry.is_removal
                if entry.clock > clock or (entry.clock == clock and removal and state is not None):
                    self.presence[entry.client_id] = (entry.clock, json.loads(entry.state))
        self.changed.set()

    def send(self, frame: bytes) -> None:
        assert self.connection is not None
        self.connection.send(frame)

    async def insert(self, text: str, index: int | None = None) -> None:
        position = len(self.doc.text()) if index is None else index
        update = self.doc.edit_text(position, text)
        if update is not None:
            self.send(protocol.encode_sync_update(update))

    def announce(self, state: Any) -> None:
        """Set this client's presence (a new clock, as y-protocols does)."""
        self.clock += 1
        entry = AwarenessEntry(self.client_id, self.clock, json.dumps(state))
        self.send(protocol.encode_awareness(protocol.encode_awareness_payload([entry])))

    def present(self) -> set[int]:
        """The other clients whose presence this client sees."""
        return {cid for cid, (_clock, state) in self.presence.items()
                if state is not None and cid != self.client_id}

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

    def stop(self) -> None:
        """Stop polling without a goodbye, like a page whose network went away."""
        assert self.connection is not None
        self.connection.abandon()

    async def close(self) -> None:
        """Stop, telling the server (a goodbye beacon with this client's presence removal)."""
        if self.connection is not None:
            if self.clock:
                self.clock += 1
                entry = AwarenessEntry(self.client_id, self.clock, "null")
                self.send(protocol.encode_awareness(protocol.encode_awareness_payload([entry])))
            self.connection.close()
