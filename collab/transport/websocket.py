"""The y-websocket transport: one WebSocket, one peer, one room member.

A thin shell around :class:`collab.room.Room`: it asks :mod:`collab.admission` before accepting
(a refusal is an HTTP answer to the upgrade: nothing of the document flows), decodes frames
with :mod:`collab.protocol`, hands outgoing frames to the socket at once while it is writable,
and bounds what may wait behind a socket that is not, so a slow client is disconnected instead
of buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from starlette.types import Receive, Scope, Send
from websockets.protocol import OPEN

from collab import codes, crdt, logs, protocol
from collab.admission import Access, AccessRequest, Admission, Held, Holder, Refused
from collab.codes import close_reason
from collab.limits import TokenBucket
from collab.room import Member
from collab.rooms import DELETED_REASON, DocumentDeleted, Rooms
from collab.transport.direct import DirectWebSocketProtocol, FrameCache
from collab.transport.stats import TransportStats, refusal_reason

log = logging.getLogger("collab.ws")

PATH_PREFIX = "/ws/"
CLOSE_FRAME_TIMEOUT = 10.0
"""Seconds a close frame may wait for a socket that is not writable (uvicorn's close timeout)."""
GATHER_MAX = 64 * 1024
"""Bytes gathered for one socket past which they are written at once."""
BROADCAST_CHUNK = 32
"""Sockets gathered for a broadcast past which the first broadcast of a tick writes them (and
each further chunk of its receivers) at once, while the room still hands it out to the rest."""
KEEPALIVE_FRAME = protocol.encode_awareness(protocol.encode_awareness_payload([]))
"""An awareness update with no entries: a no-op for every client, but a message."""


def document_from_path(raw_path: bytes, prefix: str = PATH_PREFIX) -> str:
    """The document name exactly as the client sent it (still percent-encoded); admission
    judges whether it is a valid one."""
    path = raw_path.decode("latin-1")
    if not path.startswith(prefix):
        raise Refused(codes.BAD_REQUEST, f"the URL must be {prefix}<room name>")
    return path[len(prefix):]


def wants_acks(request: AccessRequest) -> bool:
    """Durable acks are for clients that ask (``?acks=1``, as the editor does): a stock client
    would only pay the bandwidth of echoes it ignores."""
    return request.query.get("acks", "0").lower() in ("1", "true", "yes")


def display_name(name: str) -> str:
    """A room name decoded for people to read (logs, the editor)."""
    return unquote(name, errors="replace")


@dataclass(slots=True)
class Limits:
    max_send_buffer: int = 1024 * 1024
    """Bytes queued for one client, beyond a single frame of any size (the whole document, for a
    joiner), past which it is closed with 1013: it reconnects and resyncs, which costs one
    document, so a longer backlog is never worth its memory."""
    keepalive: float = 15.0
    """Send a no-op message to a client that has been sent nothing for this many seconds."""
    max_message_rate: float = 200.0
    """Messages per second a client may send on average (faster: reading it pauses)."""
    message_burst: int = 1000
    """Messages a client may send at once above the rate."""
    flood_patience: float = 10.0
    """Seconds a client may be held to the rate without a break before it is closed (4429)."""
    presence_batch: float = 0.02
    """Seconds a presence update may wait to be written to a socket together with others
    (direct layer; document updates wait only for the end of the loop's tick)."""


_connection_ids = (f"{os.getpid():x}.{n:x}" for n in itertools.count(1))
"""Connection ids for logs: unique within the process, short, and ordered."""


@dataclass(slots=True)
class SocketStats:
    """Counters of the WebSocket transport."""

    accepted: int = 0
    slow_clients_closed: int = 0
    messages_too_large: int = 0
    messages_throttled: int = 0
    floods_closed: int = 0
    refused_messages: int = 0
    """Messages closed with a code (bad message, invalid update, a room limit)."""


class WebSocketPeer:
    """A connected client's socket, as the room sees it: a bounded outgoing queue.

    An idle peer costs no task of its own: a drain task exists only while frames are queued,
    and keepalives come from one sweeper for all peers.
    """

    __slots__ = ("close_request", "detached", "direct", "drain_task", "endpoint", "gone",
                 "last_sent", "out", "out_bytes", "queue", "queued_bytes", "reader_task",
                 "send_event")

    def __init__(self, send_event: Send, endpoint: WebSocketEndpoint,
                 reader_task: asyncio.Task[object],
                 direct: DirectWebSocketProtocol | None = None) -> None:
        self.send_event = send_event
        self.endpoint = endpoint
        self.reader_task: asyncio.Task[object] | None = reader_task
        self.detached: _Inline | None = None
        """The connection's handler once its task has ended (:meth:`_Inline.detach`)."""
        self.direct = direct
        """The connection's protocol when frames may be written to it directly (else the
        ASGI send carries every frame)."""
        self.out: bytes | list[bytes] | None = None
        """Direct frames gathered for one write at the end of the loop's tick (or, for
        presence alone, of the presence batch): one frame, or a list of them."""
        self.out_bytes = 0
        self.queue: deque[bytes] | None = None  # allocated while frames wait: most peers idle
        self.queued_bytes = 0
        self.drain_task: asyncio.Task[None] | None = None
        self.last_sent = math.inf  # no keepalive before the join has sent the first frame
        self.close_request: tuple[int, str] | None = None
        self.gone = False
        """The connection refused a send: the client left, and its reader learns how."""

    def send(self, frame: bytes) -> None:
        """Queue a message. A broadcast calls this once per receiver with the same bytes, so
        the direct path does all of its work here, without further calls: the frame comes
        from the endpoint's cache, and what one tick sends to a socket is gathered for one
        write at its end (:meth:`WebSocketEndpoint._write_gathered`), but for the first large
        broadcast of a tick, whose sockets are written in chunks as they are gathered
        (:meth:`WebSocketEndpoint.write_broadcast`). Presence may wait a little longer (the
        endpoint's presence batch), so that a room full of moving cursors costs each socket a
        write per batch rather than one per move."""
        if self.close_request is not None or self.gone:
            return
        endpoint = self.endpoint
        traffic = endpoint.traffic
        traffic.messages_sent += 1
        traffic.sent_bytes += len(frame)
        if self.direct is None:
            if self.drain_task is None:
                self._send_now(frame)
            else:
                self._queue(frame)
            return
        frames = endpoint.frames
        if frame is frames.message:
            framed = frames.framed
            frames.receivers += 1
        else:
            framed = frames.frame(frame)
        if self.drain_task is not None:
            self._queue(framed)
            return
        out = self.out
        if out is None:
            self.out = framed  # one message: no list (most ticks send a socket one)
            self.out_bytes = len(framed)
            gathering = endpoint._gathering
            gathering.append(self)
            if frame[0] != protocol.MSG_AWARENESS:
                if not endpoint._flush_soon:
                    endpoint.flush_soon()
                elif len(gathering) >= BROADCAST_CHUNK and frames.receivers >= BROADCAST_CHUNK:
                    endpoint.write_broadcast(frame)
            else:
                endpoint.presence_waits()
            return
        if out.__class__ is bytes:
            self.out = [out, framed]  # type: ignore[list-item]
        else:
            out.append(framed)  # type: ignore[union-attr]
        self.out_bytes += len(framed)
        if self.out_bytes >= GATHER_MAX:
            self.flush()
        elif frame[0] != protocol.MSG_AWARENESS and not endpoint._flush_soon:
            endpoint.flush_soon()

    def _queue(self, frame: bytes) -> None:
        """Keep a frame behind a socket that stopped taking them, within the send buffer."""
        assert self.drain_task is not None
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        queue.append(frame)
        self.queued_bytes += len(frame)
        if self.queued_bytes > self.endpoint.limits.max_send_buffer and len(queue) > 1:
            # A single frame of any size may wait (a big document's step 2); a backlog may not.
            queue.clear()
            self.queued_bytes = 0
            self.endpoint.stats.slow_clients_closed += 1
            self.close(codes.TRY_AGAIN.close, "client too slow: send buffer full, reconnect")
            self.drain_task.cancel()  # it may be stuck in a send the client never reads

    def flush(self) -> None:
        """Write what was gathered, or have it wait in a drain task while the socket does not
        take writes (as a blocked ASGI send would)."""
        out = self.out
        if out is None:
            return
        self.out = None
        direct = self.direct
        assert direct is not None
        if self.gone or not direct.open_for_messages():
            self.gone = True  # as the ASGI send would refuse it
            return
        data = out if out.__class__ is bytes else b"".join(out)  # type: ignore[arg-type]
        if direct.writable.is_set():
            direct.write_message(data)
            self.last_sent = time.monotonic()
            return
        self.queue = deque((data,))
        self.queued_bytes = len(data)
        self.drain_task = asyncio.get_running_loop().create_task(self._drain_direct(direct))

    async def _drain_direct(self, direct: DirectWebSocketProtocol) -> None:
        """Write what queued up behind a socket that stopped taking writes, as it takes them."""
        try:
            queue = self.queue
            while queue:
                await direct.writable.wait()
                if not direct.open_for_messages():
                    self.gone = True
                    return
                data = queue[0] if len(queue) == 1 else b"".join(queue)
                queue.clear()
                self.queued_bytes = 0
                direct.write_message(data)
                self.last_sent = time.monotonic()
        finally:
            self.drain_task = None
            self.queue = None
            self.queued_bytes = 0

    def _send_now(self, frame: bytes) -> None:
        """Hand the frame to the connection without a task: the ASGI send of a writable socket
        finishes in its first step, so drive that step here. Only a send that has to wait for
        the socket becomes a task, and frames after it queue behind it."""
        sending = self.send_event({"type": "websocket.send", "bytes": frame})
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            self.last_sent = time.monotonic()
            return
        except Exception:  # the client is gone; its reader sees the disconnect and its code
            self.gone = True
            return
        self.drain_task = asyncio.get_running_loop().create_task(self._drain(sending, waiting_on))

    def close(self, code: int, reason: str) -> None:
        if self.close_request is None:
            self.close_request = (code, close_reason(reason))
            # Its reader may be waiting for the client to speak: wake it (once: a second
            # cancellation would interrupt the close frame).
            if self.detached is not None:
                self.detached.closing()
                return
            reader = self.reader_task
            if reader is not None and reader is not asyncio.current_task() and not reader.cancelling():
                reader.cancel()

    async def _drain(self, sending: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        """Finish the send that had to wait, then send what queued up behind it."""
        try:
            await _complete(sending, waiting_on)
            self.last_sent = time.monotonic()
            queue = self.queue
            while queue:
                frame = queue.popleft()
                self.queued_bytes -= len(frame)
                await self.send_event({"type": "websocket.send", "bytes": frame})
                self.last_sent = time.monotonic()
        finally:
            self.drain_task = None
            self.queue = None
            self.queued_bytes = 0

    async def finish(self) -> None:
        """Send what is queued and the close frame; give up on a client that reads nothing. A
        slow client's close frame waits behind what its socket still holds: it should learn
        why (1013: reconnect) rather than see the connection drop, and waiting costs only
        the socket now that its queue is gone."""
        if self.direct is not None:
            self.flush()
        drain = self.drain_task
        if drain is not None:
            await asyncio.wait({drain}, timeout=5.0)  # never raises
            drain.cancel()  # still stuck: no frame may follow the close
        code, reason = self.close_request or (codes.NORMAL.close, "")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send_event({"type": "websocket.close", "code": code,
                                                    "reason": reason}), CLOSE_FRAME_TIMEOUT)


class _Grant(Holder):
    """A connection as admission's rechecks see it."""

    __slots__ = ("endpoint", "member", "peer")

    def __init__(self, endpoint: WebSocketEndpoint, peer: WebSocketPeer, member: Member) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self.member = member

    def withdrawn(self, refused: Refused) -> None:
        self.endpoint._count_refusal(refusal_reason(refused.status))
        self.peer.close(refused.close_code, refused.reason)

    def changed(self, access: Access) -> None:
        self.member.room.change_access(self.member, access)


class WebSocketEndpoint:
    """The ASGI endpoint for ``/ws/<room>``: raw ASGI, since every frame passes through here."""

    def __init__(self, rooms: Rooms, admission: Admission, limits: Limits) -> None:
        self.rooms = rooms
        self.admission = admission
        self.limits = limits
        self.stats = SocketStats()
        self.traffic = TransportStats()
        """What every transport counts (rendered with transport="websocket")."""
        self.peers: set[WebSocketPeer] = set()
        self.frames = FrameCache()
        """The framing of the last broadcast message, shared by every direct connection."""
        self._gathering: list[WebSocketPeer] = []
        self._early: bytes | None = None
        """The message of the broadcast this tick writes while it gathers (at most one)."""
        self._flush: asyncio.Handle | None = None
        self._flush_soon = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the latest connection: scheduling the end-of-tick write through it
        saves asking asyncio for the running loop once per tick (a getpid() system call on
        Python 3.11)."""
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection, from admission to its close (one coroutine frame for its
        whole life, so an idle connection holds as little as it can)."""
        try:
            name = document_from_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
            request = AccessRequest.from_scope(scope, name, "websocket")
            access = await self.admission.admit(request)
        except Refused as refused:
            self._count_refusal(refusal_reason(refused.status))
            await deny(scope, send, refused)
            return
        document, acks = request.document, wants_acks(request)
        try:
            if (await receive())["type"] != "websocket.connect":
                return
            await send({"type": "websocket.accept"})
            self.stats.accepted += 1
            self.traffic.connections_accepted += 1
            task = asyncio.current_task()
            assert task is not None
            logs.set_connection(display_name(document), next(_connection_ids))
            log.debug("connected (%s)", access.mode)
            protocol_ = _direct_protocol(receive, send)
            direct = protocol_ if protocol_ is not None and protocol_.direct_send else None
            peer = WebSocketPeer(send, self, task, direct)
            # The handshake's headers are not read again; a socket that lives for hours should not
            # keep them (about 1 KiB of every idle connection).
            scope["headers"] = ()
            if protocol_ is not None:
                protocol_.forget_handshake()
            del scope  # this copy is the frame's alone: it would live as long as the socket
            self.peers.add(peer)
            self._start_sweeper()
            member: Member | None = None
            held: Held | None = None
            disconnect_code: int | None = None
            detached = False
            try:
                member = await self.rooms.join(document, peer, access, wants_acks=acks)
                held = self.admission.hold(request, access, _Grant(self, peer, member))
                limits, loop = self.limits, asyncio.get_running_loop()
                self._loop = loop
                bucket = TokenBucket(limits.max_message_rate, limits.message_burst,
                                     limits.flood_patience, loop.time())
                inline = None if protocol_ is None else _Inline(self, member, peer, bucket, protocol_)
                if inline is not None and peer.close_request is None:
                    # The connection goes on without this task (nor the frames of uvicorn's
                    # and the app's coroutines, about 2 KiB): its handler takes its events.
                    inline.detach(access, held)
                    detached = True
                    return
                # The read loop is inline: one coroutine frame less on every idle connection. With
                # the direct protocol it only sees what the inline handler left to it (a client
                # over its rate, a text frame) and the disconnect.
                while peer.close_request is None:
                    if inline is not None:
                        inline.resume()
                    message = await receive()
                    if message["type"] != "websocket.receive":
                        disconnect_code = message.get("code", 1005)  # websocket.disconnect
                        if disconnect_code == codes.MESSAGE_TOO_LARGE.close:
                            self.stats.messages_too_large += 1  # closed by the server's WebSocket layer
                        break
                    wait = inline.taken_wait() if inline is not None else None
                    if wait is None:
                        wait = bucket.take(loop.time())
                    if wait:
                        if bucket.flooding(loop.time()):
                            self._flooded(peer)
                            break
                        self.stats.messages_throttled += 1
                        await asyncio.sleep(wait)  # not reading meanwhile: the client is slowed down
                    self._handle_frame(member, peer, message.get("bytes"), message.get("text"))
            except DocumentDeleted:
                self._refuse(peer, "deleted", codes.DOCUMENT_DELETED, DELETED_REASON)
            except crdt.DamagedDocument as damage:  # counted and logged by the rooms
                self._count_refusal("damaged")
                peer.close(codes.DOCUMENT_DAMAGED.close,
                           codes.close_reason(f"document damaged in the store: {damage.reason}"))
            except asyncio.CancelledError:
                if peer.close_request is None:
                    raise
                task.uncancel()  # cancelled by send() to drop a slow client: close it below
            except Exception:
                log.exception("room %r: connection failed", display_name(document))
                peer.close(codes.INTERNAL_ERROR.close, "internal error")
            finally:
                if not detached:
                    self.admission.let_go(held)
                    if protocol_ is not None:
                        protocol_.on_message = None
                    self.peers.discard(peer)
                    if member is not None:
                        self.rooms.leave(member)
            await peer.finish()
            self._count_close(peer, disconnect_code)
        finally:
            if not detached:
                access.release()

    async def _end_detached(self, connection: _Inline, disconnect_code: int | None) -> None:
        """What the read loop does after it, for a detached connection: leave the room, send
        what is queued and the close frame, count the close, give the slot back."""
        peer = connection.peer
        try:
            if disconnect_code == codes.MESSAGE_TOO_LARGE.close:
                self.stats.messages_too_large += 1  # closed by the server's WebSocket layer
            self.admission.let_go(connection.held)
            self.peers.discard(peer)
            self.rooms.leave(connection.member)
            await peer.finish()
            self._count_close(peer, disconnect_code)
        finally:
            if connection.access is not None:
                connection.access.release()

    def _flooded(self, peer: WebSocketPeer) -> None:
        self.stats.floods_closed += 1
        peer.close(codes.RATE_LIMITED.close, "too many messages: at most "
                   f"{self.limits.max_message_rate:g} per second")

    def _handle_frame(self, member: Member, peer: WebSocketPeer, data: bytes | None,
                      text: str | None) -> None:
        traffic = self.traffic
        traffic.messages_received += 1
        if data is None:
            traffic.received_bytes += len(text or "")
            self._refuse(peer, "text_frame", codes.TEXT_FRAME,
                         "text frames are not supported; send binary")
            return
        traffic.received_bytes += len(data)
        try:
            member.room.receive(member, protocol.decode_message(data))
        except protocol.ProtocolError as exc:
            self._refuse(peer, "bad_message", codes.BAD_MESSAGE, f"malformed message: {exc}")
        except crdt.InvalidUpdate as exc:
            self._refuse(peer, "invalid_update", codes.INVALID_UPDATE, f"invalid Yjs update: {exc}")
        except Refused as refused:
            self._refuse(peer, refusal_reason(refused.status), None, refused.reason, refused.close_code)

    def _refuse(self, peer: WebSocketPeer, reason: str, outcome: codes.Outcome | None, text: str,
                code: int | None = None) -> None:
        """Close a client for bad input, counted and logged once (the line carries its
        document and connection)."""
        code = code if outcome is None else outcome.close
        assert code is not None
        self.stats.refused_messages += 1
        self._count_refusal(reason)
        log.warning("closed a client with %d: %s", code, text)  # its input, not a server error
        peer.close(code, text)

    def _count_refusal(self, reason: str) -> None:
        self.traffic.refused[reason] = self.traffic.refused.get(reason, 0) + 1

    def _count_close(self, peer: WebSocketPeer, disconnect_code: int | None) -> None:
        if disconnect_code is None and peer.close_request is not None:
            closed = (peer.close_request[0], "server")
        elif disconnect_code == codes.MESSAGE_TOO_LARGE.close:  # uvicorn's WebSocket layer refused it
            closed = (disconnect_code, "server")
            self._count_refusal("too_large")
            log.warning("closed a client with %d: a message larger than the largest accepted",
                        disconnect_code)
        else:
            closed = (disconnect_code or 1006, "client")
        self.traffic.closes[closed] = self.traffic.closes.get(closed, 0) + 1
        log.debug("closed with %d by the %s", *closed)

    def presence_waits(self) -> None:
        """A peer has only presence to write: at the end of the presence batch (or of this
        tick, without a batch)."""
        if self.limits.presence_batch <= 0:
            self.flush_soon()
        elif self._flush is None:
            self._flush = self._running_loop().call_later(self.limits.presence_batch,
                                                          self._write_gathered)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    def flush_soon(self) -> None:
        if not self._flush_soon:
            if self._flush is not None:
                self._flush.cancel()
            self._flush = self._running_loop().call_soon(self._write_gathered)
            self._flush_soon = True

    def write_broadcast(self, message: bytes) -> None:
        """Write what was gathered so far, while a large broadcast is still being handed out:
        its first receivers need not wait for the room to reach its last (a thousand of them
        take the room about a millisecond). Only the first such broadcast of a tick: a socket
        then takes at most one write more per tick, and what follows in the tick is gathered
        for the end of the tick as before."""
        if self._early is None:
            self._early = message
        elif self._early is not message:
            return
        self._write_out()

    def _write_gathered(self) -> None:
        """At the end of a tick (or of the presence batch): write what every peer gathered."""
        self._flush, self._flush_soon, self._early = None, False, None
        self._write_out()

    def _write_out(self) -> None:
        """Write what every peer gathered. A broadcast's receivers come here together, so
        the common case (an open, writable socket) is written here, without a call per
        peer but the write; :meth:`WebSocketPeer.flush` takes every other case."""
        gathering, self._gathering = self._gathering, []
        now = time.monotonic()
        for peer in gathering:
            out = peer.out
            direct = peer.direct
            if (out is None or direct is None or peer.gone or direct.close_sent
                    or direct.disconnected or not direct.writable.value or direct.conn.state is not OPEN):
                peer.flush()
                continue
            peer.out = None
            direct.transport.write(out if out.__class__ is bytes else b"".join(out))  # type: ignore[arg-type]
            peer.last_sent = now

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_keepalives())

    async def _sweep_keepalives(self) -> None:
        """One task for all sockets: a peer sent nothing for ``keepalive`` seconds gets a no-op
        message, since browsers cannot see pings and the stock client drops silent sockets."""
        interval = self.limits.keepalive
        while self.peers:
            await asyncio.sleep(interval / 4)
            due = time.monotonic() - interval
            for peer in list(self.peers):
                if peer.last_sent <= due and peer.drain_task is None:
                    peer.send(KEEPALIVE_FRAME)

    def close_all(self, code: int, reason: str) -> None:
        """Ask every connection to close (the instance is stopping)."""
        for peer in list(self.peers):
            peer.close(code, reason)


def _direct_protocol(receive: Receive, send: Send) -> DirectWebSocketProtocol | None:
    """The connection's protocol, when the endpoint holds its own receive and send: nothing
    between them and the endpoint that a short cut would bypass."""
    owner = getattr(send, "__self__", None)
    if isinstance(owner, DirectWebSocketProtocol) and getattr(receive, "__self__", None) is owner:
        return owner
    return None


class _Inline:
    """A connection's messages handled where the protocol parsed them (the direct protocol's
    ``on_message``), under the same rate limit and the same refusals as the read loop. A
    message that has to wait for the rate goes to the read loop through the ASGI queue, and
    so do the ones after it until the queue is empty again (their order is kept)."""

    __slots__ = ("access", "bucket", "context", "endpoint", "held", "held_wait", "loop", "member",
                 "peer", "pending", "protocol", "state", "timer")

    def __init__(self, endpoint: WebSocketEndpoint, member: Member, peer: WebSocketPeer,
                 bucket: TokenBucket, protocol_: DirectWebSocketProtocol) -> None:
        self.endpoint, self.member, self.peer, self.bucket = endpoint, member, peer, bucket
        self.protocol = protocol_
        self.loop = asyncio.get_running_loop()
        self.context = contextvars.copy_context()
        """The connection's task context: its log lines name the document and connection."""
        self.held_wait: float | None = None
        self.access: Access | None = None
        self.held: Held | None = None
        self.pending: deque[dict[str, Any]] | None = None
        """Events waiting for the rate (detached; allocated only while one waits)."""
        self.timer: asyncio.Handle | None = None
        self.state = "attached"
        """``attached`` (the read loop runs), ``detached`` or ``ending``."""

    # --- detached: the connection without a task ---------------------------------------------

    def detach(self, access: Access, held: Held | None) -> None:
        """Take the connection's events from the protocol from now on, as its queue, so that
        the endpoint's task can end: an idle connection then holds no task and no coroutine.
        Events queued meanwhile (during the join) are handled first, in order."""
        self.access, self.held, self.state = access, held, "detached"
        self.peer.detached = self
        self.peer.reader_task = None
        protocol_ = self.protocol
        waiting = protocol_.queue
        protocol_.queue = self  # type: ignore[assignment]
        protocol_.detached = True
        while not waiting.empty():
            self.put_nowait(waiting.items.popleft())  # type: ignore[union-attr]
        if self.state == "detached" and not self.pending:
            self._resume_reading()

    def empty(self) -> bool:
        """As the protocol's queue: whether nothing waits."""
        return not self.pending

    def put_nowait(self, event: dict[str, Any]) -> None:
        """An event the protocol would have queued for the ASGI receive: a message the inline
        handler left (over the rate), a text message, or the disconnect."""
        if self.state != "detached":
            return  # ending: as the read loop, which no longer reads
        if self.pending is None:
            if event["type"] == "websocket.disconnect":
                self._end(event.get("code", 1005))
                return
            self.pending = deque()
        self.pending.append(event)
        if self.timer is None:  # handled from the loop, as the read loop's task would be
            self.timer = self.loop.call_soon(self._next)

    def _next(self) -> None:
        """Handle what waits, in order, each under the rate (the read loop's steps, with a timer
        for its sleep); then handle messages inline again."""
        self.timer = None
        pending, bucket, endpoint, peer = self.pending, self.bucket, self.endpoint, self.peer
        while pending and self.state == "detached":
            event = pending[0]
            if event["type"] == "websocket.disconnect":
                self._end(event.get("code", 1005))
                return
            now = self.loop.time()
            wait, self.held_wait = self.held_wait, None
            if wait is None:
                wait = bucket.take(now)
            if wait:
                if bucket.flooding(now):
                    self.context.run(endpoint._flooded, peer)
                    return
                endpoint.stats.messages_throttled += 1
                self.held_wait = 0.0  # its token is taken: it goes once the wait is over
                self.timer = self.loop.call_later(wait, self._next)
                return
            pending.popleft()
            try:
                self.context.run(endpoint._handle_frame, self.member, peer, event.get("bytes"),
                                 event.get("text"))
            except Exception:
                self.context.run(log.exception, "room %r: connection failed",
                                 display_name(self.member.room.name))
                peer.close(codes.INTERNAL_ERROR.close, "internal error")
        if self.state == "detached":
            self.pending = None
            self._resume_reading()

    def _resume_reading(self) -> None:
        protocol_ = self.protocol
        protocol_.on_message = self.handle
        if protocol_.read_paused:
            protocol_.read_paused = False
            protocol_.transport.resume_reading()

    def closing(self) -> None:
        """The server closes the connection (its peer was closed)."""
        if self.state == "detached":
            self._end(None)

    def _end(self, disconnect_code: int | None) -> None:
        self.state = "ending"
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending = None
        protocol_ = self.protocol
        protocol_.on_message = None
        task = self.loop.create_task(self.endpoint._end_detached(self, disconnect_code),
                                     context=self.context)
        tasks = protocol_.tasks  # uvicorn waits for these at shutdown, as for its own
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def resume(self) -> None:
        """Handle messages inline again, once nothing waits for the read loop."""
        if self.protocol.queue.empty():
            self.protocol.on_message = self.handle

    def taken_wait(self) -> float | None:
        """The wait of a message the inline handler took a token for and left to the loop."""
        wait, self.held_wait = self.held_wait, None
        return wait

    def handle(self, data: bytes) -> bool:
        peer = self.peer
        if peer.close_request is not None:
            return True  # closing: the read loop would not read it either
        now = self.loop.time()
        wait = self.bucket.take(now)
        if wait:
            if self.bucket.flooding(now):
                self.context.run(self.endpoint._flooded, peer)
                return True
            self.held_wait = wait
            self.protocol.on_message = None  # it and what follows go through the queue
            return False
        try:
            self.context.run(self.endpoint._handle_frame, self.member, peer, data, None)
        except Exception:
            self.context.run(log.exception, "room %r: connection failed",
                             display_name(self.member.room.name))
            peer.close(codes.INTERNAL_ERROR.close, "internal error")
        return True


async def _complete(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Run to the end a coroutine whose first step was driven by hand and yielded
    ``waiting_on`` (what it awaits: a future, or None for a bare yield)."""
    while True:
        if waiting_on is None:
            await asyncio.sleep(0)
        else:
            waiting_on._asyncio_future_blocking = False  # taken over, as a Task would
            with contextlib.suppress(BaseException):  # the coroutine re-raises it on resuming
                await waiting_on
        try:
            waiting_on = coroutine.send(None)
        except StopIteration:
            return


async def deny(scope: Scope, send: Send, refused: Refused) -> None:
    """Refuse the upgrade with an HTTP error and the reason (or a close where unsupported)."""
    log.info("refused a WebSocket for %r: %s", scope.get("path"), refused.reason)
    if "websocket.http.response" in scope.get("extensions", {}):
        body = (refused.reason + "\n").encode("utf-8")
        await send({"type": "websocket.http.response.start", "status": refused.status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": refused.close_code,
                    "reason": close_reason(refused.reason)})
