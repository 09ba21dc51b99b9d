"""Bounds on how long and how large a request may be before the application sees it.

uvicorn has no such bound: its keep-alive timer only runs between requests and every byte
received resets it, so a client that sends nothing, or a request head one byte at a time,
holds a connection (and a file descriptor) for ever; and it reads request heads of any size
(httptools sets no limit, and an upgrade's head is parsed again by the WebSocket layer, which
drops one with a line over 8 KiB without an answer). This guard wraps uvicorn's httptools
protocol, which is the one that sees every byte first:

- a request (its head and body, or a WebSocket upgrade's head) must arrive within ``timeout``
  seconds of the connection opening or the previous response ending, else the connection is
  closed (with 408 when something had arrived);
- a request head longer than ``max_head`` bytes, with more than :data:`MAX_HEADERS` headers or
  a line longer than :data:`MAX_LINE` gets 431 and the connection is closed;
- at most ``max_pending`` connections may be waiting for their request at once; past that the
  one that has waited longest is closed, so a flood of silent sockets cannot exhaust the file
  descriptors while a real client (whose request arrives at once) still gets in.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("collab.guard")

MAX_HEADERS = 100
"""The WebSocket layer refuses a handshake with more than 128 headers, without an answer."""
MAX_LINE = 8190
"""Nor may one header line be longer than 8 KiB (8192 bytes with its line end)."""

_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
LINGER = 2.0
"""Seconds a refused connection is kept half-open so that the client reads the answer."""


@dataclass(slots=True)
class GuardStats:
    requests_timed_out: int = 0
    heads_too_large: int = 0
    waiting_connections_closed: int = 0
    """Connections closed because too many others were waiting for their request."""


class RequestGuard:
    """The settings and the shared state of every guarded connection of one server."""

    def __init__(self, *, timeout: float = 10.0, max_head: int = 16 * 1024,
                 max_pending: int = 1000) -> None:
        self.timeout = timeout
        self.max_head = max_head
        self.max_pending = max_pending
        self.stats = GuardStats()
        self.pending: dict[GuardedHttpToolsProtocol, None] = {}
        """Connections waiting for a request, oldest first (dicts keep insertion order)."""

    def protocol(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> GuardedHttpToolsProtocol:
        """The protocol factory to give uvicorn as ``Config(http=...)``."""
        return GuardedHttpToolsProtocol(config, server_state, app_state, _loop, guard=self)

    def waiting(self, connection: GuardedHttpToolsProtocol) -> None:
        self.pending[connection] = None
        while len(self.pending) > self.max_pending:
            oldest = next(iter(self.pending))
            self.stats.waiting_connections_closed += 1
            oldest.give_up(None)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size bound for each request."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, guard: RequestGuard) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = guard
        self._deadline: asyncio.TimerHandle | None = None
        self._head_seen = 0
        self._head_tail = b""
        self._in_head = False
        self._given_up = False

    # --- the request's lifetime ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_request()

    def _expect_request(self) -> None:
        self._head_seen = 0
        self._head_tail = b""
        self._in_head = True
        self._deadline = self.loop.call_later(self.guard.timeout, self._timed_out)
        self.guard.waiting(self)

    def _request_arrived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.guard.pending.pop(self, None)

    def _timed_out(self) -> None:
        self._deadline = None
        self.guard.stats.requests_timed_out += 1
        self.give_up(408 if self._head_seen or not self._in_head else None)

    def give_up(self, status: int | None, reason: str = "") -> None:
        """Answer ``status`` (None: nothing) and close; the request never reaches the app.
        An answer is followed by our end of the stream only: what the client still sends is
        read and dropped for a moment, since closing a socket with unread bytes resets it and
        the client would never see the answer."""
        self._request_arrived()
        if self._given_up:
            return
        self._given_up = True
        transport = self.transport
        if status is None or transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        body = (reason or _PHRASES[status]).encode() + b"\n"
        transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                        % (status, _PHRASES[status].encode(), len(body), body))
        transport.write_eof()
        self.loop.call_later(LINGER, transport.close)

    def eof_received(self) -> bool | None:
        if self._given_up:
            self.transport.close()  # the client read the answer and closed its end
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._request_arrived()
        super().connection_lost(exc)

    # --- bytes in ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._given_up:
            return
        if self._in_head and not self._head_within_bound(data):
            self.guard.stats.heads_too_large += 1
            self.give_up(431, f"request head larger than {self.guard.max_head} bytes")
            return
        super().data_received(data)

    def _head_within_bound(self, data: bytes) -> bool:
        """Follow the head through ``data``; False once it is past the bound. The end of the
        head is looked for here, before the parser, so that an endless head is never fed."""
        window = self._head_tail + data
        ends = [i + len(mark) for mark in _HEAD_ENDS if (i := window.find(mark)) >= 0]
        start = self._head_seen - len(self._head_tail)
        if ends:
            self._in_head = False
            return start + min(ends) <= self.guard.max_head
        self._head_seen += len(data)
        self._head_tail = window[-3:]
        return self._head_seen <= self.guard.max_head

    # --- parser callbacks --------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if len(self.headers) > MAX_HEADERS or any(
                len(name) + len(value) + 2 > MAX_LINE for name, value in self.headers) or (
                len(self.url) > MAX_LINE):
            self.guard.stats.heads_too_large += 1
            self.give_up(431, f"request head with more than {MAX_HEADERS} headers or a line "
                              f"longer than {MAX_LINE} bytes")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._given_up:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._given_up:
            return
        self._request_arrived()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._given_up:
            return
        self._request_arrived()  # the WebSocket layer takes over the connection
        super().handle_websocket_upgrade()
        # Done with: its parser holds bound methods of it, a cycle that only the cyclic
        # collector would free (about 20 objects per connection, which a storm of connections
        # made it traverse twice before it found them garbage). uvicorn drops the parser the
        # same way when a connection is lost; nothing calls this protocol after the upgrade.
        self.parser = None  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        if not self._given_up:
            self._request_arrived()
            self._given_up = True
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._given_up:
            self._expect_request()


_PHRASES = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
