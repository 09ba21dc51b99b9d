"""Store faults with six people typing: how many acknowledged and accepted edits the store lacks
once the fault is over, the clients have left and the rooms were evicted.

    python bench/durability.py                      # both scenarios, this checkout
    python bench/durability.py --baseline REV       # and the same against an older commit
    python bench/durability.py --quick              # shorter faults

1. Disk full: one instance, SQLite on a small tmpfs (needs root to mount it) that is filled to
   its last byte for ``--fault`` seconds, then freed.
2. Database outage: two instances behind Redis on a throwaway PostgreSQL database, which refuses
   connections (``ALLOW_CONNECTIONS false`` and its sessions terminated) for ``--outage``
   seconds, then allows them again.

Six typists (three per instance in the second) type one character at a time at random places
of one document, with durable acks, before, during and after the fault. Then they stop, wait
for their acks (bounded), leave; the rooms are evicted, the servers get SIGTERM, and the store
is read back. An edit is *acknowledged* when the server echoed it as stored, *accepted* when it
was typed while connected (every edit is: the clients resend on reconnect). *Missing* counts
the edits of each typist that the stored document does not hold. Readiness is sampled during
the fault. With ``--baseline`` the same scenarios run against a ``git worktree`` of that
commit, on the same machine, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collab import crdt, gate, protocol  # noqa: E402
from collab.store import open_store  # noqa: E402
from tests.faults import allow_connections, fill, refuse_connections  # noqa: E402
from tests.pyclient import PyClient  # noqa: E402
from tests.services import POSTGRES_URL, PrivateRedis, free_port, with_database  # noqa: E402

DOCUMENT = "typed"
TYPISTS = 6


def progress(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Server:
    """``collab serve`` from a given checkout (this one, or the baseline's)."""

    def __init__(self, root: Path, store: str, log: Path, args: list[str]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "COLLAB_LOG_LEVEL": "warning", "PYTHONPATH": str(root)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1", "--port",
             str(self.port), "--store", store, "--room-idle", "0.5", *args],
            cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while status(self.url + "/readiness_check") != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)
    except OSError:
        return 0


def ws_url(server: Server) -> str:
    return server.url.replace("http", "ws", 1) + "/ws"


def rooms_live(server: Server) -> float:
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("collab_rooms "):
                    return float(line.split()[1])
    except OSError:
        pass
    return -1


class Typist:
    """One person typing; knows which of its edits were acknowledged."""

    def __init__(self, client: PyClient, seed: int) -> None:
        self.client = client
        self.random = random.Random(seed)
        self.own: int | None = None

    async def type_for(self, seconds: float, stop: asyncio.Event | None = None) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline and not (stop and stop.is_set()):
            before = set(self.client.doc.clocks())
            text = self.client.text()
            await self.client.insert(self.random.choice("abcdefghij "), self.random.randint(0, len(text)))
            if self.own is None:
                self.own = next(iter(set(self.client.doc.clocks()) - before))
            await asyncio.sleep(self.random.uniform(0.05, 0.15))

    @property
    def typed(self) -> int:
        return self.client.doc.clocks().get(self.own, 0) if self.own is not None else 0

    def acked(self) -> set[int]:
        """The clocks of its edits that the server acknowledged as stored."""
        clocks: set[int] = set()
        for message in self.client.received:
            if isinstance(message, protocol.SyncUpdate):
                ranges = gate.inspect(message.update).clocks
                if self.own in ranges:
                    start, end = ranges[self.own]
                    clocks.update(range(start, end))
        return clocks


@dataclass
class Outcome:
    scenario: str
    code: str
    typed: int = 0
    acknowledged: int = 0
    acked_missing: int = 0
    accepted_missing: int = 0
    readiness: set[int] = field(default_factory=set)
    exit_codes: list[int] = field(default_factory=list)
    real_error_lines: int = 0
    rollback_lines: int = 0

    def row(self) -> str:
        ready = "/".join(str(s) for s in sorted(self.readiness)) or "-"
        return (f"| {self.scenario} | {self.code} | {self.typed} | {self.acknowledged} | "
                f"{self.acked_missing} | {self.accepted_missing} | {ready} | "
                f"{','.join(map(str, self.exit_codes))} | {self.real_error_lines} | {self.rollback_lines} |")


async def type_through(typists: list[Typist], servers: list[Server], before: float, fault: float,
                       after: float, start_fault: object, end_fault: object) -> set[int]:
    """Type before, during and after the fault; returns the readiness statuses seen during it."""
    seen: set[int] = set()
    progress(f"typing {before:g} s before the fault")
    await asyncio.gather(*(t.type_for(before) for t in typists))
    progress(f"fault for {fault:g} s, still typing")
    await asyncio.to_thread(start_fault)  # type: ignore[arg-type]
    try:
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                for server in servers:
                    seen.add(await asyncio.to_thread(status, server.url + "/readiness_check"))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(t.type_for(fault) for t in typists))
        stop.set()
        await sampler
    finally:
        await asyncio.to_thread(end_fault)  # type: ignore[arg-type]
    progress(f"fault over; typing {after:g} s more")
    await asyncio.gather(*(t.type_for(after) for t in typists))
    return seen


async def settle_and_leave(typists: list[Typist], servers: list[Server]) -> None:
    progress("waiting (at most 30 s) for the acks, then leaving")
    deadline = asyncio.get_running_loop().time() + 30
    while any(len(t.acked()) < t.typed for t in typists) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    for typist in typists:
        await typist.client.close()
    deadline = asyncio.get_running_loop().time() + 60
    while any(rooms_live(s) != 0 for s in servers) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    progress("rooms evicted; stopping the servers")


async def count_missing(outcome: Outcome, typists: list[Typist], store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    try:
        stored = crdt.document_from((await store.load(DOCUMENT)).updates).clocks()
    finally:
        await store.close()
    for typist in typists:
        have = stored.get(typist.own, 0) if typist.own is not None else 0
        acked = typist.acked()
        outcome.typed += typist.typed
        outcome.acknowledged += len(acked)
        outcome.acked_missing += sum(1 for clock in acked if clock >= have)
        outcome.accepted_missing += max(0, typist.typed - have)


def count_log(outcome: Outcome, servers: list[Server], error: str) -> None:
    for server in servers:
        lines = server.log().splitlines()
        outcome.real_error_lines += sum(1 for line in lines if "collab.store" in line and error in line)
        outcome.rollback_lines += sum(1 for line in lines if "cannot rollback" in line)


async def disk_full(root: Path, code: str, phases: tuple[float, float, float]) -> Outcome:
    outcome = Outcome("disk full", code)
    work = Path(tempfile.mkdtemp(prefix="collab-durability-"))
    disk = work / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], check=True)
    server: Server | None = None
    try:
        store = f"sqlite:///{disk / 'collab.db'}"
        server = Server(root, store, work / "server.log", [])
        typists = [Typist(await PyClient(ws_url(server), DOCUMENT).start(), i) for i in range(TYPISTS)]
        filler: list[Path] = []
        outcome.readiness = await type_through(
            typists, [server], *phases, lambda: filler.append(fill(disk)),
            lambda: [f.unlink() for f in filler])
        await settle_and_leave(typists, [server])
        outcome.exit_codes.append(server.terminate())
        count_log(outcome, [server], "database or disk is full")
        await count_missing(outcome, typists, store)
        return outcome
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
        shutil.rmtree(work, ignore_errors=True)


async def database_outage(root: Path, code: str, phases: tuple[float, float, float]) -> Outcome:
    import asyncpg

    outcome = Outcome("database outage", code)
    work = Path(tempfile.mkdtemp(prefix="collab-durability-"))
    name = f"collab_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database = with_database(POSTGRES_URL, name)
    redis = PrivateRedis()
    servers: list[Server] = []
    try:
        redis.start()
        for i in range(2):
            servers.append(Server(root, database, work / f"server-{i}.log", ["--redis", redis.url]))
        typists = [Typist(await PyClient(ws_url(servers[i % 2]), DOCUMENT).start(), i)
                   for i in range(TYPISTS)]
        outcome.readiness = await type_through(
            typists, servers, *phases,
            lambda: asyncio.run(refuse_connections(POSTGRES_URL, name)),
            lambda: asyncio.run(allow_connections(POSTGRES_URL, name)))
        await settle_and_leave(typists, servers)
        outcome.exit_codes.extend(server.terminate() for server in servers)
        count_log(outcome, servers, "not currently accepting connections")
        await count_missing(outcome, typists, database)
        return outcome
    finally:
        for server in servers:
            server.stop()
        redis.cleanup()
        with contextlib.suppress(Exception):
            admin = await asyncpg.connect(POSTGRES_URL)
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A detached worktree of ``rev``, removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="collab-baseline-")) / "src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       check=False, capture_output=True)
        shutil.rmtree(where.parent, ignore_errors=True)


async def run(roots: list[tuple[str, Path]], args: argparse.Namespace) -> list[Outcome]:
    outcomes = []
    quick = args.quick
    for code, root in roots:
        if os.geteuid() == 0 and shutil.which("mount"):
            progress(f"disk full, {code}")
            fault = args.fault or (4.0 if quick else 8.0)
            outcomes.append(await disk_full(root, code, (2.0, fault, 2.0)))
        else:
            progress("disk full skipped: mounting a small tmpfs needs root")
        progress(f"database outage, {code}")
        outage = args.outage or (6.0 if quick else 12.0)
        outcomes.append(await database_outage(root, code, (2.0, outage, 2.0)))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter faults")
    parser.add_argument("--fault", type=float, help="seconds the disk stays full (default 8)")
    parser.add_argument("--outage", type=float, help="seconds the database refuses (default 12)")
    parser.add_argument("--baseline", metavar="REV", help="also run these against this commit")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        roots = [("this checkout", ROOT)]
        if args.baseline:
            roots.insert(0, (f"baseline {args.baseline}", stack.enter_context(checkout(args.baseline))))
        outcomes = asyncio.run(run(roots, args))
    print(f"Six typists, one document; missing = edits the store lacks after the clients left and the "
          f"rooms were evicted (machine: {os.cpu_count()} cores, shared).\n")
    print("| scenario | code | typed (accepted) | acknowledged | acknowledged missing | accepted "
          "missing | readiness during the fault | exit on SIGTERM | store's lines with the real error | "
          "'cannot rollback' in the log |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for outcome in outcomes:
        print(outcome.row())


if __name__ == "__main__":
    main()
