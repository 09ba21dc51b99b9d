"""The HTTP fallback: the y-websocket messages over plain requests, for clients whose WebSockets
cannot pass (proxies that strip the upgrade, networks that kill long-lived sockets).

Stateless across instances, so it needs no session affinity: every request carries what the
client has (its state vector, and the version token of the last answer), any instance can
answer it, and nothing here outlives a request but the room's own records (its history, and the
lease on the client's presence). A request is a room member for as long as it lasts:

- a *poll* (a body with a sync step 1) is brought up to date by :meth:`Room.resume`; with
  ``wait=1`` it stays (parked) until there is something to send or the poll timeout passes,
  and the answer carries the new version token in the ``Collab-Version`` header;
- a *send* (any other body) hands its messages to the room and, with ``acks=1``, is answered
  with the durable acks once the store holds its updates (503 when it does not in time: the
  client sends again, and a duplicate is acked once stored).

The wire format is in :mod:`collab.transport.pollwire`; refusals use the statuses of
:mod:`collab.codes`, with the reason as a plain-text body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from collab import codes, crdt, gate, protocol
from collab.admission import Access, AccessRequest, Admission, Refused
from collab.limits import TokenBucket
from collab.metrics import counter, gauge, labelled
from collab.room import Member
from collab.rooms import DELETED_REASON, DocumentDeleted, Rooms
from collab.transport import pollwire
from collab.transport.pollwire import BadRequest, PollBody, PollQuery
from collab.transport.websocket import display_name, document_from_path

log = logging.getLogger("collab.poll")

PATH_PREFIX = "/poll/"
_SYNC = protocol.MSG_SYNC


@dataclass(slots=True)
class PollLimits:
    max_body: int = 16 * 1024 * 1024
    """Largest request body, in bytes (the WebSocket's largest message)."""
    timeout: float = 25.0
    """How long a poll is parked when there is nothing to send (below common proxy limits)."""
    ack_timeout: float = 10.0
    """How long a send waits for the store before it answers "try again"."""
    max_message_rate: float = 200.0
    """Messages per second one client may send (on average; the WebSocket's limit), counted
    per client and document on this instance."""
    message_burst: int = 1000
    flood_patience: float = 10.0
    """Seconds a client may be held to the rate without a break before it is refused (429)."""


@dataclass(slots=True)
class PollStats:
    polls: int = counter("HTTP fallback polls answered")
    sends: int = counter("HTTP fallback sends taken")
    parked: int = gauge("HTTP fallback polls waiting now")
    throttled: int = counter("HTTP fallback requests whose answer was delayed to hold their client "
                             "to the message rate")
    refused: dict[int, int] = labelled("status", "HTTP fallback requests answered with an error, by status")


class Answer(Exception):
    """End the request with this HTTP status and reason."""

    def __init__(self, status: int, reason: str, *, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.close = close


class ClientGone(Exception):
    """The client went away before its answer."""


class PollPeer:
    """One request, as the room sees it: frames gather into its answer, and the first one
    wakes a parked poll. A send keeps only its acks: presence reaches the client by its poll."""

    __slots__ = ("closed", "frames", "only_sync", "wake")

    def __init__(self, *, only_sync: bool) -> None:
        self.frames: list[bytes] = []
        self.only_sync = only_sync
        self.closed: tuple[int, str] | None = None
        self.wake: asyncio.Future[object] | None = None

    def send(self, frame: bytes) -> None:
        if self.closed is not None or (self.only_sync and frame[0] != _SYNC):
            return
        self.frames.append(frame)
        self._wake()

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self._wake()

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class PollEndpoint:
    """The ASGI endpoint for ``/poll/<room>``: raw ASGI, like the WebSocket endpoint, since a
    room name may hold anything a URL can carry."""

    def __init__(self, rooms: Rooms, admission: Admission, limits: PollLimits) -> None:
        self.rooms = rooms
        self.admission = admission
        self.limits = limits
        self.stats = PollStats()
        self.parked: set[PollPeer] = set()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, body, headers = await self._handle(scope, receive)
        except Answer as answer:
            self.stats.refused[answer.status] = self.stats.refused.get(answer.status, 0) + 1
            status, body = answer.status, (answer.reason + "\n").encode("utf-8")
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            if answer.close:
                headers.append((b"connection", b"close"))
        except ClientGone:
            return
        await send({"type": "http.response.start", "status": status, "headers": [
            *headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if scope["method"] != "POST":
            raise Answer(405, "use POST")
        try:
            name = document_from_path(scope.get("raw_path") or scope["path"].encode("utf-8"),
                                      PATH_PREFIX)
            request = AccessRequest.from_scope(scope, name, "poll")
            query = pollwire.parse_query(request.query)
        except Refused as refused:
            raise Answer(refused.status, refused.reason) from None
        except BadRequest as exc:
            raise Answer(codes.BAD_REQUEST.http or 400, str(exc)) from None
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body:
            raise Answer(codes.MESSAGE_TOO_LARGE.http or 413, self._too_large(), close=True)
        try:
            access = await self.admission.admit(request)
        except Refused as refused:
            log.info("refused a poll for %r: %s", display_name(name), refused.reason)
            raise Answer(refused.status, refused.reason) from None
        try:
            body = self._parse(await self._read_body(receive), access)
            return await self._serve(name, query, body, access, receive)
        finally:
            access.release()

    def _too_large(self) -> str:
        return f"request body larger than {self.limits.max_body} bytes"

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, refused as soon as it passes the limit (never read whole)."""
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body:
                raise Answer(codes.MESSAGE_TOO_LARGE.http or 413, self._too_large(), close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _parse(data: bytes, access: Access) -> PollBody:
        try:
            body = pollwire.parse_body(data)
        except protocol.ProtocolError as exc:
            raise Answer(codes.BAD_MESSAGE.http or 400, f"malformed message: {exc}") from None
        changes = body.changes
        if changes and not access.may_write:
            raise Answer(codes.READ_ONLY.http or 403, codes.READ_ONLY_REASON)
        for update in changes:
            try:
                gate.check_update(update)  # the room's own gate: a bad one refuses the whole body
            except crdt.InvalidUpdate as exc:
                raise Answer(codes.INVALID_UPDATE.http or 400, f"invalid Yjs update: {exc}") from None
        if body.state_vector is not None:
            try:
                gate.check_state_vector(body.state_vector)
            except crdt.InvalidUpdate as exc:
                raise Answer(codes.BAD_MESSAGE.http or 400, f"malformed message: {exc}") from None
        return body

    async def _serve(self, name: str, query: PollQuery, body: PollBody, access: Access,
                     receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        polling = body.state_vector is not None
        await self._hold_to_rate(name, query.client, len(body.messages) + polling)
        peer = PollPeer(only_sync=not polling)
        try:
            member = await self.rooms.join(name, peer, access, wants_acks=query.acks,
                                           client_key=query.client)
        except DocumentDeleted:
            raise Answer(codes.DOCUMENT_DELETED.http or 410, DELETED_REASON) from None
        except crdt.DamagedDocument as damage:
            raise Answer(codes.DOCUMENT_DAMAGED.http or 500,
                         f"document damaged in the store: {damage.reason}") from None
        room = member.room
        try:
            for message in body.messages:
                room.receive(member, message)
            if query.bye:
                room.goodbye(query.client)
            if polling:
                self.stats.polls += 1
                assert body.state_vector is not None
                room.resume(member, body.state_vector, query.since)
                if not peer.frames and query.wait:
                    await self._park(peer, receive)
            else:
                self.stats.sends += 1
                await self._await_acks(member)
        except protocol.ProtocolError as exc:
            raise Answer(codes.BAD_MESSAGE.http or 400, f"malformed message: {exc}") from None
        except crdt.InvalidUpdate as exc:
            raise Answer(codes.INVALID_UPDATE.http or 400, f"invalid Yjs update: {exc}") from None
        except Refused as refused:  # past a room's limit: refused as a connection would be closed
            raise Answer(refused.status, refused.reason) from None
        finally:
            self.rooms.leave(member)
        if peer.closed is not None:
            code, reason = peer.closed
            raise Answer(codes.http_status(code), reason)
        headers = [(b"content-type", b"application/octet-stream")]
        if polling:
            headers.append((pollwire.VERSION_HEADER.encode(), room.version().encode().encode()))
        return 200, pollwire.encode_body(peer.frames), headers

    async def _hold_to_rate(self, name: str, client: str, messages: int) -> None:
        """The WebSocket's message rate, for a client without a connection: its requests are
        answered later instead of read later; one held there for the patience is refused."""
        limits = self.limits
        now = asyncio.get_running_loop().time()
        bucket = self._buckets.get((name, client))
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full_buckets(now)
            bucket = self._buckets[(name, client)] = TokenBucket(
                limits.max_message_rate, limits.message_burst, limits.flood_patience, now)
        wait = 0.0
        for _ in range(messages):
            wait = bucket.take(now)
        if bucket.flooding(now):
            raise Answer(codes.RATE_LIMITED.http or 429,
                         f"rate limited: more than {limits.max_message_rate:g} messages per second")
        if wait > 0:
            self.stats.throttled += 1
            await asyncio.sleep(wait)

    def _forget_full_buckets(self, now: float) -> None:
        """Drop the buckets that have refilled: their clients are as good as new."""
        refill = self.limits.message_burst / self.limits.max_message_rate
        for key, bucket in list(self._buckets.items()):
            if now - bucket.stamp >= refill:
                del self._buckets[key]

    async def _park(self, peer: PollPeer, receive: Receive) -> None:
        """Wait for a frame, a close, the timeout, or the client going away."""
        loop = asyncio.get_running_loop()
        wake = peer.wake = loop.create_future()
        timer = loop.call_later(self.limits.timeout, _resolve, wake)
        listener = loop.create_task(_watch_disconnect(receive, wake))
        self.parked.add(peer)
        self.stats.parked += 1
        try:
            await wake
        finally:
            self.parked.discard(peer)
            self.stats.parked -= 1
            timer.cancel()
            listener.cancel()
        if wake.result() is _GONE:
            raise ClientGone
        await asyncio.sleep(0)  # frames broadcast in the same turn go in the same answer

    async def _await_acks(self, member: Member) -> None:
        waiting = member.room.acks_waiting(member)
        if not waiting:
            return
        _done, pending = await asyncio.wait(waiting, timeout=self.limits.ack_timeout)
        await asyncio.sleep(0)  # the room's commit callbacks release the acks first
        if pending or any(f.cancelled() or f.exception() is not None for f in waiting):
            raise Answer(codes.TRY_AGAIN.http or 503, "not stored yet; send again")

    def close_all(self, code: int, reason: str) -> None:
        """Answer every parked poll at once (the instance is stopping)."""
        for peer in list(self.parked):
            peer.close(code, reason)


MAX_BUCKETS = 10_000
"""Rate buckets kept before the refilled ones are forgotten."""

_GONE = object()


def _resolve(future: asyncio.Future[object], value: object = None) -> None:
    if not future.done():
        future.set_result(value)


async def _watch_disconnect(receive: Receive, wake: asyncio.Future[object]) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
        _resolve(wake, _GONE)
