"""A seeded fuzzing campaign against a running server, over real WebSocket connections.

Hostile clients send mutated real messages (sync step 1, step 2 and updates made by Yjs and by
the engine, awareness from y-protocols), random bytes, forged lengths and the known reproductions;
a writer keeps typing; a watcher asks the liveness endpoint every 100 ms. At the end the writer,
a fresh joiner and (after a restart, by the caller) the store must hold the same text.

Used by ``tests/test_fuzz.py`` (a few seconds) and ``bench/fuzz.py`` (the long campaign).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from collab import protocol
from collab.protocol import AwarenessEntry
from tests.pyclient import PyClient

JS_DIR = Path(__file__).resolve().parent / "js"

KNOWN = [
    bytes.fromhex("0101959aef3affffffff0f418906000301959aef3a010003"),  # clock 2**32 - 1
    b"\x01\x01c*\xc4\x01\x04\x01\x05\x02xx\x00",  # a struct after a gap, origins into text
    b"\x01\x01\x01\x00\x08\x01\x04text\xff\xff\xff\xff\x0f\x75\xff\xff\xff\xff\x0f" + b"\x7e" * 12 + b"\x00",
]


def _seeds() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Updates, state vectors and awareness payloads made by the real encoders."""
    updates_json = json.loads((JS_DIR / "update_vectors.json").read_text(encoding="utf-8"))
    protocol_json = json.loads((JS_DIR / "protocol_vectors.json").read_text(encoding="utf-8"))
    updates = [bytes.fromhex(v["hex"]) for v in updates_json["updates"]]
    state_vectors = [bytes.fromhex(v["hex"]) for v in updates_json["state_vectors"]]
    awareness = [bytes.fromhex(v["payload"]) for v in protocol_json["awareness"]]
    return updates, state_vectors, awareness


class Messages:
    """An endless, seeded stream of hostile y-websocket messages."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.updates, self.state_vectors, self.awareness = _seeds()

    def learn(self, update: bytes) -> None:
        """Mutate what the server really holds, too (origins that point into the document)."""
        if len(self.updates) < 400:
            self.updates.append(update)

    def mutate(self, raw: bytes) -> bytes:
        rng = self.rng
        data = bytearray(raw)
        for _ in range(rng.choice((1, 1, 1, 2, 3, 6))):
            choice = rng.random()
            if choice < 0.45 and data:
                i = rng.randrange(len(data))
                flipped = data[i] ^ (1 << rng.randrange(8))
                data[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256), flipped))
            elif choice < 0.6 and data:
                del data[rng.randrange(len(data))]
            elif choice < 0.75:
                data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            elif choice < 0.85 and data:  # a huge varint where a count or a clock was
                i = rng.randrange(len(data))
                data[i:i + 1] = rng.choice((b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\xff\xff\xff\x7f",
                                            b"\x80\x80\x80\x80\x08"))
            elif choice < 0.95 and len(data) > 2:  # splice in part of another message
                other = rng.choice(self.updates)
                i = rng.randrange(len(data))
                j = rng.randrange(len(other))
                data[i:] = other[j:j + rng.randint(1, 12)] + data[i:]
            else:
                del data[rng.randrange(len(data) + 1):]
        return bytes(data)

    def next(self) -> bytes:
        rng = self.rng
        kind = rng.random()
        if kind < 0.35:
            return protocol.encode_sync_update(self.mutate(rng.choice(self.updates)))
        if kind < 0.45:
            return protocol.encode_sync_step2(self.mutate(rng.choice(self.updates)))
        if kind < 0.55:
            return protocol.encode_sync_step1(self.mutate(rng.choice(self.state_vectors)))
        if kind < 0.7:
            return protocol.encode_awareness(self.mutate(rng.choice(self.awareness)))
        if kind < 0.78:
            return self.mutate(protocol.encode_sync_update(rng.choice(self.updates)))  # the envelope
        if kind < 0.84:
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        if kind < 0.88:
            return protocol.encode_sync_update(rng.choice(KNOWN))
        if kind < 0.92:  # presence: deep, wide, or removing others
            depth = rng.choice((10, 70, 5000))
            entries = [AwarenessEntry(rng.randrange(2**32), rng.randrange(10), "[" * depth + "]" * depth)]
            if rng.random() < 0.5:
                count = rng.choice((5, 5000))
                entries = [AwarenessEntry(rng.randrange(100), 99, "null") for _ in range(count)]
            return protocol.encode_awareness(protocol.encode_awareness_payload(entries))
        if kind < 0.96:  # a valid update of the real document, reordered: it has to wait
            return protocol.encode_sync_update(rng.choice(self.updates))
        return protocol.encode_query_awareness()


@dataclass
class Result:
    messages: int = 0
    connections: int = 0
    closes: Counter[int | None] = field(default_factory=Counter)
    liveness_checks: int = 0
    slowest_liveness: float = 0.0
    slow_liveness: int = 0
    """Liveness answers that took a second or more."""
    liveness_failures: int = 0
    crashed: int | None = None
    """The server's exit code, had it exited during the campaign."""
    seconds: float = 0.0


def _liveness(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/liveness_check", timeout=5) as response:
        response.read()
    return time.monotonic() - started


async def _watch(http_url: str, result: Result, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            elapsed = await asyncio.to_thread(_liveness, http_url)
            result.slowest_liveness = max(result.slowest_liveness, elapsed)
            result.slow_liveness += elapsed >= 1.0
        except OSError:
            result.liveness_failures += 1
            result.slowest_liveness = max(result.slowest_liveness, 5.0)
        result.liveness_checks += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


PROBE = protocol.encode_sync_step1(b"\x00")


async def _answered(ws: websockets.ClientConnection) -> None:
    """Wait for the answer to the probe (a step 2): the server has read every frame before it."""
    while True:
        frame = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(frame, bytes) and frame[:2] == b"\x00\x01":
            return


async def _attacker(ws_url: str, messages: Messages, budget: list[int], result: Result,
                    halt: asyncio.Event) -> None:
    """Send hostile messages, each followed by a probe whose answer proves the server read it
    (a message sent after one that closed the connection is not counted)."""
    while budget[0] > 0 and not halt.is_set():
        result.connections += 1
        try:
            async with websockets.connect(ws_url, max_size=None, open_timeout=10, close_timeout=2) as ws:
                await ws.send(PROBE)
                await _answered(ws)
                while budget[0] > 0 and not halt.is_set():
                    budget[0] -= 1
                    frame = messages.next()
                    if messages.rng.random() < 0.01:
                        await ws.send(frame.decode("latin-1"))  # a text frame now and then
                    else:
                        await ws.send(frame)
                    result.messages += 1
                    await ws.send(PROBE)
                    await _answered(ws)
                await ws.close()
        except websockets.ConnectionClosed as closed:
            result.closes[closed.rcvd.code if closed.rcvd is not None else None] += 1
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake):
            result.closes[None] += 1
            await asyncio.sleep(0.05)


async def run(ws_url: str, http_url: str, room: str, *, messages: int, seed: int,
              attackers: int = 4, alive: Callable[[], bool] | None = None,
              concurrent_writer: bool = True) -> tuple[Result, PyClient]:
    """Run a campaign of ``messages`` hostile messages while a writer types; returns the result
    and the writer (still connected), after checking that a fresh joiner has its text.
    ``alive()`` says whether the server process still runs. Without ``concurrent_writer`` the
    writer types only before and after the attack."""
    result = Result()
    started = time.monotonic()
    stream = Messages(seed)
    writer = await PyClient(ws_url, room).start()

    async def type_and_learn(text: str) -> None:
        before = writer.doc.state_vector()
        await writer.insert(text)
        stream.learn(writer.doc.diff(before))

    for n in range(5):
        await type_and_learn(f"<{n}> ")
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(http_url, result, stop))
    budget = [messages]
    halt = asyncio.Event()
    tasks = [asyncio.create_task(_attacker(f"{ws_url}/{room}", stream, budget, result, halt))
             for _ in range(attackers)]
    typed = 0
    while not all(t.done() for t in tasks):
        typed += 1
        if concurrent_writer:
            await type_and_learn(f"[{typed}]")
        if alive is not None and not alive():
            result.crashed = -1
            halt.set()
            break
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks, return_exceptions=True)
    if not concurrent_writer:
        await type_and_learn(" after the attack")
    stop.set()
    await watcher
    result.seconds = time.monotonic() - started
    if result.crashed is None:
        fresh = await PyClient(ws_url, room).start()
        await fresh.wait_text(writer.text(), timeout=15)
        await fresh.close()
    return result, writer
