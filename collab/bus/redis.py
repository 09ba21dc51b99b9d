"""Fan-out between instances over Redis pub/sub.

One channel per room (``collab:room:<name>``); an instance subscribes to the channels of the
rooms it holds, so only those instances receive a room's traffic. Pub/sub rather than streams:
the store, not the bus, is the record, so the bus only has to be fast and to say when it may
have lost something; pub/sub delivers in one hop, keeps nothing in Redis memory, and follows
subscriptions exactly. What pub/sub lacks (delivery across a disconnection) is covered by
telling the room, which then catches up from the store.

Two connections: a subscriber (one reader task; pings when idle so a silently dead link is
noticed) and a publisher (one sender task draining a bounded queue in pipelined batches).
The bus is unhealthy while either is disconnected, and also while Redis leaves a ping or a
publish unanswered for ``answer_timeout`` seconds (a hung Redis accepts connections and bytes
but answers nothing): the rooms then converge through the store until it is healthy again.
``publish`` only appends to that queue. Every frame carries the publisher's instance id and a
per-(publisher, room) sequence number: receivers drop their own frames and call ``on_gap``
when a number is skipped. When Redis is unreachable the sender drops what is queued, counts
it, and on recovery sends a payload-less marker for each room it dropped messages of, so the
other instances see the skip and catch up even if that room goes quiet.

``on_gap`` fires ``settle_delay`` seconds after the event and once more ``late_delay`` later
(coalesced per room): a dropped update is published before it is committed, so an immediate
reload could miss it, and a loaded database can delay that commit past the first reload.

Handoff of uncommitted updates: an update is broadcast before its publisher commits it. If the
publisher dies inside its commit window, the other instances already hold the update, so a
client that reconnects to them has nothing to resend, and the update would exist only in
memory. So when ``publish`` is given the store's commit future, the frame is marked as awaiting
commit and the publisher later sends a small ``committed up to seq N`` frame (one per room for
the commits of a tenth of a second, :data:`COMMIT_NOTICE_DELAY`). Receivers that
subscribed with ``on_unconfirmed`` keep such updates until confirmed; any still unconfirmed
after ``confirm_timeout`` is handed to ``on_unconfirmed`` so the receiver stores it itself
(duplicates in the log are harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from collab.bus.base import Bus, BusMessage, Kind, OnGap, OnMessage
from collab.protocol import read_var_bytes, read_var_uint, write_var_bytes, write_var_uint

log = logging.getLogger("collab.bus.redis")

OnUnconfirmed = Callable[[bytes], None]

WIRE_VERSION = 1
MARKER = 0
"""Only advances the sequence (sent after dropped messages, so receivers see the skip)."""
UPDATE = 1
AWARENESS = 2
HELD_UPDATE = 3
"""An update whose publisher will confirm its commit with a COMMITTED frame."""
COMMITTED = 4
"""Payload: varuint N; every HELD_UPDATE of this publisher and room up to seq N is stored."""
DELETED = 5
"""No payload: the document was deleted."""
GOODBYE = 6
"""Payload: the client key of a client without a connection that left (see Kind.GOODBYE)."""
_CODES = {MARKER, UPDATE, AWARENESS, HELD_UPDATE, COMMITTED, DELETED, GOODBYE}
_KIND_OF_CODE = {UPDATE: Kind.UPDATE, AWARENESS: Kind.AWARENESS, HELD_UPDATE: Kind.UPDATE,
                 DELETED: Kind.DELETED, GOODBYE: Kind.GOODBYE}
_FAILURES = (RedisError, OSError, asyncio.TimeoutError, EOFError)
COMMIT_NOTICE_DELAY = 0.1
"""Seconds a publisher gathers its commits before telling the others (one COMMITTED frame per
room for all of them, instead of one per commit: under steady typing, a frame for about every
update); at most a quarter of ``confirm_timeout``, so no receiver hands over an update that
was stored."""


# --- wire format (sans-I/O) -------------------------------------------------------------------


class BadFrame(ValueError):
    """Bytes on a room channel that are not a collab bus frame."""


@dataclass(frozen=True, slots=True)
class Frame:
    publisher: bytes
    seq: int
    code: int
    payload: bytes

    @property
    def kind(self) -> Kind | None:
        """What the room receives, or None for the bus's own control frames."""
        return _KIND_OF_CODE.get(self.code)


def code_of(kind: Kind, *, held: bool = False) -> int:
    if kind is Kind.UPDATE:
        return HELD_UPDATE if held else UPDATE
    if kind is Kind.DELETED:
        return DELETED
    return GOODBYE if kind is Kind.GOODBYE else AWARENESS


def encode_frame(publisher: bytes, seq: int, code: int, payload: bytes = b"") -> bytes:
    """``[version << 4 | code] [varbytes publisher] [varuint seq] payload...``"""
    return bytes([WIRE_VERSION << 4 | code]) + write_var_bytes(publisher) + write_var_uint(seq) + payload


def decode_frame(data: bytes) -> Frame:
    if not data or data[0] >> 4 != WIRE_VERSION:
        raise BadFrame("not a version 1 bus frame")
    code = data[0] & 0x0F
    if code not in _CODES:
        raise BadFrame(f"unknown frame code {code}")
    try:
        publisher, pos = read_var_bytes(data, 1)
        seq, pos = read_var_uint(data, pos)
    except ValueError as exc:
        raise BadFrame(str(exc)) from exc
    return Frame(publisher, seq, code, bytes(data[pos:]))


def committed_seq(frame: Frame) -> int:
    try:
        seq, end = read_var_uint(frame.payload, 0)
    except ValueError as exc:
        raise BadFrame(str(exc)) from exc
    if end != len(frame.payload):
        raise BadFrame("bytes after the committed sequence number")
    return seq


class HeldUpdates:
    """Updates heard from other instances and not yet confirmed stored by their publisher."""

    def __init__(self, timeout: float, limit: int = 10_000) -> None:
        self.timeout = timeout
        self.limit = limit
        self._held: dict[str, dict[bytes, deque[tuple[int, float, bytes]]]] = {}

    def hold(self, room: str, publisher: bytes, seq: int, update: bytes, now: float) -> list[bytes]:
        """Keep ``update``; returns those pushed out by the limit (treat them as unconfirmed)."""
        queue = self._held.setdefault(room, {}).setdefault(publisher, deque())
        queue.append((seq, now + self.timeout, update))
        overflow = []
        while len(queue) > self.limit:
            overflow.append(queue.popleft()[2])
        return overflow

    def confirm(self, room: str, publisher: bytes, up_to: int) -> None:
        queue = self._held.get(room, {}).get(publisher)
        while queue and queue[0][0] <= up_to:
            queue.popleft()

    def expired(self, now: float) -> list[tuple[str, bytes]]:
        """Remove and return every (room, update) whose confirmation is overdue."""
        out = []
        for room, publishers in self._held.items():
            for queue in publishers.values():
                while queue and queue[0][1] <= now:
                    out.append((room, queue.popleft()[2]))
        return out

    def release(self, room: str) -> list[bytes]:
        """Remove and return everything held for ``room``."""
        publishers = self._held.pop(room, {})
        return [update for queue in publishers.values() for _seq, _deadline, update in queue]


class SequenceTracker:
    """Per room, the last sequence number heard from each publisher; says when one was skipped."""

    def __init__(self) -> None:
        self._last: dict[str, dict[bytes, int]] = {}

    def forget(self, room: str) -> None:
        self._last.pop(room, None)

    def observe(self, room: str, publisher: bytes, seq: int) -> bool:
        """Record ``seq``; True when something from this publisher may have been missed. The
        first frame heard from a publisher is no gap: earlier ones predate the subscription,
        which the settle-time catch-up after subscribing covers."""
        last = self._last.setdefault(room, {})
        previous = last.get(publisher)
        last[publisher] = seq
        return previous is not None and seq != previous + 1


# --- the I/O shell ----------------------------------------------------------------------------


class RedisBus(Bus):
    def __init__(self, url: str, *, instance_id: str, channel_prefix: str = "collab:room:",
                 settle_delay: float = 0.5, ping_interval: float = 1.0, timeout: float = 5.0,
                 answer_timeout: float = 3.0, max_queue_bytes: int = 32 * 1024 * 1024,
                 max_batch: int = 256, max_backoff: float = 5.0, confirm_timeout: float = 3.0,
                 late_delay: float = 2.5) -> None:
        """``ping_interval``: the subscriber pings after this long without traffic;
        ``answer_timeout``: Redis leaving a ping or a publish unanswered this long makes the
        bus unhealthy (the subscriber reconnects); ``timeout``: for connecting and for
        commands, after which the connection is dropped."""
        self.instance_id = instance_id
        self.settle_delay = settle_delay
        self.late_delay = late_delay
        self.ping_interval = ping_interval
        self.answer_timeout = answer_timeout
        self.max_queue_bytes = max_queue_bytes
        self.max_batch = max_batch
        self.max_backoff = max_backoff
        super().__init__()
        self._id = instance_id.encode()
        self._prefix = channel_prefix.encode()
        self._pool = ConnectionPool.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0),
            protocol=2,  # RESP2: pub/sub messages come back as replies, not via push handlers
        )
        self._rooms: dict[str, tuple[OnMessage, OnGap, OnUnconfirmed | None]] = {}
        self._held = HeldUpdates(confirm_timeout)
        self._commit_delay = min(COMMIT_NOTICE_DELAY, confirm_timeout / 4)
        self._committed: dict[str, int] = {}
        self._commit_flush: asyncio.Handle | None = None
        self._tracker = SequenceTracker()
        self._seq: dict[str, int] = {}
        self._settling: dict[str | tuple[str, str], asyncio.TimerHandle] = {}
        self._queue: deque[tuple[str, bytes, float]] = deque()
        self._queued_bytes = 0
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._sub: AbstractConnection | None = None
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        self._sub_ok = False
        self._heard = 0.0
        """When the subscriber last read anything (the loop's clock)."""
        self._pub_ok = True
        self._publishing_since: float | None = None
        """When the batch being published was sent, until Redis answered it."""
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        self._tasks = [
            asyncio.create_task(self._subscriber(), name="redis-bus-subscriber"),
            asyncio.create_task(self._sender(), name="redis-bus-sender"),
            asyncio.create_task(self._sweeper(), name="redis-bus-sweeper"),
        ]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._pool.connection_kwargs["socket_timeout"])
        if not self._sub_ok:
            log.warning("Redis bus not reachable yet; retrying in the background")

    async def close(self) -> None:
        """Send what is queued (briefly), then disconnect and drop every subscription."""
        if self._commit_flush is not None:  # the commits gathered so far go out first
            self._commit_flush.cancel()
            self._send_commits()
        self._closing = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drained(), 1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for handle in self._settling.values():
            handle.cancel()
        self._settling.clear()
        if self._commit_flush is not None:
            self._commit_flush.cancel()
        self._rooms.clear()
        await self._pool.disconnect()

    async def _drained(self) -> None:
        while (self._queue or self._wake.is_set()) and self._pub_ok:
            await asyncio.sleep(0.01)

    @property
    def healthy(self) -> bool:
        since = self._publishing_since
        answering = since is None or time.perf_counter() - since < self.answer_timeout
        return self._sub_ok and self._pub_ok and answering

    def gauges(self) -> dict[str, float]:
        return {"subscribed_rooms": len(self._rooms), "queued_messages": len(self._queue)}

    # --- the interface ----------------------------------------------------------------------

    async def subscribe(self, room: str, on_message: OnMessage, on_gap: OnGap,
                        on_unconfirmed: OnUnconfirmed | None = None) -> None:
        """Returns once Redis confirmed the subscription (or at once while disconnected: the
        reconnection subscribes every room). ``on_unconfirmed(update)``: store this update,
        its publisher never confirmed storing it (see the module docstring)."""
        self._rooms[room] = (on_message, on_gap, on_unconfirmed)
        self._tracker.forget(room)
        channel = self._channel(room)
        sub = self._sub
        if sub is not None and sub.is_connected:
            confirmed = self._confirming.get(channel)
            if confirmed is None or confirmed.done():
                confirmed = asyncio.get_running_loop().create_future()
                self._confirming[channel] = confirmed
            try:
                await sub.send_command("SUBSCRIBE", channel, check_health=False)
                await asyncio.wait_for(asyncio.shield(confirmed), self.answer_timeout)
            except _FAILURES as exc:
                log.debug("subscribing %r not confirmed: %s", room, exc)
        self._schedule_gap(room)

    async def unsubscribe(self, room: str) -> None:
        handlers = self._rooms.pop(room, None)
        self._tracker.forget(room)
        for update in self._held.release(room):
            self._hand_over(handlers, room, update)
        for key in (room, (room, "late")):
            handle = self._settling.pop(key, None)
            if handle is not None:
                handle.cancel()
        sub = self._sub
        if sub is not None and sub.is_connected:
            with contextlib.suppress(*_FAILURES):
                await sub.send_command("UNSUBSCRIBE", self._channel(room), check_health=False)

    def publish(self, room: str, kind: Kind, payload: bytes,
                durable: asyncio.Future[Any] | None = None) -> None:
        """``durable``: the store's commit future for this update; once it succeeds the other
        instances are told, and they stop holding the update for a handoff."""
        try:
            held = durable is not None and kind is Kind.UPDATE
            seq = self._enqueue(room, code_of(kind, held=held), payload)
            if held and durable is not None:
                durable.add_done_callback(lambda done: self._on_durable(room, seq, done))
        except Exception:  # never let the bus break the caller
            self.stats.dropped += 1
            log.exception("could not queue a bus message for %r", room)

    # --- publishing -------------------------------------------------------------------------

    def _channel(self, room: str) -> bytes:
        return self._prefix + room.encode("utf-8", "surrogateescape")

    def _enqueue(self, room: str, code: int, payload: bytes = b"") -> int:
        seq = self._seq.get(room, 0) + 1
        self._seq[room] = seq
        frame = encode_frame(self._id, seq, code, payload)
        if self._closing or not self._pub_ok or self._queued_bytes + len(frame) > self.max_queue_bytes:
            self._drop(room)
            return seq
        self._queue.append((room, frame, time.perf_counter()))
        self._queued_bytes += len(frame)
        self._wake.set()
        return seq

    def _on_durable(self, room: str, seq: int, done: asyncio.Future[Any]) -> None:
        """A failed commit sends nothing: the receivers then store the update themselves."""
        if done.cancelled() or done.exception() is not None:
            return
        self._committed[room] = max(seq, self._committed.get(room, 0))
        if self._commit_flush is None:  # one COMMITTED frame per room per delay
            self._commit_flush = asyncio.get_running_loop().call_later(self._commit_delay,
                                                                       self._send_commits)

    def _send_commits(self) -> None:
        self._commit_flush = None
        committed, self._committed = self._committed, {}
        for room, seq in committed.items():
            self._enqueue(room, COMMITTED, write_var_uint(seq))

    def _drop(self, room: str) -> None:
        self.stats.dropped += 1
        self._dirty.add(room)

    def _take_batch(self) -> list[tuple[str, bytes, float]]:
        batch = []
        while self._queue and len(batch) < self.max_batch:
            entry = self._queue.popleft()
            self._queued_bytes -= len(entry[1])
            batch.append(entry)
        return batch

    async def _sender(self) -> None:
        conn: AbstractConnection | None = None
        backoff = 0.05
        while True:
            if not self._pub_ok:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            else:
                await self._wake.wait()
            self._wake.clear()
            try:
                conn = conn or await self._connect("pub")
                if not self._pub_ok:
                    await self._command(conn, ("PING",))
                    self._recovered()
                    backoff = 0.05
                while self._queue:
                    batch = self._take_batch()
                    self._publishing_since = time.perf_counter()
                    try:
                        await self._command(conn, *(("PUBLISH", self._channel(r), f) for r, f, _ in batch))
                    except BaseException:
                        for room, _frame, _queued_at in batch:
                            self._drop(room)
                        raise
                    finally:
                        self._publishing_since = None
                    self.stats.published += len(batch)
                    sent_at = time.perf_counter()
                    for _room, _frame, queued_at in batch:
                        self.stats.lag_seconds.observe(sent_at - queued_at)
            except _FAILURES as exc:
                if self._pub_ok:
                    log.warning("Redis bus: publishing failed (%s); dropping until Redis is back", exc)
                self._pub_ok = False
                while self._queue:
                    for room, _frame, _queued_at in self._take_batch():
                        self._drop(room)
                if conn is not None:
                    await conn.disconnect(nowait=True)
                conn = None

    def _recovered(self) -> None:
        """Publishing works again: tell the others which rooms lost messages, via a marker."""
        self._pub_ok = True
        log.info("Redis bus: publishing again")
        dirty, self._dirty = self._dirty, set()
        for room in dirty:
            if room in self._rooms:
                self._enqueue(room, MARKER)

    async def _command(self, conn: AbstractConnection, *commands: tuple[Any, ...]) -> None:
        """Send a pipelined batch and read its answers, all within the connection's timeout:
        one timeout for the batch, not one per answer (an asyncio timeout per read was a
        good part of the bus's CPU under load)."""
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

        async def answers() -> None:
            for _ in commands:
                await conn.read_response(timeout=math.inf)

        await asyncio.wait_for(answers(), self._pool.connection_kwargs["socket_timeout"])

    async def _connect(self, role: str) -> AbstractConnection:
        kwargs = {**self._pool.connection_kwargs, "client_name": f"collab-{self.instance_id}-{role}"}
        conn: AbstractConnection = self._pool.connection_class(**kwargs)
        try:
            await conn.connect()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    # --- subscribing ------------------------------------------------------------------------

    async def _subscriber(self) -> None:
        backoff = 0.05
        ever_connected = False
        while True:
            conn: AbstractConnection | None = None
            try:
                conn = await self._connect("sub")
                channels = [self._channel(room) for room in self._rooms]
                for start in range(0, len(channels), 1000):
                    await conn.send_command("SUBSCRIBE", *channels[start:start + 1000], check_health=False)
                self._sub, self._sub_ok = conn, True
                if ever_connected:
                    self.stats.reconnects += 1
                    log.info("Redis bus: subscriber reconnected; %d rooms catch up", len(self._rooms))
                ever_connected = True
                backoff = 0.05
                self._connected.set()
                for room in list(self._rooms):  # the tracker keeps its numbers: later skips show
                    self._schedule_gap(room)
                await self._read(conn)
            except _FAILURES as exc:
                if self._sub_ok or not ever_connected:
                    log.warning("Redis bus: subscriber connection lost (%s); reconnecting", exc)
            finally:
                self._sub, self._sub_ok = None, False
                for confirmed in self._confirming.values():
                    if not confirmed.done():
                        confirmed.set_result(None)
                self._confirming.clear()
                if conn is not None:
                    await conn.disconnect(nowait=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _read(self, conn: AbstractConnection) -> None:
        """Handle what the subscription brings. Reads wait without a timeout of their own (one
        per message was a good part of the bus's CPU under load): :meth:`_watch` pings a quiet
        link and drops one that leaves its ping unanswered, which ends the read."""
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        hung: list[str] = []
        watchdog = asyncio.create_task(self._watch(conn, hung), name="redis-bus-watchdog")
        try:
            while True:
                response = await conn.read_response(timeout=math.inf)
                self._heard = loop.time()
                self._handle(response)
        except _FAILURES as exc:
            if hung:
                raise ConnectionError(hung[0]) from exc
            raise
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    async def _watch(self, conn: AbstractConnection, hung: list[str]) -> None:
        """Ping after ``ping_interval`` without traffic; if nothing at all comes back within
        ``answer_timeout`` of the ping, say why in ``hung`` and disconnect (the read fails)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                quiet = loop.time() - self._heard
                if quiet < self.ping_interval:
                    await asyncio.sleep(self.ping_interval - quiet)
                    continue
                pinged_at = loop.time()
                await conn.send_command("PING", check_health=False)
                while self._heard < pinged_at and loop.time() - pinged_at < self.answer_timeout:
                    await asyncio.sleep(min(self.answer_timeout - (loop.time() - pinged_at), 0.1))
                if self._heard < pinged_at:
                    hung.append(f"Redis did not answer a ping within {self.answer_timeout} s")
                    break
        except _FAILURES as exc:
            hung.append(f"pinging Redis failed: {exc}")
        await conn.disconnect(nowait=True)

    def _handle(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) < 3:
            return
        kind, channel, data = response[0], response[1], response[2]
        if kind == b"message":
            self._deliver(channel, data)
        elif kind == b"subscribe":
            confirmed = self._confirming.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def _deliver(self, channel: bytes, data: bytes) -> None:
        room = channel[len(self._prefix):].decode("utf-8", "surrogateescape")
        handlers = self._rooms.get(room)
        if handlers is None:
            return
        try:
            frame = decode_frame(data)
        except BadFrame:
            self.stats.malformed += 1
            return
        if frame.publisher == self._id:
            self.stats.own += 1
            return
        if self._tracker.observe(room, frame.publisher, frame.seq):
            self.stats.gaps += 1
            self._schedule_gap(room)
        on_message, _on_gap, on_unconfirmed = handlers
        if frame.code == COMMITTED:
            try:
                self._held.confirm(room, frame.publisher, committed_seq(frame))
            except BadFrame:
                self.stats.malformed += 1
            return
        kind = frame.kind
        if kind is None:
            return
        if frame.code == HELD_UPDATE and on_unconfirmed is not None:
            now = asyncio.get_running_loop().time()
            for update in self._held.hold(room, frame.publisher, frame.seq, frame.payload, now):
                self._hand_over(handlers, room, update)
        self.stats.received += 1
        try:
            on_message(BusMessage(room, kind, frame.payload))
        except Exception:
            log.exception("room %r: handling a bus message failed", room)

    # --- handoff of updates nobody confirmed stored -----------------------------------------

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self._held.timeout / 4)
            for room, update in self._held.expired(asyncio.get_running_loop().time()):
                self._hand_over(self._rooms.get(room), room, update)

    def _hand_over(self, handlers: tuple[OnMessage, OnGap, OnUnconfirmed | None] | None,
                   room: str, update: bytes) -> None:
        if handlers is None or handlers[2] is None:
            return
        self.stats.handed_over += 1
        try:
            handlers[2](update)
        except Exception:
            log.exception("room %r: storing an unconfirmed update failed", room)

    # --- gaps -------------------------------------------------------------------------------

    def _schedule_gap(self, room: str) -> None:
        """Catch up twice: soon, and once more later for a commit that lagged the first read."""
        if room not in self._rooms:
            return
        loop = asyncio.get_running_loop()
        for key, delay in ((room, self.settle_delay), ((room, "late"), self.settle_delay + self.late_delay)):
            if key not in self._settling:
                self._settling[key] = loop.call_later(delay, self._fire_gap, key)

    def _fire_gap(self, key: str | tuple[str, str]) -> None:
        self._settling.pop(key, None)
        room = key if isinstance(key, str) else key[0]
        handlers = self._rooms.get(room)
        if handlers is None:
            return
        try:
            handlers[1]()
        except Exception:
            log.exception("room %r: on_gap failed", room)
