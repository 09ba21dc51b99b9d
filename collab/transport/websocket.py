"""The y-websocket transport: one WebSocket, one peer, one room.

A thin shell around :class:`collab.room.Room`: it validates the room name before accepting,
decodes frames with :mod:`collab.protocol`, and gives each peer a bounded send queue drained by
its own writer task, so a slow client is disconnected instead of buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from collab import crdt, protocol
from collab.room import Room
from collab.rooms import Rooms

log = logging.getLogger("collab.ws")

# Close codes (RFC 6455 and the IANA registry).
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013

MAX_ROOM_NAME_BYTES = 255
KEEPALIVE_FRAME = protocol.encode_awareness(protocol.encode_awareness_payload([]))
"""An awareness update with no entries: a no-op for every client, but a message."""


class InvalidRoomName(ValueError):
    pass


def room_name_from_path(raw_path: bytes, prefix: str = "/ws/") -> str:
    """The room name exactly as the client sent it (still percent-encoded), validated."""
    path = raw_path.decode("latin-1")
    if not path.startswith(prefix):
        raise InvalidRoomName("the URL must be /ws/<room name>")
    name = path[len(prefix):]
    if not name:
        raise InvalidRoomName("the room name is empty")
    if len(name.encode("utf-8")) > MAX_ROOM_NAME_BYTES:
        raise InvalidRoomName(f"the room name is longer than {MAX_ROOM_NAME_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in unquote(name, errors="replace")):
        raise InvalidRoomName("the room name contains control characters")
    return name


def display_name(name: str) -> str:
    """A room name decoded for people to read (logs, the editor)."""
    return unquote(name, errors="replace")


@dataclass(slots=True)
class Limits:
    max_send_buffer: int = 64 * 1024 * 1024
    """Bytes queued for one client beyond which it is disconnected (it resyncs on reconnect)."""
    keepalive: float = 15.0
    """Send a no-op message to a client that has been sent nothing for this many seconds."""


class WebSocketPeer:
    """A connected client: a bounded outgoing queue and the state the room keeps on it."""

    __slots__ = ("acks", "awareness_ids", "close_request", "limits", "queue", "queued_bytes",
                 "synced", "wakeup", "websocket", "writer")

    def __init__(self, websocket: WebSocket, limits: Limits) -> None:
        self.websocket = websocket
        self.limits = limits
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.close_request: tuple[int, str] | None = None
        self.synced = False
        self.awareness_ids: set[int] = set()
        self.acks: deque[tuple[asyncio.Future[object], bytes]] = deque()
        self.writer: asyncio.Task[None] | None = None

    def send(self, frame: bytes) -> None:
        if self.close_request is not None:
            return
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        if self.queued_bytes > self.limits.max_send_buffer and len(self.queue) > 1:
            # A single frame of any size may wait (a big document's step 2); a backlog may not.
            self.queue.clear()
            self.close(CLOSE_TRY_AGAIN_LATER, "client too slow: send buffer full, reconnect")
            if self.writer is not None:
                self.writer.cancel()  # it may be stuck in a send the client never reads
        self.wakeup.set()

    def close(self, code: int, reason: str) -> None:
        if self.close_request is None:
            self.close_request = (code, reason[:120])
        self.wakeup.set()

    async def write_loop(self) -> None:
        """Drain the queue; send keepalives when idle; close when asked."""
        ws = self.websocket
        while True:
            try:
                await asyncio.wait_for(self.wakeup.wait(), self.limits.keepalive)
            except asyncio.TimeoutError:
                self.queue.append(KEEPALIVE_FRAME)
            self.wakeup.clear()
            while self.queue:
                frame = self.queue.popleft()
                self.queued_bytes -= len(frame)
                await ws.send_bytes(frame)
            if self.close_request is not None:
                code, reason = self.close_request
                if ws.application_state == WebSocketState.CONNECTED:
                    await ws.close(code, reason)
                return


class WebSocketEndpoint:
    """The ASGI endpoint for ``/ws/<room>``."""

    def __init__(self, rooms: Rooms, limits: Limits, *, is_accepting: callable) -> None:  # type: ignore[valid-type]
        self.rooms = rooms
        self.limits = limits
        self.is_accepting = is_accepting

    async def handle(self, websocket: WebSocket) -> None:
        try:
            name = room_name_from_path(websocket.scope.get("raw_path") or
                                       websocket.scope["path"].encode("utf-8"))
        except InvalidRoomName as exc:
            await deny(websocket, 400, str(exc))
            return
        if not self.is_accepting():
            await deny(websocket, 503, "shutting down")
            return
        await websocket.accept()
        peer = WebSocketPeer(websocket, self.limits)
        peer.writer = asyncio.create_task(peer.write_loop())
        reader = asyncio.create_task(self._serve(name, websocket, peer))
        await asyncio.wait({reader, peer.writer}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done():  # the writer failed or gave up on a slow client
            reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        peer.close(1000, "")
        await _finish(peer)

    async def _serve(self, name: str, websocket: WebSocket, peer: WebSocketPeer) -> None:
        room: Room | None = None
        try:
            room = await self.rooms.join(name, peer)
            await self._read_loop(websocket, room, peer)
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("room %r: connection failed", display_name(name))
            peer.close(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            if room is not None:
                self.rooms.leave(room, peer)

    async def _read_loop(self, websocket: WebSocket, room: Room, peer: WebSocketPeer) -> None:
        while peer.close_request is None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                peer.close(CLOSE_UNSUPPORTED_DATA, "text frames are not supported; send binary")
                return
            try:
                room.receive(peer, protocol.decode_message(data))
            except protocol.ProtocolError as exc:
                peer.close(CLOSE_PROTOCOL_ERROR, f"malformed message: {exc}")
            except crdt.InvalidUpdate as exc:
                peer.close(CLOSE_INVALID_DATA, f"invalid Yjs update: {exc}")


async def deny(websocket: WebSocket, status: int, reason: str) -> None:
    """Refuse the upgrade with an HTTP error (or a close before accept where unsupported)."""
    log.info("refused a WebSocket for %r: %s", websocket.scope.get("path"), reason)
    try:
        await websocket.send_denial_response(PlainTextResponse(reason + "\n", status_code=status))
    except RuntimeError:
        await websocket.close(1008, reason)


async def _finish(peer: WebSocketPeer) -> None:
    """Let the writer send what is queued and the close frame; force the close if it cannot."""
    writer = peer.writer
    assert writer is not None
    if not writer.done():
        try:
            await asyncio.wait_for(writer, 5.0)
            return
        except (asyncio.TimeoutError, Exception):
            pass
    if peer.websocket.application_state == WebSocketState.CONNECTED and peer.close_request:
        code, reason = peer.close_request
        with contextlib.suppress(Exception):
            await asyncio.wait_for(peer.websocket.close(code, reason), 2.0)
