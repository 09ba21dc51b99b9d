"""Churn: a small document typed and deleted all day. Does the store stay small?

    python bench/churn.py                          # 64 MiB of churn, this checkout only
    python bench/churn.py --baseline main          # and a git ref as the baseline, same run
    python bench/churn.py --churn-mib 8 --baseline HEAD~2 --repeats 2

One writer inserts 20 KB into a 40-character document and deletes it again, over and over,
until ``--churn-mib`` have been inserted (each edit waits for the durable ack of the one before,
as an editor does); meanwhile an editor replaces one character every 20 ms and an observer
receives it, for the edit latency. Then the server stops gracefully, and a fresh one loads the
document for a new client. Measured, per code version:

- data directory size after the graceful stop (target < 24 MiB);
- memory added by loading the document in a fresh server: peak RSS while a client joins,
  minus RSS before (target < 64 MiB);
- a new client's sync: bytes of its sync step 2 (target < 1 MiB);
- edit latency p95 during the churn, editor to observer (target < 250 ms), and the editor's
  "saved" (durable ack) latency;
- the server's peak RSS during the churn.

A baseline (``--baseline REF``) runs from a temporary git worktree of that ref, in the same run,
with the same clients. The server is pinned to CPU 0 and this script to CPU 1 where taskset
exists. Raw results go to bench/results/churn-*.json; the table to stdout and, as its own
section, into docs/benchmarks.md (which bench/run.py keeps when it rewrites the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from run import environment  # noqa: E402

from collab import crdt, gate, protocol  # noqa: E402  (the clients: the wire format is every version's)

CHUNK = 20_000
BASE_TEXT = "0123456789" * 4
PROBE_INTERVAL = 0.02


@dataclass
class Result:
    version: str
    churned_mib: float = 0.0
    churn_seconds: float = 0.0
    data_mib: float = 0.0
    load_mib: float = 0.0
    sync_kib: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_max_ms: float = 0.0
    saved_p95_ms: float = 0.0
    probes: int = 0
    peak_rss_mib: float = 0.0
    notes: list[str] = field(default_factory=list)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pinned(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


class Server:
    """``collab serve`` from the code in ``code`` (its directory first on the import path)."""

    def __init__(self, code: Path, data: Path, log: Path) -> None:
        self.code, self.data, self.log = code, data, log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.code), "COLLAB_LOG_LEVEL": "warning"}

    def check_code(self) -> None:
        """The server must run the code asked for, not whatever is installed."""
        found = subprocess.run([sys.executable, "-c", "import collab; print(collab.__file__)"],
                               capture_output=True, text=True, env=self.env(), cwd=self.code, check=True)
        if not Path(found.stdout.strip()).resolve().is_relative_to(self.code.resolve()):
            raise RuntimeError(f"collab imports from {found.stdout.strip()}, not {self.code}")

    def start(self) -> Server:
        self.check_code()
        command = [*pinned(0), sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--store", f"sqlite:///{self.data / 'collab.db'}"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=self.code, env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: see {self.log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/readiness_check", timeout=1):
                return self
            time.sleep(0.05)
        raise TimeoutError("the server did not become ready in 30 s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM (a graceful stop) and wait; SIGKILL past ``timeout``."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


class Client:
    """A y-websocket client with durable acks: collab.protocol framing, collab.crdt document."""

    def __init__(self, url: str) -> None:
        self.url = url + "/churn?acks=1"
        self.doc = crdt.Document()
        self.ws: Any = None
        self.synced = asyncio.Event()
        self.step2_bytes = 0
        self.acks = 0
        self.acked = asyncio.Event()
        self.on_change: Callable[[], None] | None = None
        self.on_ack: Callable[[dict[int, tuple[int, int]]], None] | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 120) -> Client:
        self.ws = await websockets.connect(self.url, max_size=None, open_timeout=timeout)
        await self.ws.send(protocol.encode_sync_step1(self.doc.state_vector()))
        self.reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self.synced.wait(), timeout)
        return self

    async def _read(self) -> None:
        async for frame in self.ws:
            message = protocol.decode_message(frame)
            if isinstance(message, protocol.SyncStep1):
                await self.ws.send(protocol.encode_sync_step2(self.doc.diff(message.state_vector)))
            elif isinstance(message, protocol.SyncStep2):
                self.step2_bytes = len(frame)
                self.doc.apply(message.update)
                self.synced.set()
            elif isinstance(message, protocol.SyncUpdate):
                if self.doc.apply(message.update) is not None:
                    if self.on_change is not None:
                        self.on_change()
                    continue
                # It changed nothing: the ack of one of ours (not that of an empty step 2).
                info = gate.inspect(message.update)
                if info.clocks or info.deletes_to:
                    self.acks += 1
                    if self.on_ack is not None:
                        self.on_ack(info.clocks)
                    self.acked.set()

    async def send(self, update: bytes | None) -> None:
        if update is not None:
            await self.ws.send(protocol.encode_sync_update(update))

    async def acked_up_to(self, count: int, timeout: float = 120) -> None:
        async def wait() -> None:
            while self.acks < count:
                self.acked.clear()
                await self.acked.wait()

        await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader


async def churn(server: Server, churn_bytes: int, result: Result) -> None:
    writer = await Client(server.url).start()
    editor = await Client(server.url).start()
    observer = await Client(server.url).start()
    sent = 0
    await writer.send(writer.doc.edit_text(0, BASE_TEXT))
    sent += 1
    await writer.acked_up_to(sent)
    await wait_text(observer, BASE_TEXT)
    await wait_text(editor, BASE_TEXT)
    # Probes: the editor replaces its first character (the document stays 40 characters long,
    # the editor's clock advances by one); the observer times the broadcast, the editor the ack.
    probe_sent: dict[int, float] = {}
    waiting_ack: dict[int, float] = {}
    latencies: list[float] = []
    saved: list[float] = []
    editor_id: int | None = None

    def observed() -> None:
        now = time.perf_counter()
        seen = observer.doc.clocks().get(editor_id, 0) if editor_id is not None else 0
        for clock in [c for c in probe_sent if c <= seen]:
            latencies.append(now - probe_sent.pop(clock))

    def acked(clocks: dict[int, tuple[int, int]]) -> None:
        now = time.perf_counter()
        end = clocks.get(editor_id, (0, 0))[1] if editor_id is not None else 0
        for clock in [c for c in waiting_ack if c <= end]:
            saved.append(now - waiting_ack.pop(clock))

    observer.on_change = observed
    editor.on_ack = acked

    async def probe() -> None:
        nonlocal editor_id
        while True:
            update = editor.doc.edit_text(0, "x", delete=1)
            if update is not None:
                [(editor_id, (_start, end))] = gate.inspect(update).clocks.items()
                probe_sent[end] = waiting_ack[end] = time.perf_counter()
                await editor.send(update)
            await asyncio.sleep(PROBE_INTERVAL)

    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kib(server.pid))
            await asyncio.sleep(0.2)

    probing = asyncio.create_task(probe())
    sampling = asyncio.create_task(sample())
    started = time.perf_counter()
    inserted = 0
    last_report = 0.0
    try:
        while inserted < churn_bytes:
            letter = chr(ord("a") + (inserted // CHUNK) % 26)
            await writer.send(writer.doc.edit_text(20, letter * CHUNK))
            await writer.send(writer.doc.edit_text(20, delete=CHUNK))
            sent += 2
            inserted += CHUNK
            await writer.acked_up_to(sent)
            if time.perf_counter() - last_report > 5:
                last_report = time.perf_counter()
                p95 = percentile(latencies, 95)
                progress(f"  [{result.version}] churned {inserted / 2**20:5.1f} / "
                         f"{churn_bytes / 2**20:.0f} MiB  edit p95 so far {p95:6.1f} ms  "
                         f"server RSS {rss_kib(server.pid) / 1024:6.1f} MiB")
    finally:
        probing.cancel()
        sampling.cancel()
        await asyncio.gather(probing, sampling, return_exceptions=True)
    result.churn_seconds = time.perf_counter() - started
    result.churned_mib = inserted / 2**20
    deadline = time.monotonic() + 60
    while waiting_ack and time.monotonic() < deadline:  # the last probes' acks
        await asyncio.sleep(0.01)
    await wait_text(observer, editor.doc.text())
    for client in (writer, editor, observer):
        await client.close()
    result.probes = len(latencies)
    result.latency_p50_ms = percentile(latencies, 50)
    result.latency_p95_ms = percentile(latencies, 95)
    result.latency_max_ms = max(latencies, default=0) * 1000
    result.saved_p95_ms = percentile(saved, 95)
    result.peak_rss_mib = peak / 1024


def percentile(seconds: list[float], which: int) -> float:
    """In milliseconds (0 without observations)."""
    if len(seconds) < 2:
        return max(seconds, default=0) * 1000
    return statistics.quantiles(seconds, n=100)[which - 1] * 1000


async def wait_text(client: Client, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.doc.text() != text:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the client has {len(client.doc.text())} characters, not {len(text)}")
        await asyncio.sleep(0.01)


async def load(server: Server, result: Result) -> str:
    with open(f"/proc/{server.pid}/clear_refs", "w") as refs:
        refs.write("5")  # the peak RSS starts again from now (Linux 4.0+)
    before = rss_kib(server.pid)
    client = await Client(server.url).start()
    result.sync_kib = client.step2_bytes / 1024
    result.load_mib = max(0, rss_kib(server.pid, "VmHWM") - before) / 1024
    text = client.doc.text()
    await client.close()
    return text


def measure(version: str, code: Path, churn_bytes: int, work: Path) -> Result:
    result = Result(version)
    data = work / f"{version}-data"
    data.mkdir(parents=True)
    log = work / f"{version}.log"
    progress(f"[{version}] churn: {churn_bytes / 2**20:.0f} MiB through a 40-character document ({code})")
    server = Server(code, data, log).start()
    try:
        asyncio.run(churn(server, churn_bytes, result))
    finally:
        code_at_stop = server.stop()
    if code_at_stop != 0:
        result.notes.append(f"graceful stop exited {code_at_stop}")
    result.data_mib = directory_bytes(data) / 2**20
    progress(f"[{version}] stopped; data directory {result.data_mib:.1f} MiB; loading it in a fresh server")
    fresh = Server(code, data, log).start()
    try:
        text = asyncio.run(load(fresh, result))
    finally:
        fresh.stop()
    if text != "x" + BASE_TEXT[1:]:
        result.notes.append(f"loaded text differs: {text[:60]!r}")
    progress(f"[{version}] done: {json.dumps(asdict(result))}")
    return result


@contextlib.contextmanager
def worktree(ref: str) -> Any:
    """A temporary checkout of ``ref`` (detached), removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="collab-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def table(results: list[Result]) -> str:
    rows = [("data directory after a graceful stop", "data_mib", "MiB", "< 24 MiB"),
            ("memory added by loading the document", "load_mib", "MiB", "< 64 MiB"),
            ("a new client's sync (step 2)", "sync_kib", "KiB", "< 1,024 KiB"),
            ("edit latency p95 during the churn", "latency_p95_ms", "ms", "< 250 ms"),
            ("edit latency p50", "latency_p50_ms", "ms", ""),
            ("edit latency max", "latency_max_ms", "ms", ""),
            ("saved (durable ack) latency p95", "saved_p95_ms", "ms", ""),
            ("server peak RSS during the churn", "peak_rss_mib", "MiB", ""),
            ("time to churn", "churn_seconds", "s", "")]
    versions = sorted({r.version for r in results}, key=lambda v: (v != "baseline", v))

    def median(version: str, key: str) -> float:
        return statistics.median(getattr(r, key) for r in results if r.version == version)

    head = ["metric", "target", *versions] + (["ratio"] if len(versions) == 2 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, unit, target in rows:
        values = [median(v, key) for v in versions]
        cells = [label, target, *(f"{value:,.1f} {unit}" for value in values)]
        if len(versions) == 2:
            cells.append(f"{values[1] / values[0]:.3f}x" if values[0] else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


MARK = "churn"


def section(results: list[Result], args: argparse.Namespace, meta: dict[str, str]) -> str:
    load = float(meta["load"].split(" / ")[0])
    lines = [f"<!-- {MARK}:start -->", "## Churn: a small document typed and deleted all day", ""]
    if load > 1.5:
        lines += [f"> **Shared machine.** Other work ran meanwhile (load average {meta['load']} on "
                  f"{meta['machine']}): the latencies measure the machine as much as the server; "
                  "sizes and memory are not affected.", ""]
    lines += [
        f"{args.churn_mib:g} MiB inserted and deleted again, {CHUNK // 1000} KB at a time, in a "
        "40-character document, one writer waiting for each durable ack; an editor replaces a "
        f"character every {PROBE_INTERVAL * 1000:g} ms and an observer times its arrival (edit "
        "latency). Then a graceful stop, and a fresh server loads the document for a new "
        "client. SQLite store, default settings; server on CPU 0, clients on CPU 1."
        + (f" The baseline is `{args.baseline}`, measured in the same run." if args.baseline else ""),
        "",
        f"Command: `python bench/churn.py --churn-mib {args.churn_mib:g}"
        f"{' --baseline ' + args.baseline if args.baseline else ''}"
        f"{' --repeats ' + str(args.repeats) if args.repeats != 1 else ''}`  ",
        f"Measured: {meta['date']} on {meta['machine']}; Python {meta['python']}; load average "
        f"at the end: {meta['load']}.", "", table(results), f"<!-- {MARK}:end -->"]
    return "\n".join(lines)


def write_section(output: Path, text: str) -> None:
    """Replace this script's section of ``output`` (or add it at the end)."""
    old = output.read_text() if output.is_file() else ""
    pattern = re.compile(rf"<!-- {MARK}:start -->.*?<!-- {MARK}:end -->", re.DOTALL)
    new = pattern.sub(lambda _match: text, old) if pattern.search(old) else (
        old.rstrip("\n") + "\n\n" + text + "\n")
    output.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--churn-mib", type=float, default=64.0, help="how much to insert (and delete)")
    parser.add_argument("--baseline", metavar="REF", help="a git ref to measure as well, e.g. main")
    parser.add_argument("--repeats", type=int, default=1, help="runs per version (order alternates)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the report its section is written into")
    parser.add_argument("--no-report", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    churn_bytes = int(args.churn_mib * 2**20)
    if pinned(1):
        os.sched_setaffinity(0, {1})
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="collab-churn-") as scratch, \
            (worktree(args.baseline) if args.baseline else contextlib.nullcontext()) as baseline:
        versions = [("this", ROOT)] + ([("baseline", Path(baseline))] if baseline else [])
        for repeat in range(args.repeats):
            for version, code in (versions if repeat % 2 else versions[::-1]):
                results.append(measure(version, code, churn_bytes, Path(scratch) / f"run{repeat}"))
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = args.results / f"churn-{stamp}.json"
    raw.write_text(json.dumps({"churn_mib": args.churn_mib, "baseline": args.baseline,
                               "results": [asdict(r) for r in results]}, indent=2))
    print(f"\n{args.churn_mib:g} MiB of churn, {CHUNK // 1000} KB at a time, through a 40-character "
          f"document ({args.repeats} run(s) per version; medians)\n")
    print(table(results))
    for r in results:
        for note in r.notes:
            print(f"\nnote ({r.version}): {note}")
    print(f"\nraw results: {raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw}")
    if not args.no_report:
        write_section(args.output, section(results, args, environment()))
        print(f"report: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
