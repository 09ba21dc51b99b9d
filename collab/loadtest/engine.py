"""The load itself: y-websocket clients, writers typing on a schedule, latency bookkeeping.

A client reaches the server over a WebSocket or, with ``transport="poll"``, over collab's HTTP
fallback (:mod:`collab.loadtest.pollclient`, which has the same interface), so the same load
measures either.

Receivers do no CRDT work on the hot path. Every edit inserts a marker ``[writer:seq]``; Yjs
carries inserted text verbatim inside the update, so a receiver finds the markers in the raw
update bytes, looks up the send time and counts the delivery. The updates themselves are kept
and merged once at the end for the convergence check (``replica="lazy"``), or applied as they
arrive like a real client would (``replica="full"``). Writers keep a real document so their
edits land at random positions of the shared text.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from collab import crdt, protocol
from collab.loadtest import pollclient, wsclient
from collab.loadtest.stats import Window

MARKER = re.compile(rb"\[(\d{1,9}):(\d{1,12})\]")
EMPTY_STATE_VECTOR = b"\x00"
JUMP = 0.05
"""Chance per edit that the writer's cursor moves to a random position."""
BACKSPACE = 0.15
"""Chance per edit that a few characters before the cursor are deleted first."""
_UPDATE = bytes([protocol.MSG_SYNC, protocol.SYNC_UPDATE])
_STEP2 = bytes([protocol.MSG_SYNC, protocol.SYNC_STEP2])
_STEP1 = bytes([protocol.MSG_SYNC, protocol.SYNC_STEP1])


TRANSPORTS = ("websocket", "poll")


class Connection(Protocol):
    """What a client needs of its connection: a WebSocket or the HTTP fallback."""

    on_message: Callable[[bytes, float], None]
    on_close: Callable[[int, str], None]

    def send(self, data: bytes) -> None: ...

    def close(self, code: int = 1000) -> None: ...


def poll_url(url: str) -> str:
    """The HTTP fallback's base URL for a WebSocket base URL: ``ws://h:p/ws`` becomes
    ``http://h:p/poll`` (an http(s) URL is taken as it is)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return url
    path = parts.path.rstrip("/")
    path = path[:-3] + "/poll" if path.endswith("/ws") else path + "/poll"
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, path, "", ""))


@dataclass(slots=True)
class Options:
    url: str
    acks: bool = False
    """Ask the server for durable acks (``?acks=1``), as the collab editor does."""
    deflate: bool = False
    replica: str = "lazy"
    connect_timeout: float = 10.0
    connect_concurrency: int = 64
    transport: str = "websocket"
    """``websocket``, or ``poll`` for collab's HTTP fallback."""
    prefix: str = field(default_factory=lambda: "lt-" + secrets.token_hex(4))
    """Every document this run opens is named ``<prefix>-…`` (``--cleanup`` deletes them)."""


@dataclass(slots=True)
class Room:
    name: str
    clients: list[Client] = field(default_factory=list)
    live: int = 0
    """Clients connected and synced now: each edit expects a delivery to all but its writer."""


class Run:
    """Shared state of one load-test process: send times by writer and the current window."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.sent_at: list[list[float]] = []
        self.window = Window()
        self.connection_errors = 0
        self.close_reasons: dict[str, int] = {}

    def new_writer(self) -> int:
        self.sent_at.append([])
        return len(self.sent_at) - 1

    def room_url(self, room: str) -> str:
        base = poll_url(self.options.url) if self.options.transport == "poll" else self.options.url
        url = base.rstrip("/") + "/" + room
        return url + "?acks=1" if self.options.acks else url

    def lost_connection(self, code: int, reason: str) -> None:
        self.connection_errors += 1
        key = f"{code} {reason}".strip()
        self.close_reasons[key] = self.close_reasons.get(key, 0) + 1


class Client:
    """One y-websocket client. ``on_message`` runs synchronously inside ``data_received``."""

    def __init__(self, run: Run, room: Room, *, writer: bool = False) -> None:
        self.run = run
        self.room = room
        self.writer_id = run.new_writer() if writer else -1
        self.ws: Connection | None = None
        self.alive = False
        self.closing = False
        self.synced: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.last_seen: dict[int, int] = {}
        self.received: list[bytes] = []
        self.sync_payload = b""
        keep_doc = writer or run.options.replica == "full"
        self.doc: crdt.Document | None = crdt.Document() if keep_doc else None
        self.pending: list[bytes] = []
        self.length = 0
        self.length_stale = False
        self.cursor = 0

    async def open(self) -> None:
        url = self.run.room_url(self.room.name)
        if self.run.options.transport == "poll":
            self.ws = pollclient.PollConnection(
                url, state_vector=self.doc.state_vector if self.doc is not None else None)
        else:
            self.ws = await wsclient.connect(url, deflate=self.run.options.deflate,
                                             timeout=self.run.options.connect_timeout)
        self.ws.on_message = self.on_message
        self.ws.on_close = self._on_close
        self.alive = True
        self.room.live += 1
        state_vector = self.doc.state_vector() if self.doc is not None else EMPTY_STATE_VECTOR
        self.ws.send(protocol.encode_sync_step1(state_vector))

    def _on_close(self, code: int, reason: str) -> None:
        if self.alive:
            self.room.live -= 1
        self.alive = False
        if not self.closing:
            self.run.lost_connection(code, reason)
        if not self.synced.done():
            self.synced.set_exception(ConnectionError(f"closed before sync: {code} {reason}"))
            self.synced.exception()  # retrieved here: open_clients counts it as a connection error

    def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            self.ws.close()

    def on_message(self, data: bytes, now: float) -> None:
        head = data[:2]
        if head == _UPDATE:
            self._on_update(protocol.read_var_bytes(data, 2)[0], now)
        elif head == _STEP2:
            payload = protocol.read_var_bytes(data, 2)[0]
            self._on_update(payload, now)
            if not self.synced.done():
                self.sync_payload = payload
                self.synced.set_result(now)
        elif head == _STEP1:
            self._answer_step1(protocol.read_var_bytes(data, 2)[0])

    def _answer_step1(self, state_vector: bytes) -> None:
        update = self.doc.diff(state_vector) if self.doc is not None else crdt.EMPTY_UPDATE
        assert self.ws is not None
        self.ws.send(protocol.encode_sync_step2(update))

    def _on_update(self, payload: bytes, now: float) -> None:
        window = self.run.window
        sent_at = self.run.sent_at
        foreign = False
        for w_raw, s_raw in MARKER.findall(payload):
            w, s = int(w_raw), int(s_raw)
            if w == self.writer_id:
                window.acks += 1
                continue
            if w >= len(sent_at) or s >= len(sent_at[w]):
                continue
            foreign = True
            last = self.last_seen.get(w, -1)
            if s > last:
                window.delivered += 1
                if s > last + 1:
                    window.gaps += s - last - 1
                self.last_seen[w] = s
                window.latencies.append(now - sent_at[w][s])
            else:
                window.late += 1
        if self.writer_id >= 0:
            if foreign or not MARKER.search(payload):
                self.pending.append(payload)
                self.length_stale = True
        elif self.doc is not None:
            self.doc.apply(payload)
        else:
            self.received.append(payload)

    def edit(self, rng: random.Random) -> None:
        """Type one token at the cursor like a person: now and then the cursor jumps to a random
        position, and sometimes a few characters before it are deleted first (backspace). Typing
        at a cursor also keeps the engine's cost per edit flat, where inserting at a fresh
        random position every time fragments the text and makes each edit slower."""
        doc = self.doc
        assert doc is not None and self.ws is not None
        if self.pending:
            for update in self.pending:
                doc.apply(update)
            self.pending.clear()
        if self.length_stale:
            self.length = len(doc.text())
            self.length_stale = False
        times = self.run.sent_at[self.writer_id]
        token = f"[{self.writer_id}:{len(times)}]"
        if rng.random() < JUMP or self.cursor > self.length:
            self.cursor = rng.randrange(self.length + 1)
        pos = self.cursor
        delete = 0
        if self.length > 64 and rng.random() < BACKSPACE:
            delete = min(rng.randint(1, 4), pos)
            pos -= delete
        update = doc.edit_text(pos, token, delete)
        self.length += len(token) - delete
        self.cursor = pos + len(token)
        times.append(time.perf_counter())
        self.ws.send(protocol.encode_sync_update(update or crdt.EMPTY_UPDATE))

    def text(self) -> str:
        """This client's document text, built from everything it received (off the hot path)."""
        if self.doc is not None:
            for update in self.pending:
                self.doc.apply(update)
            self.pending.clear()
            return self.doc.text()
        if not self.received:
            return ""
        return crdt.document_from([crdt.merge(self.received)]).text()


async def open_clients(run: Run, clients: list[Client]) -> int:
    """Connect and sync every client, at most ``connect_concurrency`` at a time; returns failures.
    The first client of each room goes first: some servers (pycrdt-websocket) drop clients that
    race each other into a room that does not exist yet."""
    gate = asyncio.Semaphore(run.options.connect_concurrency)

    async def one(client: Client) -> bool:
        async with gate:
            try:
                await client.open()
                await asyncio.wait_for(asyncio.shield(client.synced), run.options.connect_timeout)
                return True
            except (OSError, asyncio.TimeoutError, ConnectionError, Exception):
                run.connection_errors += 1
                client.close()
                return False

    firsts: dict[str, Client] = {}
    for client in clients:
        firsts.setdefault(client.room.name, client)
    rest = [c for c in clients if firsts[c.room.name] is not c]
    results = await asyncio.gather(*(one(c) for c in firsts.values()))
    results += await asyncio.gather(*(one(c) for c in rest))
    return sum(1 for ok in results if not ok)


def make_rooms(run: Run, prefix: str, rooms: int, clients: int, writers: int) -> list[Room]:
    made = []
    for i in range(rooms):
        room = Room(f"{prefix}-{i}")
        room.clients = [Client(run, room, writer=j < writers) for j in range(clients)]
        made.append(room)
    return made


async def write_for(run: Run, writers: list[Client], rate: float, duration: float,
                    rng: random.Random, tick: Callable[[], None] | None = None) -> float:
    """Every writer types ``rate`` edits per second for ``duration`` seconds, on one shared
    schedule (a heap of due times, phases spread at random). Returns the seconds spent."""
    start = time.perf_counter()
    end = start + duration
    interval = 1.0 / rate
    heap = [(start + rng.random() * interval, i) for i in range(len(writers))]
    heapq.heapify(heap)
    window = run.window
    next_tick = start
    while heap:
        now = time.perf_counter()
        if now >= end:
            break
        while heap and heap[0][0] <= now:
            due, i = heapq.heappop(heap)
            writer = writers[i]
            if not writer.alive:
                continue
            writer.edit(rng)
            window.edits += 1
            window.expected += writer.room.live - 1
            lag = now - due
            if lag > window.schedule_lag_max:
                window.schedule_lag_max = lag
            heapq.heappush(heap, (due + interval, i))
        if tick is not None and now >= next_tick:
            tick()
            next_tick = now + 0.25
        wait = min(heap[0][0] if heap else end, end) - time.perf_counter()
        await asyncio.sleep(max(0.0, wait))
    return time.perf_counter() - start


async def drain(run: Run, timeout: float) -> None:
    """Wait until every expected delivery arrived, or nothing arrived for ``timeout`` seconds."""
    window = run.window
    last_count, last_change = window.delivered, time.perf_counter()
    while window.delivered < window.expected:
        await asyncio.sleep(0.02)
        now = time.perf_counter()
        if window.delivered != last_count:
            last_count, last_change = window.delivered, now
        elif now - last_change > timeout:
            break


async def server_text(run: Run, room: str) -> str | None:
    """The server's document: what a fresh client syncs."""
    auditor = Client(run, Room(room))
    try:
        await auditor.open()
        await asyncio.wait_for(asyncio.shield(auditor.synced), run.options.connect_timeout)
    except Exception:
        return None
    finally:
        auditor.close()
    if not auditor.sync_payload:
        return ""
    return crdt.document_from([auditor.sync_payload]).text()


async def check_convergence(run: Run, rooms: list[Room]) -> dict[str, object]:
    """Every live client of a room holds the same text as a client that syncs afresh."""
    converged = 0
    diverged: list[str] = []
    for room in rooms:
        reference = await server_text(run, room.name)
        texts = {c.text() for c in room.clients if c.alive}
        if reference is not None and texts <= {reference}:
            converged += 1
        else:
            diverged.append(room.name)
    return {"converged": not diverged, "rooms_converged": converged, "rooms_checked": len(rooms),
            "diverged_rooms": diverged[:10]}


def close_all(rooms: list[Room]) -> None:
    for room in rooms:
        for client in room.clients:
            client.close()
