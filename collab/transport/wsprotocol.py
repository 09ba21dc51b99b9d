"""uvicorn's WebSocket protocol, with a close that reaches a client which stopped reading.

uvicorn sends every frame only once the socket is writable, the close frame included. A client
that stopped reading never makes it writable again, so the close telling it why (1013 for a
slow client: reconnect) waited until the application gave up, and the client saw the connection
drop without a reason (1006). And a connection closed with bytes it will never read was kept
open for ever, holding its buffers (closing a transport waits until it has written everything).

Here the close frame is written at once, behind whatever the socket still holds (a few bytes
more than its bound), so the client reads it after the rest, as soon as it reads at all; and a
client that has not finished the closing handshake :data:`CLOSING_TIMEOUT` seconds later is
dropped. ``collab serve`` installs it as uvicorn's ``ws`` protocol (directly with
``--websocket-layer asgi``, as the base of :mod:`collab.transport.direct` by default).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

CLOSING_TIMEOUT = 30.0
"""Seconds a closed connection has to read what it was sent and answer the close frame."""


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        if message["type"] != "websocket.close" or not self._open():
            await super().send(message)
            return
        if self.transport.is_closing():
            return
        code, reason = message.get("code", 1000), message.get("reason", "") or ""
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            return  # the connection is closing already
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:  # read on, for the client's answer
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSING_TIMEOUT, self._drop)

    def _open(self) -> bool:
        """Past the handshake, not refused with an HTTP answer, and no close sent yet."""
        return (self.handshake_complete and self.initial_response is None
                and not self.close_sent and not self.disconnected)

    def _drop(self) -> None:
        """The client did not read its close in time: free the socket and what it holds."""
        self.close_timer = None
        self.transport.abort()
