"""collab's WebSocket protocol under uvicorn: the ASGI path without its per-message layers.

uvicorn's ``websockets-sansio`` protocol parses every frame and makes the handshake with the
``websockets`` library's sans-I/O protocol, and hands each message to the application through
the ASGI contract: a receive event on a queue and a task wake-up per incoming message, and per
outgoing one an ASGI send coroutine, uvicorn's send and a serialization by ``websockets``. A
broadcast pays the outgoing part once per receiver, for the same bytes. This subclass keeps
the parsing, the handshake, the close handshake, pings, flow control and every ASGI event, and
adds two short cuts that only the connection's own endpoint takes, when it holds the
protocol's own ``receive`` and ``send`` (no middleware in between that would be bypassed):

- :attr:`on_message`: a callback that handles a binary message where its frame was parsed,
  in ``data_received``, instead of a queue and a task wake-up; it may decline a message (a
  client over its rate), which then takes the ASGI queue as before and keeps its order;
- :meth:`write_message`: a server frame (never masked) is a header and the payload, so a
  broadcast frames its message once (:class:`FrameCache`) and writes the same bytes to every
  socket, with nothing per receiver but the write.

Connections that negotiated an extension (per-message compression) frame per connection, so
they send through the ASGI path. ``--websocket-layer asgi`` sends every message through it
(with :class:`~collab.transport.wsprotocol.WebSocketProtocol`, whose close reaches a slow client).
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.protocol import OPEN

from collab.transport.wsprotocol import WebSocketProtocol

SCOPE_KEPT = ("type", "path", "client", "server")
"""What an accepted connection's scope keeps once the endpoint has read it."""
FRAME_CACHE_MAX = 64 * 1024
"""Messages up to this size keep their last framing for the next receiver (a broadcast); a
larger one (a document's step 2 to one joiner) is framed each time and not kept."""


def frame_binary(message: bytes) -> bytes:
    """A final, unmasked binary frame carrying ``message`` (RFC 6455 section 5.2)."""
    length = len(message)
    if length < 126:
        return bytes((0x82, length)) + message
    if length < 65536:
        return bytes((0x82, 126)) + length.to_bytes(2, "big") + message
    return bytes((0x82, 127)) + length.to_bytes(8, "big") + message


class FrameCache:
    """The framing of the last message sent: a broadcast hands the same bytes object to every
    receiver, so it is framed once. Kept by identity, with a reference, so it cannot be a
    different message at a reused address."""

    __slots__ = ("framed", "message", "receivers")

    def __init__(self) -> None:
        self.message: bytes | None = None
        self.framed = b""
        self.receivers = 0
        """How many times the kept framing was handed out: a broadcast's receivers so far (the
        sender counts those it takes from :attr:`framed` itself)."""

    def frame(self, message: bytes) -> bytes:
        if message is self.message:
            self.receivers += 1
            return self.framed
        framed = frame_binary(message)
        if len(message) <= FRAME_CACHE_MAX:
            self.message, self.framed, self.receivers = message, framed, 1
        return framed


class Mailbox:
    """What uvicorn's protocol needs of its ``asyncio.Queue`` of ASGI events (``put_nowait``,
    ``get``, ``empty``), in a fraction of its memory: a queue keeps four deques and an event
    for the whole life of every connection (about 3 KiB), where this keeps a deque only while
    events wait, which they rarely do once messages are handled inline."""

    __slots__ = ("items", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[Any] | None = None
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self.items is None:
            self.items = deque()
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self, reader: WebSocketsSansIOProtocol | None = None) -> Any:
        """The next event; with ``reader``, resume reading its transport once none is left
        (what uvicorn's ``receive`` does after its queue's ``get``)."""
        while not self.items:
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        item = self.items.popleft()
        if not self.items:
            self.items = None
            if reader is not None and reader.read_paused:
                reader.read_paused = False
                reader.transport.resume_reading()
        return item

    def empty(self) -> bool:
        return not self.items


class Flag:
    """What uvicorn's protocol needs of its ``asyncio.Event`` ``writable`` (``set``, ``clear``,
    ``is_set``, ``wait``), without a deque of waiters per connection: there is at most one
    writer waiting, and usually none."""

    __slots__ = ("loop", "value", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.value = True
        self.waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.value = False

    async def wait(self) -> None:
        if self.value:
            return
        waiter = self.loop.create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if self.waiters is not None and waiter in self.waiters:
                self.waiters.remove(waiter)


_SHARED_BY_VALUE = (str, int, float, bool, type(None), tuple)
"""Types whose equal values may be shared (a server's settings); others only by identity."""


class Shared:
    """An attribute uvicorn sets in every protocol's ``__init__`` to the same value for all the
    connections of one server (its config, loop, logger, timeouts...), kept once on the class.

    CPython (3.11 and later) keeps the instances of a class compact only while all of them
    together use at most 29 attribute names: past that, every instance gets a dictionary of
    its own (about 1.6 KiB against 0.3 KiB, measured). uvicorn's protocol sets 37 names. A
    value that differs from the first one set (a second server in the process) is kept in
    the instance's ``own`` dictionary instead, so sharing can never mix two servers up."""

    __slots__ = ("name", "value")

    _unset = object()

    def __init__(self) -> None:
        self.name = ""
        self.value: Any = Shared._unset

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        own = instance.own
        if own is not None and self.name in own:
            return own[self.name]
        if self.value is Shared._unset:
            raise AttributeError(self.name)
        return self.value

    def __set__(self, instance: Any, value: Any) -> None:
        current = self.value
        if current is Shared._unset:
            self.value = current = value
        if value is current or (type(value) in _SHARED_BY_VALUE and type(value) is type(current)
                                and value == current):
            if instance.own is not None:
                instance.own.pop(self.name, None)
            return
        if instance.own is None:
            instance.own = {}
        instance.own[self.name] = value


class Keepalive:
    """The keepalive pings of every connection of one event loop, from one timer: uvicorn keeps
    a timer per connection (about 0.6 KiB each, for a ping every 20 s). Each connection is
    pinged once ``interval`` seconds have passed since its last pong, and dropped when a ping
    stays unanswered ``timeout`` seconds, as uvicorn does, give or take a sweep step."""

    STEPS = 8
    """Sweeps per interval: how late a ping or a drop may come, as a share of it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, timeout: float | None) -> None:
        self.loop, self.interval, self.timeout = loop, interval, timeout
        self.step = min(interval, timeout or interval) / self.STEPS
        self.protocols: set[DirectWebSocketProtocol] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, protocol: DirectWebSocketProtocol) -> None:
        protocol.ping_due = self.loop.time() + self.interval
        self.protocols.add(protocol)
        if self.timer is None:
            self.timer = self.loop.call_later(self.step, self.sweep)

    def discard(self, protocol: DirectWebSocketProtocol) -> None:
        self.protocols.discard(protocol)

    def sweep(self) -> None:
        self.timer = None
        now, timeout = self.loop.time(), self.timeout
        for protocol in list(self.protocols):
            if protocol.pending_ping_payload is not None:
                if timeout is not None and now - protocol.ping_sent_at >= timeout:
                    self.protocols.discard(protocol)
                    protocol.keepalive_timeout()
            elif now >= protocol.ping_due:
                protocol.send_keepalive_ping()
                if timeout is None:
                    protocol.ping_due = now + self.interval
        if self.protocols:
            self.timer = self.loop.call_later(self.step, self.sweep)


class DirectWebSocketProtocol(WebSocketProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the endpoint's short cuts (module docstring),
    and less memory per connection (:class:`Shared` settings, :class:`Mailbox`, :class:`Flag`,
    the handshake's headers dropped once accepted)."""

    own: dict[str, Any] | None = None
    """Values of :class:`Shared` attributes that differ from the class's."""
    config = Shared()
    app = Shared()
    loop = Shared()
    logger = Shared()
    root_path = Shared()
    asgi_version = Shared()
    app_state = Shared()
    connections = Shared()
    tasks = Shared()
    default_headers = Shared()
    close_timeout = Shared()
    ping_interval = Shared()
    ping_timeout = Shared()

    ping_due = 0.0
    """When the next keepalive ping is due (:class:`Keepalive`)."""
    _keepalives: dict[tuple[asyncio.AbstractEventLoop, float, float | None], Keepalive] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Mailbox(self.loop)  # type: ignore[assignment]
        self.writable = Flag(self.loop)  # type: ignore[assignment]

    def _keepalive(self) -> Keepalive:
        assert self.ping_interval is not None
        key = (self.loop, self.ping_interval, self.ping_timeout)
        keepalive = self._keepalives.get(key)
        if keepalive is None or keepalive.loop.is_closed():
            for old in [k for k, v in self._keepalives.items() if v.loop.is_closed()]:
                del self._keepalives[old]
            keepalive = self._keepalives[key] = Keepalive(*key)
        return keepalive

    def schedule_ping(self) -> None:
        """Join the loop's :class:`Keepalive` instead of a timer of its own."""
        self._keepalive().add(self)

    def send_keepalive_ping(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def handle_pong(self, event: Frame) -> None:
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            return  # unsolicited, or an answer to an older ping
        now = self.loop.time()
        self.last_ping_rtt = now - self.ping_sent_at
        self.pending_ping_payload = None
        self.ping_due = now + max(0.0, self.ping_interval - self.last_ping_rtt)

    def stop_keepalive(self) -> None:
        if self.ping_interval:
            self._keepalive().discard(self)
        self.pending_ping_payload = None

    on_message: Callable[[bytes], bool] | None = None
    """Handles one binary message at once; returns False to have it queued for the ASGI
    receive instead. Set by the endpoint while nothing waits in the queue."""

    detached = False
    """The endpoint took the connection over (its events go to its handler, set as
    :attr:`queue`): the app returning does not close it."""

    async def run_asgi(self) -> None:
        """uvicorn's, except that a detached connection stays open when the app returns."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not self.detached:
            self.transport.close()

    def receive(self) -> Coroutine[Any, Any, Any]:  # type: ignore[override]
        """uvicorn's ``receive``, as the mailbox's own coroutine: one coroutine frame less for
        as long as a connection waits for its client."""
        return self.queue.get(self)

    def send_receive_event_to_app(self) -> None:
        handler = self.on_message
        if handler is None or self.curr_msg_data_type != "bytes" or self.close_sent or not self.queue.empty():
            super().send_receive_event_to_app()
            return
        frames = self.frames
        self.frames = []
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if not handler(data):
            self.frames = [data]
            super().send_receive_event_to_app()

    def forget_handshake(self) -> None:
        """Drop the handshake's request and response headers, which the connection does not
        read again once accepted: a socket may live for hours. (The request is emptied in
        place: the ``websockets`` parser keeps it for the life of the connection.)"""
        if self.handshake_complete:
            self.request.headers.clear()
            self.response.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]
            # uvicorn reads its scope again only before the handshake (to log it); the app's
            # frames keep it for the connection's life, so it keeps only what says what it is.
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            kept = {key: scope[key] for key in SCOPE_KEPT if key in scope}
            scope.clear()  # frees its table, which deleting keys one by one would not
            scope.update(kept)

    @property
    def direct_send(self) -> bool:
        """Whether pre-framed messages may be written to this connection."""
        return not self.conn.extensions

    def open_for_messages(self) -> bool:
        """Open, and the application has not closed it (nor the client)."""
        return not self.close_sent and not self.disconnected and self.conn.state is OPEN

    def write_message(self, framed: bytes) -> None:
        """Write a message framed by :func:`frame_binary`; the caller checked
        :meth:`open_for_messages` and that the transport is writable (``writable`` is set)."""
        self.transport.write(framed)
