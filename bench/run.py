"""Benchmark collab against the reference y-websocket server and pycrdt-websocket, side by side.

    python bench/run.py            # about 12 minutes: 3 repeats of every scenario
    python bench/run.py --quick    # about 2 minutes: 1 repeat, shorter loads

Each server runs pinned to CPU 0 (taskset), the load (this process, collab's load tester) to
CPU 1; every scenario gets a fresh server process and the order of the servers rotates from one
repeat to the next. Raw results go to bench/results/, medians and ratios to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collab.loadtest import run_loop, scenarios  # noqa: E402
from collab.loadtest.engine import Options  # noqa: E402
from collab.loadtest.scenarios import Load  # noqa: E402

SERVER_CPU, LOAD_CPU = 0, 1
CONTENTION_PERCENT = 20
NODE_DIR = ROOT / "bench" / "node"
NODE_SERVER = NODE_DIR / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"


@dataclass
class Profile:
    """Sizes of every scenario; ``--quick`` shrinks them."""

    repeats: int = 3
    fanout: Load = field(default_factory=lambda: Load(50, 5, 1, 10.0, 10.0, seed=1))
    ramp: Load = field(default_factory=lambda: Load(50, 5, 1, 20.0, 3.0, drain_timeout=3.0, seed=2))
    ramp_factor: float = 1.3
    ramp_steps: int = 10
    storm_clients: int = 50
    storm_doc: int = 200_000
    idle_rooms: int = 100
    idle_clients: int = 10
    large_doc: int = 1_000_000


QUICK = Profile(repeats=1, fanout=Load(50, 5, 1, 10.0, 4.0, seed=1),
                ramp=Load(50, 5, 1, 20.0, 1.5, drain_timeout=2.0, seed=2), ramp_factor=1.5, ramp_steps=8,
                idle_rooms=50)


@dataclass
class Server:
    """How to start one server under test."""

    name: str
    command: Callable[[int, Path], list[str]]
    path: str
    env: Callable[[int], dict[str, str]] = lambda port: {}
    client_deflate: bool = False
    reloads: bool = False
    """Keeps documents across a restart (has a store)."""


def _collab(extra: list[str]) -> Callable[[int, Path], list[str]]:
    def command(port: int, data: Path) -> list[str]:
        return [sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--store", f"sqlite:///{data / 'collab.db'}", "--log-level", "warning", *extra]
    return command


SERVERS = {
    "collab": Server("collab", _collab([]), "/ws", reloads=True),
    "node": Server("node", lambda port, data: ["node", str(NODE_SERVER)], "",
                   env=lambda port: {"HOST": "127.0.0.1", "PORT": str(port)}),
    "pycrdt": Server("pycrdt", lambda port, data: [sys.executable, str(ROOT / "bench" / "pycrdt_server.py"),
                                                   "--port", str(port)], ""),
    "collab-deflate": Server("collab-deflate", _collab(["--per-message-deflate", "true"]), "/ws",
                             client_deflate=True),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Running:
    """One server process pinned to the server CPU; stopped by its PID."""

    def __init__(self, server: Server, data: Path, log: Path) -> None:
        self.server, self.data = server, data
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.server.path}"

    def start(self) -> Running:
        cmd = ["taskset", "-c", str(SERVER_CPU), *self.server.command(self.port, self.data)]
        env = {**os.environ, **self.server.env(self.port)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.server.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    time.sleep(0.3)  # listening; let it finish starting before measuring it
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.server.name} did not listen within 30 s")

    def rss(self) -> int:
        assert self.process is not None
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def measured(running: Running, coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Run a load coroutine; add the server's CPU use and how busy the server's core was overall
    (more than the server itself means other processes on this machine got in the way)."""
    cpu0 = running.cpu_seconds()
    psutil.cpu_percent(percpu=True)
    start = time.perf_counter()
    result = run_loop(coro)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    cores = psutil.cpu_percent(percpu=True)
    result["server_cpu_percent"] = round(100 * (running.cpu_seconds() - cpu0) / wall, 1)
    result["server_core_busy_percent"] = cores[SERVER_CPU] if len(cores) > SERVER_CPU else None
    result["load_core_busy_percent"] = cores[LOAD_CPU] if len(cores) > LOAD_CPU else None
    return result


# --- scenarios --------------------------------------------------------------------------------


def fanout(running: Running, profile: Profile) -> dict[str, Any]:
    opts = Options(running.url, deflate=running.server.client_deflate)
    return measured(running, scenarios.fanout(opts, profile.fanout, progress=False))


def ramp(running: Running, profile: Profile) -> dict[str, Any]:
    opts = Options(running.url)
    return measured(running, scenarios.ramp(opts, profile.ramp, factor=profile.ramp_factor,
                                            steps=profile.ramp_steps, progress=False))


def join_storm(running: Running, profile: Profile) -> dict[str, Any]:
    opts = Options(running.url)
    return measured(running, scenarios.join_storm(opts, profile.storm_clients, profile.storm_doc))


def idle(running: Running, profile: Profile) -> dict[str, Any]:
    opts = Options(running.url, deflate=running.server.client_deflate)
    count = profile.idle_rooms * profile.idle_clients
    before: dict[str, int] = {}
    after: dict[str, int] = {}

    async def hold() -> None:
        await asyncio.sleep(1.0)
        after["rss"] = running.rss()

    async def scenario() -> dict[str, Any]:
        # one connection first, so rooms' fixed costs and lazy imports are not counted per client
        await scenarios.idle(opts, 1, 1)
        await asyncio.sleep(0.5)
        before["rss"] = running.rss()
        return await scenarios.idle(opts, profile.idle_rooms, profile.idle_clients, hold)

    result = measured(running, scenario())
    result["rss_before_mib"] = round(before["rss"] / 2**20, 1)
    result["rss_after_mib"] = round(after["rss"] / 2**20, 1)
    result["kib_per_connection"] = round((after["rss"] - before["rss"]) / count / 1024, 1)
    return result


def large_document(running: Running, profile: Profile) -> dict[str, Any]:
    """Sync a 1 MB text to a new client (three times, median); for a server with a store, also
    restart it and time the first client, which makes the server load the document first."""
    opts = Options(running.url, connect_timeout=60)
    room = f"large-{os.getpid()}-{time.monotonic_ns()}"

    async def warm() -> dict[str, Any]:
        seeded, keeper = await scenarios.seed_document(opts, room, profile.large_doc, timeout=120)
        try:
            syncs = [await scenarios.join(opts, room, 1) for _ in range(3)]
        finally:
            keeper.close()
        return {"seed_seconds": round(seeded, 3), "syncs": syncs}

    result = measured(running, warm())
    times = [s["all_synced_ms"] for s in result["syncs"] if s["synced"] == 1]
    result["document_lengths"] = sorted({n for s in result["syncs"] for n in s["document_lengths"]})
    result["ok"] = result["document_lengths"] == [profile.large_doc]
    result["sync_ms"] = statistics.median(times) if times else None
    result["load_and_sync_ms"] = None
    if running.server.reloads:
        running.stop()
        running.start()
        cold = run_loop(scenarios.join(opts, room, 1))
        result["load_and_sync_ms"] = cold["all_synced_ms"]
        result["ok"] = result["ok"] and cold["document_lengths"] == [profile.large_doc]
    del result["syncs"]
    return result


SCENARIOS: dict[str, tuple[Callable[[Running, Profile], dict[str, Any]], list[str]]] = {
    "fanout": (fanout, ["collab", "node", "pycrdt", "collab-deflate"]),
    "ramp": (ramp, ["collab", "node", "pycrdt"]),
    "join_storm": (join_storm, ["collab", "node", "pycrdt"]),
    "idle": (idle, ["collab", "node", "pycrdt", "collab-deflate"]),
    "large_document": (large_document, ["collab", "node", "pycrdt"]),
}


def run_all(profile: Profile, servers: list[str], chosen: list[str],
            results_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="collab-bench-") as tmp:
        for repeat in range(profile.repeats):
            for name in chosen:
                func, eligible = SCENARIOS[name]
                order = [s for s in servers if s in eligible]
                shift = repeat % max(1, len(order))
                for server_name in order[shift:] + order[:shift]:
                    data = Path(tmp) / f"{server_name}-{name}-{repeat}"
                    data.mkdir()
                    running = Running(SERVERS[server_name], data, results_dir / f"{server_name}.log").start()
                    print(f"[{repeat + 1}/{profile.repeats}] {name:<15} {server_name:<15}", end="",
                          file=sys.stderr, flush=True)
                    started = time.perf_counter()
                    try:
                        result = func(running, profile)
                    except Exception as exc:  # one failed run is reported, not fatal
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                    finally:
                        running.stop()
                    print(f" {time.perf_counter() - started:6.1f} s  {headline(name, result)}",
                          file=sys.stderr, flush=True)
                    rows.append({"repeat": repeat, "scenario": name, "server": server_name, **result})
    return rows


# --- report -----------------------------------------------------------------------------------

METRICS: list[tuple[str, str, str, Callable[[dict[str, Any]], float | None], bool]] = [
    # (scenario, label, unit, extractor, higher is better)
    ("ramp", "sustained capacity (p99 <= 100 ms, nothing lost)", "edits/s",
     lambda r: r.get("held_edit_rate"), True),
    ("ramp", "deliveries at that rate", "/s", lambda r: r.get("held_delivery_rate"), True),
    ("fanout", "fixed load: latency p50", "ms", lambda r: r.get("latency_ms", {}).get("p50"), False),
    ("fanout", "fixed load: latency p99", "ms", lambda r: r.get("latency_ms", {}).get("p99"), False),
    ("fanout", "fixed load: server CPU", "% of a core", lambda r: r.get("server_cpu_percent"), False),
    ("join_storm", "join storm: all clients synced", "ms", lambda r: r.get("all_synced_ms"), False),
    ("idle", "idle connections: server memory each", "KiB", lambda r: r.get("kib_per_connection"), False),
    ("large_document", "1 MB document: sync to a new client", "ms", lambda r: r.get("sync_ms"), False),
    ("large_document", "1 MB document: load from store + sync", "ms",
     lambda r: r.get("load_and_sync_ms"), False),
]


def headline(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    values = [f"{label.split(':')[-1].strip()} {fmt(get(r))} {unit}"
              for scenario, label, unit, get, _ in METRICS if scenario == name and get(r) is not None]
    return "; ".join(values)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def medians(rows: list[dict[str, Any]], scenario: str, server: str,
            get: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [v for r in rows if r["scenario"] == scenario and r["server"] == server
              and "error" not in r and (v := get(r)) is not None]
    return statistics.median(values) if values else None


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def markdown(rows: list[dict[str, Any]], profile: Profile, command: str, meta: dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "collab against the reference y-websocket server (`@y/websocket-server` 0.1.1 on Node.js) and",
        "pycrdt-websocket, measured by `collab loadtest` in one run with the same parameters. Every",
        "server runs on CPU 0 (`taskset -c 0`), the load tester on CPU 1; each scenario starts a fresh",
        "server process and the order of the servers rotates between repeats. collab runs with its",
        "SQLite store (every edit group-committed to disk) and every safety limit on; the other two",
        "keep documents in memory only. Durable acks go only to clients that ask for them (the",
        "editor does); the load tester, like a stock client, does not.",
        "",
        f"Command: `{command}`  ",
        f"Measured: {meta['date']} on {meta['machine']}; repeats: {profile.repeats}; "
        f"Python {meta['python']}, Node.js {meta['node']}.",
        "",
        "Medians over the repeats. Ratios are collab / other; for the first two rows higher is",
        "better, for all others lower is better.",
        "",
        "| metric | unit | collab | reference (Node) | pycrdt-websocket | collab / Node | collab / pycrdt |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, label, unit, get, _ in METRICS:
        c, n, p = (medians(rows, scenario, s, get) for s in ("collab", "node", "pycrdt"))
        lines.append(f"| {label} | {unit} | {fmt(c)} | {fmt(n)} | {fmt(p)} | {ratio(c, n)} | {ratio(c, p)} |")
    f, i = profile.fanout, profile
    lines += [
        "",
        "## Scenarios",
        "",
        f"- **fixed load**: {f.rooms} rooms x {f.clients} clients, {f.writers} writer per room at "
        f"{f.rate:g} edits/s each ({f.rooms * f.writers * f.rate:,.0f} edits/s, "
        f"{f.rooms * f.writers * f.rate * (f.clients - 1):,.0f} deliveries/s) for {f.duration:g} s; latency "
        "from the writer's send to each other client's receipt.",
        f"- **ramp**: the same rooms; the per-writer rate starts at {i.ramp.rate:g} edits/s and grows "
        f"x{i.ramp_factor:g} every {i.ramp.duration:g} s step until p99 > 100 ms or a delivery is lost.",
        f"- **join storm**: {i.storm_clients} clients connect at once to a {i.storm_doc:,}-character "
        "document and sync it (time until the last one has its sync step 2).",
        f"- **idle connections**: {i.idle_rooms * i.idle_clients:,} synced, silent connections "
        f"({i.idle_rooms} rooms x {i.idle_clients}); server RSS growth divided by the connections.",
        f"- **1 MB document**: a {i.large_doc:,}-character text; time for a new client to sync it from a "
        "running server, and (collab only: the others keep no store) after a restart, when the first "
        "client makes the server load it from SQLite.",
        "",
        "Run-to-run detail (every repeat, with the CPU use of the server and of both cores) is in",
        "the JSON file that each run writes to `bench/results/`.",
    ]
    lines += compression_section(rows)
    lines += loadtester_section(rows)
    lines.append(ABOUT)
    return "\n".join(lines) + "\n"


ABOUT = """
What each optimisation of collab bought, measured before and after: [performance.md](performance.md).

## The servers under test

- **collab**: `python -m collab serve --store sqlite:///... --log-level warning` (SQLite store,
  group commit, durable acks for clients that ask, uvloop and httptools as installed;
  per-message compression off).
- **Reference server**: `@y/websocket-server` 0.1.1 from npm (`bench/node/package.json` and its
  lock), started as `HOST=127.0.0.1 PORT=... node bench/node/node_modules/@y/websocket-server/src/server.js`
  with no persistence. It is the classic reference server (the same code as `bin/server.js` of
  `y-websocket` 1.5.x, moved into its own package). The newest release, 0.1.5, depends on a
  prerelease `yjs` 14 and on `@y/protocols`, and is not the server the ecosystem runs today;
  0.1.1 is the newest release that installs with `yjs` 13.
- **pycrdt-websocket**: the version installed in the project's environment, served by uvicorn
  through `bench/pycrdt_server.py` (its `ASGIServer`, documents in memory).

## How the load is measured

`collab loadtest` speaks the y-websocket protocol with its own small WebSocket client (frames
parsed straight from `data_received`, no future per message) on uvloop, so that one core of
Python can keep several servers busy. Every edit inserts a marker `[writer:seq]` at the writer's
cursor; receivers find the markers in the raw update bytes, so the latency of each delivery is
exact, duplicates and gaps are counted, and an update a server merges or re-encodes still
counts once per marker. collab's durable acks (the writer's own update echoed back after
commit, with `collab loadtest --acks`) are counted apart, never as deliveries; the benchmark
does not ask for them. At the end every client's document (the union
of what it received) is compared with what a freshly syncing client gets from the server.
The load tester reports its own CPU use and stops a ramp that saturates it.
"""


def load_rows(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text()))


def compression_section(rows: list[dict[str, Any]]) -> list[str]:
    def get_p(key: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: r.get("latency_ms", {}).get(key)

    table = [
        ("fixed load: latency p50 (ms)", "fanout", get_p("p50")),
        ("fixed load: latency p99 (ms)", "fanout", get_p("p99")),
        ("fixed load: server CPU (% of a core)", "fanout", lambda r: r.get("server_cpu_percent")),
        ("idle connections: KiB each", "idle", lambda r: r.get("kib_per_connection")),
    ]
    lines = [
        "",
        "## Per-message compression",
        "",
        "The same fixed load and idle connections against collab with permessage-deflate off (the",
        "default) and on (`--per-message-deflate true`, clients offering it as browsers do).",
        "",
        "| metric | off | on | on / off |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, scenario, get in table:
        off, on = medians(rows, scenario, "collab", get), medians(rows, scenario, "collab-deflate", get)
        lines.append(f"| {label} | {fmt(off)} | {fmt(on)} | {ratio(on, off)} |")
    lines += [
        "",
        "Decision: **off by default** (`--per-message-deflate false`). A typed character is a Yjs",
        "update of a few dozen bytes that deflate barely shrinks, while each compressed connection",
        "keeps zlib state on the server (the memory per idle connection above) and every message",
        "costs compression CPU. Turn it on only where bandwidth is dearer than server memory.",
    ]
    return lines


def loadtester_section(rows: list[dict[str, Any]]) -> list[str]:
    limited = [r for r in rows if r["scenario"] == "ramp" and r.get("limited_by_loadtester")]
    reasons = sorted({f"{r['server']}: {r.get('stop_reason')}" for r in rows if r["scenario"] == "ramp"})
    failed = [f"{r['scenario']}/{r['server']}" for r in rows
              if "error" in r or r.get("ok") is False or r.get("converged") is False]
    busy = [r for r in rows if isinstance(r.get("server_core_busy_percent"), (int, float))
            and isinstance(r.get("server_cpu_percent"), (int, float))
            and r["server_core_busy_percent"] - r["server_cpu_percent"] > CONTENTION_PERCENT]
    lines = ["", "## Limits of this measurement", "",
             f"- Ramp stop reasons: {'; '.join(reasons) or '-'}.",
             f"- Ramps that stopped because the load tester itself saturated: {len(limited)}. Such a "
             "ramp gives a lower bound for that server, not its capacity. The reference server also "
             "sends every update back to its own writer, so against it the load tester reads a "
             "quarter more messages per edit and saturates at a lower rate.",
             f"- Runs with an error, a lost sync or a diverged document: {', '.join(failed) or 'none'}."]
    if busy:
        lines.append(f"- **Contended machine**: in {len(busy)} of {len(rows)} runs, other processes used "
                     "more "
                     f"than {CONTENTION_PERCENT}% of the server's core beside the server itself, so "
                     "latencies and capacities are lower than on an idle machine; compare the servers "
                     "by their ratios, and rerun on an idle machine for absolute numbers.")
    return lines


def environment() -> dict[str, str]:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "node": node,
            "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short repeat (about 2 minutes)")
    parser.add_argument("--repeats", type=int, help="override the number of repeats")
    parser.add_argument("--servers", default="collab,node,pycrdt,collab-deflate")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--merge", metavar="RESULTS_JSON",
                        help="keep an earlier run's results for the scenarios not run now")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="only rewrite the report from an earlier run's results")
    args = parser.parse_args()
    profile = QUICK if args.quick else Profile()
    if args.repeats:
        profile.repeats = args.repeats
    if args.render:
        rows = load_rows(Path(args.render))
        profile.repeats = 1 + max((r["repeat"] for r in rows), default=0)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(markdown(rows, profile, "python bench/run.py" + (
            " --quick" if args.quick else ""), environment()))
        return 0
    if "node" in args.servers and not NODE_SERVER.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("bench: needs taskset and at least 2 CPUs", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CPU})
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    chosen = args.scenarios.split(",")
    rows = run_all(profile, args.servers.split(","), chosen, results_dir)
    if args.merge:
        rows = [r for r in load_rows(Path(args.merge)) if r["scenario"] not in chosen] + rows
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results_dir / f"{stamp}.json").write_text(json.dumps(rows, indent=1))
    command = "python bench/run.py" + (" --quick" if args.quick else "")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(markdown(rows, profile, command, environment()))
    print(f"wrote {args.output} and bench/results/{stamp}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
