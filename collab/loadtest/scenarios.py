"""The scenarios: fan-out at a fixed rate, a rate ramp, a join storm, idle connections.

Each returns a plain dict (the JSON report); ``report.py`` renders it for people.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from collab import crdt, protocol
from collab.loadtest import engine
from collab.loadtest.engine import Client, Options, Room, Run
from collab.loadtest.stats import SATURATED_CPU, Window, latency_summary


@dataclass(slots=True)
class Load:
    rooms: int
    clients: int
    writers: int
    rate: float
    duration: float
    drain_timeout: float = 5.0
    seed: int | None = None


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: float, enabled: bool = True) -> None:
        self.label, self.total = label, total
        self.enabled = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self._last = (0, 0.0)

    def draw(self, window: Window) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        done = min(1.0, (now - self.start) / self.total) if self.total else 1.0
        delivered, at = self._last
        rate = (window.delivered - delivered) / max(now - at, 1e-3) if at else 0.0
        self._last = (window.delivered, now)
        bar = "#" * int(done * 24)
        sys.stderr.write(f"\r{self.label} [{bar:<24}] {now - self.start:5.1f}s  edits {window.edits:,}"
                         f"  delivered {window.delivered:,} ({rate:,.0f}/s)   ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


async def _connect(run: Run, load: Load, prefix: str) -> tuple[list[Room], list[Client], float]:
    rooms = engine.make_rooms(run, prefix, load.rooms, load.clients, load.writers)
    start = time.perf_counter()
    await engine.open_clients(run, [c for r in rooms for c in r.clients])
    writers = [c for r in rooms for c in r.clients if c.writer_id >= 0 and c.alive]
    return rooms, writers, time.perf_counter() - start


async def _measure(run: Run, writers: list[Client], rate: float, load: Load, rng: random.Random,
                   progress: Progress | None) -> dict[str, object]:
    run.window = Window()
    run.window.start()
    errors_before = run.connection_errors
    tick = (lambda: progress.draw(run.window)) if progress else None
    sent_for = await engine.write_for(run, writers, rate, load.duration, rng, tick)
    await engine.drain(run, load.drain_timeout)
    run.window.stop()
    summary = run.window.summary(sent_for)
    summary["connection_errors"] = run.connection_errors - errors_before
    return summary


def _base(load: Load, opts: Options) -> dict[str, object]:
    return {"url": opts.url, "rooms": load.rooms, "clients": load.clients, "writers": load.writers,
            "rate": load.rate, "duration": load.duration, "replica": opts.replica, "deflate": opts.deflate,
            "transport": opts.transport}


async def fanout(opts: Options, load: Load, *, progress: bool = True) -> dict[str, object]:
    """R rooms x C clients, W writers per room at a fixed rate; latency to every receiver."""
    run = Run(opts)
    rng = random.Random(load.seed)
    rooms, writers, connect_s = await _connect(run, load, opts.prefix)
    connect_errors = run.connection_errors
    bar = Progress("load", load.duration, progress)
    try:
        summary = await _measure(run, writers, load.rate, load, rng, bar)
        bar.done()
        summary.update(await engine.check_convergence(run, rooms))
    finally:
        bar.done()
        engine.close_all(rooms)
    report = {"scenario": "fanout", **_base(load, opts), **summary}
    report["connection_errors"] = connect_errors + int(summary["connection_errors"])  # type: ignore[call-overload]
    report["connect_seconds"] = round(connect_s, 3)
    report["close_reasons"] = run.close_reasons
    return report


async def ramp(opts: Options, load: Load, *, factor: float = 1.5, steps: int = 10,
               p99_bound_ms: float = 100.0, progress: bool = True) -> dict[str, object]:
    """Raise the per-writer rate step by step on the same connections until p99 passes the
    bound, a delivery is lost or a connection fails; report the highest rate held."""
    run = Run(opts)
    rng = random.Random(load.seed)
    rooms, writers, _ = await _connect(run, load, opts.prefix)
    results: list[dict[str, object]] = []
    held: dict[str, object] | None = None
    stop_reason = "steps exhausted"
    rate = load.rate
    try:
        if run.connection_errors:
            stop_reason = "connection errors while connecting"
        for step in range(steps if not run.connection_errors else 0):
            bar = Progress(f"step {step + 1} @ {rate * len(writers):,.0f} edits/s", load.duration, progress)
            summary = await _measure(run, writers, rate, load, rng, bar)
            bar.done()
            summary["rate_per_writer"] = round(rate, 3)
            results.append(summary)
            latency = summary["latency_ms"]
            assert isinstance(latency, dict)
            if latency["p99"] > p99_bound_ms:
                stop_reason = f"p99 {latency['p99']} ms > {p99_bound_ms} ms"
                break
            if summary["lost_deliveries"] or summary["connection_errors"]:
                stop_reason = "deliveries lost or connections failed"
                break
            held = summary
            if summary["loadtester_saturated"]:
                stop_reason = "load tester saturated (its CPU, not the server, is the limit)"
                break
            rate *= factor
        convergence = await engine.check_convergence(run, rooms)
    finally:
        engine.close_all(rooms)
    return {"scenario": "ramp", **_base(load, opts), "factor": factor, "p99_bound_ms": p99_bound_ms,
            "steps": results, "stop_reason": stop_reason,
            "held_edit_rate": held["edit_rate"] if held else 0.0,
            "held_delivery_rate": held["delivery_rate"] if held else 0.0,
            "held_latency_ms": held["latency_ms"] if held else None,
            "limited_by_loadtester": stop_reason.startswith("load tester"),
            **convergence}


def document_chunks(size: int, chunk: int = 16384, seed: int = 1) -> list[str]:
    """Plain prose-like text of ``size`` characters, in chunks (one update each)."""
    rng = random.Random(seed)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "collab", "yjs", "text", "edit", "sync"]
    text_parts: list[str] = []
    total = 0
    while total < size:
        word = rng.choice(words) + (" " if rng.random() > 0.1 else "\n")
        text_parts.append(word)
        total += len(word)
    text = "".join(text_parts)[:size]
    return [text[i:i + chunk] for i in range(0, len(text), chunk)]


async def seed_document(opts: Options, room: str, size: int, timeout: float = 60.0) -> tuple[float, Client]:
    """Write a ``size``-character document into ``room`` and wait until a fresh client syncs all
    of it (so the server really holds it). Returns the seconds that took and the writer, still
    connected: servers without a store drop a document when its last client leaves."""
    run = Run(opts)
    writer = Client(run, Room(room), writer=True)
    start = time.perf_counter()
    await writer.open()
    await asyncio.wait_for(asyncio.shield(writer.synced), opts.connect_timeout)
    assert writer.doc is not None and writer.ws is not None
    pos = 0
    for chunk in document_chunks(size):
        update = writer.doc.edit_text(pos, chunk)
        pos += len(chunk)
        writer.ws.send(protocol.encode_sync_update(update or crdt.EMPTY_UPDATE))
    deadline = time.perf_counter() + timeout
    try:
        while True:
            text = await engine.server_text(run, room)
            if text is not None and len(text) >= size:
                return time.perf_counter() - start, writer
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the server did not hold the {size}-character document in time")
            await asyncio.sleep(0.05)
    except BaseException:
        writer.close()
        raise


async def join(opts: Options, room: str, count: int) -> dict[str, object]:
    """``count`` clients connect at once to ``room`` and sync it; times from the start of the
    storm to each client's sync step 2, checked afterwards (off the clock) to hold the text."""
    run = Run(opts)
    target = Room(room)
    clients = [Client(run, target) for _ in range(count)]
    start = time.perf_counter()
    failures = await engine.open_clients(run, clients)
    times = [c.synced.result() - start for c in clients if c.synced.done() and not c.synced.exception()]
    lengths = {len(crdt.document_from([c.sync_payload]).text()) for c in clients if c.sync_payload}
    engine.close_all([target])
    summary = latency_summary(times)
    return {"clients": count, "synced": len(times), "failed": failures,
            "all_synced_ms": summary["max"], "sync_ms": summary, "document_lengths": sorted(lengths)}


async def join_storm(opts: Options, count: int, doc_size: int, room: str | None = None,
                     seed: bool = True) -> dict[str, object]:
    room = room or opts.prefix + "-storm"
    seeded, keeper = await seed_document(opts, room, doc_size) if seed else (None, None)
    try:
        result = await join(opts, room, count)
    finally:
        if keeper is not None:
            keeper.close()
    result["ok"] = result["failed"] == 0 and result["document_lengths"] == [doc_size]
    return {"scenario": "join_storm", "url": opts.url, "room": room, "doc_size": doc_size,
            "seed_seconds": round(seeded, 3) if seeded is not None else None, **result}


async def idle(opts: Options, rooms: int, clients: int,
               hold: Callable[[], Awaitable[None]] | None = None) -> dict[str, object]:
    """Open rooms x clients synced connections that send nothing, hold them while ``hold()``
    runs (the benchmark measures the server meanwhile), then close them."""
    run = Run(opts)
    made = engine.make_rooms(run, opts.prefix, rooms, clients, 0)
    start = time.perf_counter()
    failures = await engine.open_clients(run, [c for r in made for c in r.clients])
    opened_s = time.perf_counter() - start
    try:
        if hold is not None:
            await hold()
    finally:
        engine.close_all(made)
    return {"scenario": "idle", "url": opts.url, "connections": rooms * clients, "failed": failures,
            "connect_seconds": round(opened_s, 3), "errors_while_idle": run.connection_errors - failures}


def saturation_warning(report: dict[str, object]) -> str | None:
    share = report.get("loadtester_cpu_percent")
    if isinstance(share, (int, float)) and share >= SATURATED_CPU * 100:
        return (f"warning: the load tester used {share}% of a core; its own CPU may be the limit "
                "of these numbers (use fewer clients or --replica lazy)")
    return None
