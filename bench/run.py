"""Benchmark collab against the reference y-websocket server and pycrdt-websocket, side by side.

    python bench/run.py                        # every scenario, 3 repeats (about 50 minutes)
    python bench/run.py --quick                # 1 repeat, shorter loads (about 13 minutes)
    python bench/run.py --scenarios fixed_500,presence --servers collab,node --repeats 5

The load comes from bench/loadgen (stock Yjs clients on Node.js: yjs, y-protocols, ws), a
generator independent of every server under test. Each server runs pinned to CPU 0 (taskset),
the generator to CPU 1; every scenario gets a fresh server process and the order of the
servers rotates from one repeat to the next. The generator measures its own CPU and the
server's (from /proc, over the measured window only), so that a row whose generator was the
limit says so. Raw results go to bench/results/, medians and ratios to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_CPU, LOAD_CPU = 0, 1
NODE_DIR = ROOT / "bench" / "node"
NODE_SERVER = NODE_DIR / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
LOADGEN_DIR = ROOT / "bench" / "loadgen"
LOADGEN = LOADGEN_DIR / "loadgen.mjs"
GENERATOR_BOUND_PERCENT = 80
CONTENDED_PERCENT = 20


@dataclass
class Profile:
    """Sizes of every scenario; ``--quick`` and ``--smoke`` shrink them."""

    repeats: int = 3
    rooms: int = 50
    clients: int = 5
    fixed_rates: tuple[int, ...] = (500, 2000)
    duration: float = 10.0
    warmup: float = 2.0
    ramp_start: float = 20.0
    ramp_factor: float = 1.3
    ramp_step: float = 3.0
    ramp_steps: int = 14
    ramp_refine: int = 2
    big_room_observers: tuple[int, ...] = (500, 1000)
    big_room_rate: float = 20.0
    presence_clients: int = 200
    presence_rate: float = 2.0
    many_docs: int = 2000
    many_docs_size: int = 2000
    many_docs_concurrency: int = 500
    idle_rooms: int = 200
    idle_clients: int = 10
    idle_hold: float = 3.0
    storm_clients: int = 50
    storm_doc: int = 200_000
    storm_repeat: int = 3
    large_doc: int = 1_000_000


QUICK = Profile(repeats=1, duration=4.0, warmup=1.0, ramp_start=10.0, ramp_factor=1.5, ramp_step=2.0,
                ramp_steps=10, ramp_refine=1)
SMOKE = Profile(repeats=1, rooms=2, clients=3, fixed_rates=(20,), duration=1.0, warmup=0.2, ramp_start=5.0,
                ramp_factor=2.0, ramp_step=0.5, ramp_steps=2, ramp_refine=0, big_room_observers=(5,),
                presence_clients=5, many_docs=10, many_docs_concurrency=10, idle_rooms=2, idle_clients=2,
                idle_hold=0.5, storm_clients=3, storm_doc=2000, storm_repeat=1, large_doc=20_000)


@dataclass
class Server:
    """How to start one server under test."""

    name: str
    command: Callable[[int, Path], list[str]]
    path: str
    env: Callable[[Path], dict[str, str]] = lambda data: {}
    client_deflate: bool = False
    stores: bool = False
    """Keeps documents across a restart (has a store)."""


COLLAB_LIMITS = ["--max-connections-per-address", "100000", "--max-connections-per-document", "2000"]
"""Every client of the benchmark comes from 127.0.0.1 (the default allows 1,000 connections per
address) and the big room holds 1,001 (the default per document is 1,000); every other limit
keeps its default."""


def _collab(extra: list[str]) -> Callable[[int, Path], list[str]]:
    def command(port: int, data: Path) -> list[str]:
        return [sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--store", f"sqlite:///{data / 'collab.db'}", "--log-level", "warning", *COLLAB_LIMITS,
                *extra]
    return command


def _node(port: int, data: Path) -> list[str]:
    return ["node", str(NODE_SERVER)]


SERVERS = {
    "collab": Server("collab", _collab([]), "/ws", stores=True),
    "node": Server("node", _node, ""),
    "pycrdt": Server("pycrdt", lambda port, data: [sys.executable, str(ROOT / "bench" / "pycrdt_server.py"),
                                                   "--port", str(port)], ""),
    "collab-deflate": Server("collab-deflate", _collab(["--per-message-deflate", "true"]), "/ws",
                             client_deflate=True),
    "node-leveldb": Server("node-leveldb", _node, "", stores=True,
                           env=lambda data: {"YPERSISTENCE": str(data / "leveldb")}),
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

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Running:
        # taskset execs the server, so the PID is the server's own (the generator reads its CPU)
        cmd = ["taskset", "-c", str(SERVER_CPU), *self.server.command(self.port, self.data)]
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **self.server.env(self.data)}
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

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def generate(running: Running | list[Running], scenario: str, timeout: float = 900,
             **params: Any) -> dict[str, Any]:
    """Run one generator scenario against ``running`` (one server, or several processes of one:
    the generator spreads its clients over them and sums their CPU) on the generator's CPU; its
    JSON report."""
    servers = running if isinstance(running, list) else [running]
    cmd = ["taskset", "-c", str(LOAD_CPU), "node", str(LOADGEN), scenario,
           "--url", ",".join(s.url for s in servers), "--server-pid", ",".join(str(s.pid) for s in servers),
           "--clock-ticks", str(os.sysconf("SC_CLK_TCK")),
           "--server-core", str(SERVER_CPU), "--generator-core", str(LOAD_CPU)]
    if servers[0].server.client_deflate:
        cmd.append("--deflate")
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is not False and value is not None:
            cmd += [flag, str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"generator exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- scenarios --------------------------------------------------------------------------------


def fixed(rate: int) -> Callable[[Running, Profile], dict[str, Any]]:
    def scenario(running: Running, p: Profile) -> dict[str, Any]:
        return generate(running, "fanout", rooms=p.rooms, clients=p.clients, writers=1, rate=rate / p.rooms,
                        duration=p.duration, warmup=p.warmup)
    return scenario


def ramp(running: Running, p: Profile) -> dict[str, Any]:
    result = generate(running, "ramp", rooms=p.rooms, clients=p.clients, writers=1, rate=p.ramp_start,
                      factor=p.ramp_factor, duration=p.ramp_step, steps=p.ramp_steps, refine=p.ramp_refine,
                      warmup=p.warmup, drain_timeout=3)
    result["generator_bound"] = result["limited_by"] == "generator"
    if not result["held_edit_rate"] and result["steps"]:
        # not even the first step held: its rate is an upper bound, not a capacity of 0
        result["held_below"] = result["steps"][0]["edit_rate"]
        for key in ("held_edit_rate", "held_delivery_rate", "held_message_rate"):
            result[key] = None
    return result


def big_room(observers: int) -> Callable[[Running, Profile], dict[str, Any]]:
    def scenario(running: Running, p: Profile) -> dict[str, Any]:
        return generate(running, "fanout", rooms=1, clients=observers + 1, writers=1, rate=p.big_room_rate,
                        duration=p.duration, warmup=p.warmup)
    return scenario


def presence(running: Running, p: Profile) -> dict[str, Any]:
    return generate(running, "presence", clients=p.presence_clients, rate=p.presence_rate,
                    duration=p.duration)


def many_docs(running: Running, p: Profile) -> dict[str, Any]:
    """Seed the documents, restart the server so that each must come from its store, then open
    them all at once."""
    room = f"many-{time.monotonic_ns()}"
    seeded = generate(running, "seed-docs", docs=p.many_docs, size=p.many_docs_size, room=room,
                      connect_concurrency=64)
    time.sleep(1.0)  # stores that write behind (y-leveldb) finish before the restart
    running.restart()
    result = generate(running, "open-docs", docs=p.many_docs, size=p.many_docs_size, room=room,
                      connect_concurrency=p.many_docs_concurrency, connect_timeout=60)
    result["seed_seconds"] = seeded["seconds"]
    result["seed_failed"] = seeded["failed"]
    return result


def idle(running: Running, p: Profile) -> dict[str, Any]:
    result = generate(running, "idle", rooms=p.idle_rooms, clients=p.idle_clients, duration=p.idle_hold)
    result["ok"] = result["failed"] == 0 and result["errors_while_idle"] == 0
    return result


def join_storm(running: Running, p: Profile) -> dict[str, Any]:
    return generate(running, "join", clients=p.storm_clients, size=p.storm_doc, repeat=p.storm_repeat)


def large_document(running: Running, p: Profile) -> dict[str, Any]:
    """Sync a large text to a new client (three times, median); for a server with a store, also
    restart it and time the first client, which makes the server load the document first."""
    room = f"large-{time.monotonic_ns()}"
    result = generate(running, "join", clients=1, size=p.large_doc, repeat=3, room=room, connect_timeout=60)
    result["sync_ms"] = result["all_synced_ms"]
    result["load_and_sync_ms"] = None
    if running.server.stores:
        running.restart()
        cold = generate(running, "join", clients=1, size=p.large_doc, room=room, no_seed=True,
                        connect_timeout=60)
        result["load_and_sync_ms"] = cold["all_synced_ms"]
        result["ok"] = result["ok"] and cold["ok"]
    return result


@dataclass
class Scenario:
    name: str
    run: Callable[[Running, Profile], dict[str, Any]]
    servers: list[str]
    reference: str = "node"


def scenarios(p: Profile) -> dict[str, Scenario]:
    three = ["collab", "node", "pycrdt"]
    made = [Scenario(f"fixed_{rate}", fixed(rate), three + (["collab-deflate"] if i == 0 else []))
            for i, rate in enumerate(p.fixed_rates)]
    made.append(Scenario("ramp", ramp, three))
    made += [Scenario(f"big_room_{n}", big_room(n), three) for n in p.big_room_observers]
    made += [
        Scenario("presence", presence, three),
        Scenario("many_docs", many_docs, ["collab", "node-leveldb"], reference="node-leveldb"),
        Scenario("idle", idle, [*three, "collab-deflate"]),
        Scenario("join_storm", join_storm, three),
        Scenario("large_document", large_document, three),
    ]
    return {s.name: s for s in made}


Rows = list[dict[str, Any]]


def run_all(profile: Profile, servers: list[str], chosen: list[str], results_dir: Path,
            rows: Rows | None = None, save: Callable[[Rows], None] | None = None,
            meta: dict[str, str] | None = None) -> Rows:
    """Every scenario on every server, ``profile.repeats`` times; each row keeps ``meta`` (the
    environment of the run) so that a report rendered later says when and where it was taken."""
    rows = [] if rows is None else rows
    table = scenarios(profile)
    with tempfile.TemporaryDirectory(prefix="collab-bench-") as tmp:
        for repeat in range(profile.repeats):
            for name in chosen:
                scenario = table[name]
                order = [s for s in scenario.servers if s in servers]
                shift = repeat % max(1, len(order))
                for server_name in order[shift:] + order[:shift]:
                    data = Path(tmp) / f"{server_name}-{name}-{repeat}"
                    data.mkdir()
                    print(f"[{repeat + 1}/{profile.repeats}] {name:<15} {server_name:<15}", end="",
                          file=sys.stderr, flush=True)
                    started = time.perf_counter()
                    running = Running(SERVERS[server_name], data, results_dir / f"{server_name}.log")
                    try:
                        result = scenario.run(running.start(), profile)
                    except Exception as exc:  # one failed run is reported, not fatal
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                    finally:
                        running.stop()
                    print(f" {time.perf_counter() - started:6.1f} s  {headline(profile, name, result)}",
                          file=sys.stderr, flush=True)
                    result["generator_scenario"] = result.pop("scenario", None)
                    rows.append({**result, "repeat": repeat, "scenario": name, "server": server_name,
                                 "environment": meta})
                    if save is not None:
                        save(rows)
    return rows


# --- report -----------------------------------------------------------------------------------


@dataclass
class Metric:
    scenario: str
    label: str
    unit: str
    get: Callable[[dict[str, Any]], float | None]
    higher_is_better: bool = False
    bound_applies: bool = True
    """Whether a generator-bound run makes this figure a bound (for rates: a lower bound)."""


def _latency(key: str, field_name: str = "latency_ms") -> Callable[[dict[str, Any]], float | None]:
    return lambda r: (r.get(field_name) or {}).get(key)


def _get(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: r.get(key)


def _cpu_per_delivery(r: dict[str, Any]) -> float | None:
    """Server CPU per update delivered to another client (echoes to the writer not counted)."""
    seconds, deliveries = r.get("server_cpu_seconds"), r.get("deliveries")
    return seconds * 1e6 / deliveries if seconds is not None and deliveries else None


def metrics(p: Profile) -> list[Metric]:
    made = [
        Metric("ramp", "sustained edits (p99 <= 100 ms, nothing lost)", "edits/s",
               _get("held_edit_rate"), True),
        Metric("ramp", "deliveries at that rate (to other clients)", "/s",
               _get("held_delivery_rate"), True),
        Metric("ramp", "messages sent by the server at that rate (echoes included)", "/s",
               _get("held_message_rate"), True),
    ]
    for rate in p.fixed_rates:
        s = f"fixed_{rate}"
        made += [
            Metric(s, f"fixed {rate:,} edits/s: latency p50", "ms", _latency("p50")),
            Metric(s, f"fixed {rate:,} edits/s: latency p99", "ms", _latency("p99")),
            Metric(s, f"fixed {rate:,} edits/s: server CPU", "% of a core", _get("server_cpu_percent")),
            Metric(s, f"fixed {rate:,} edits/s: server CPU per edit", "µs", _get("server_cpu_us_per_edit")),
            Metric(s, f"fixed {rate:,} edits/s: server CPU per delivery", "µs", _cpu_per_delivery),
            Metric(s, f"fixed {rate:,} edits/s: server CPU per message sent", "µs",
                   _get("server_cpu_us_per_message")),
            Metric(s, f"fixed {rate:,} edits/s: generator CPU", "% of a core", _get("generator_cpu_percent"),
                   bound_applies=False),
        ]
    for n in p.big_room_observers:
        s = f"big_room_{n}"
        made += [
            Metric(s, f"big room, {n:,} observers: latency p50", "ms", _latency("p50")),
            Metric(s, f"big room, {n:,} observers: latency p99", "ms", _latency("p99")),
            Metric(s, f"big room, {n:,} observers: server CPU", "% of a core", _get("server_cpu_percent")),
            Metric(s, f"big room, {n:,} observers: server CPU per delivery", "µs", _cpu_per_delivery),
        ]
    made += [
        Metric("presence", f"presence storm ({p.presence_clients} clients): server CPU", "% of a core",
               _get("server_cpu_percent")),
        Metric("presence", "presence storm: server CPU per message sent", "µs",
               _get("server_cpu_us_per_message")),
        Metric("presence", "presence storm: latency p99", "ms", _latency("p99")),
        Metric("many_docs", f"many documents ({p.many_docs:,}): connections", "/s",
               _get("connections_per_second"), True),
        Metric("many_docs", "many documents: sync p99", "ms", _latency("p99", "sync_ms")),
        Metric("idle", f"idle connections ({p.idle_rooms * p.idle_clients:,}): server memory each", "KiB",
               _get("kib_per_connection"), bound_applies=False),
        Metric("join_storm", f"join storm ({p.storm_clients} clients): all synced", "ms",
               _get("all_synced_ms")),
        Metric("large_document", f"{p.large_doc / 1e6:g} MB document: sync to a new client", "ms",
               _get("sync_ms")),
        Metric("large_document", f"{p.large_doc / 1e6:g} MB document: load from store + sync", "ms",
               _get("load_and_sync_ms")),
    ]
    return made


def headline(profile: Profile, name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    parts = [f"{m.label.split(':')[-1].strip()} {fmt(m.get(r))} {m.unit}"
             for m in metrics(profile) if m.scenario == name and m.get(r) is not None]
    if "generator_cpu_percent" in r:
        parts.append(f"generator {fmt(r['generator_cpu_percent'])} %")
    return "; ".join(parts)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def runs(rows: list[dict[str, Any]], scenario: str, server: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["scenario"] == scenario and r["server"] == server and "error" not in r]


def median(rows: list[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> float | None:
    values = [v for r in rows if (v := get(r)) is not None]
    return statistics.median(values) if values else None


def contended(r: dict[str, Any]) -> bool:
    """Whether other processes took a share of a measured core beside the measured processes, in
    this run or in any window of it."""
    if r.get("contended"):
        return True
    for window in [r, *r.get("storms", []), *r.get("steps", [])]:
        for who in ("server", "generator"):
            busy, own = window.get(f"{who}_core_busy_percent"), window.get(f"{who}_cpu_percent")
            numbers = isinstance(busy, (int, float)) and isinstance(own, (int, float))
            if numbers and busy - own > CONTENDED_PERCENT:
                return True
    return False


def cell(rows: list[dict[str, Any]], metric: Metric) -> str:
    """The median, marked † when the generator was the limit in a run, ‡ when the machine was."""
    value = median(rows, metric.get)
    text = fmt(value)
    if value is None:
        below = median(rows, lambda r: r.get("held_below")) if metric.unit == "edits/s" else None
        if below is None:
            return text
        text = f"< {fmt(below)} (the first step failed)"
    elif metric.bound_applies and any(r.get("generator_bound") for r in rows):
        text = ("≥ " if metric.higher_is_better else "") + text + " †"
    if any(contended(r) for r in rows):
        text += " ‡"
    return text


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def markdown(rows: list[dict[str, Any]], profile: Profile, command: str, meta: dict[str, str],
             preliminary: bool) -> str:
    table = scenarios(profile)
    lines = ["# Benchmarks", ""]
    if preliminary:
        others = others_share(rows)
        lines += [
            "> **Preliminary and noisy.** These figures were taken on a 2-core machine that other work",
            f"> was using at the same time: beside the processes measured, other processes took a median of "
            f"{others['server']} of",
            f"> the server's core and {others['generator']} of the generator's (‡ marks every such run). "
            "Latencies and capacities",
            "> here mostly measure the machine: servers fell seconds behind at loads they hold easily on a",
            "> quiet machine. The CPU per edit and per message are the least disturbed rows, and still",
            "> noisy. The figures to quote will be taken on a quiet machine with `make bench`.",
            "",
        ]
    lines += [
        "collab against the reference y-websocket server (`@y/websocket-server` 0.1.1 on Node.js) and",
        "pycrdt-websocket, in one run with the same parameters. The load comes from `bench/loadgen`, a",
        "generator of stock Yjs clients on Node.js that is independent of every server under test. Every",
        "server runs on CPU 0 (`taskset -c 0`), the generator on CPU 1; each scenario starts a fresh",
        "server process and the order of the servers rotates between repeats. collab runs with its",
        "default settings: SQLite store (every edit group-committed to disk) and every safety limit",
        "on; the other two keep documents in memory only, except in the many-documents scenario.",
        "",
        f"Command: `{command}`  ",
        f"Measured: {meta['date']} on {meta['machine']}; repeats: {profile.repeats}; "
        f"Python {meta['python']}, Node.js {meta['node']}; load average at the start: {meta['load']}.",
        "",
        "Medians over the repeats. Ratios are collab / reference; higher is better for the rows in",
        "edits/s, deliveries/s, messages/s and connections/s, lower is better for all others.",
        f"† the generator used more than {GENERATOR_BOUND_PERCENT} % of its core in at least one run: the "
        "figure measures the generator as much as the server (a rate marked ≥ is a lower bound for that "
        "server).  ",
        f"‡ other processes used more than {CONTENDED_PERCENT} % of the server's or the generator's core "
        "beside them in at least one run (a contended machine): compare the servers by their ratios.",
        "",
        "| metric | unit | collab | reference (Node) | pycrdt-websocket | collab / reference "
        "| collab / pycrdt |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in metrics(profile):
        if m.scenario not in table:
            continue
        ref = table[m.scenario].reference
        c, n, p = (runs(rows, m.scenario, s) for s in ("collab", ref, "pycrdt"))
        cv, nv, pv = (median(x, m.get) for x in (c, n, p))
        lines.append(f"| {m.label} | {m.unit} | {cell(c, m)} | {cell(n, m)} | {cell(p, m)} | "
                     f"{ratio(cv, nv)} | {ratio(cv, pv)} |")
    lines += scenario_section(profile)
    lines += compression_section(rows, profile)
    lines += limits_section(rows)
    lines.append(ABOUT)
    return "\n".join(lines) + "\n"


def scenario_section(p: Profile) -> list[str]:
    total = p.rooms * p.clients
    rates = " and ".join(f"{r:,}" for r in p.fixed_rates)
    return [
        "",
        "## Scenarios",
        "",
        f"- **fixed load**: {p.rooms} rooms x {p.clients} clients ({total} connections), one writer per "
        f"room, {rates} edits/s in all, for {p.duration:g} s after {p.warmup:g} s of unmeasured warm-up. "
        "Latency from the writer's send to each other client's receipt; server CPU over the measured "
        "window, per edit and per message the server sent. A document's log is compacted after 500 to "
        "750 updates, which these windows end before: what compaction adds to collab under a "
        "sustained load is measured apart (performance.md, \"Sustained load: compaction\").",
        f"- **ramp**: the same rooms; the per-writer rate starts at {p.ramp_start:g} edits/s and grows "
        f"x{p.ramp_factor:g} every {p.ramp_step:g} s step until p99 > 100 ms, a delivery is lost or the "
        f"generator saturates; then {p.ramp_refine} bisection step(s) between the last good and the first "
        "bad rate. The highest rate held is reported.",
        f"- **big room**: one room, one writer at {p.big_room_rate:g} edits/s, "
        f"{' and '.join(f'{n:,}' for n in p.big_room_observers)} observers.",
        f"- **presence storm**: {p.presence_clients} clients in one room, each moving its cursor "
        f"{p.presence_rate:g} times a second (y-protocols awareness updates); the figure that matters is "
        "the server's CPU. Clients send only their own state (a stock provider also re-sends every state "
        "it hears, which multiplies what the server receives; the generator's `--relay-presence` does "
        "that).",
        f"- **many documents**: {p.many_docs:,} documents of {p.many_docs_size:,} characters are written, "
        "the server is restarted, then one client per document opens it, "
        f"{p.many_docs_concurrency} at a time in flight: connections per second until every client holds "
        "its document, and each client's time from connecting to holding it. Needs a store: collab with "
        "SQLite against the reference server with its own persistence (`YPERSISTENCE`, y-leveldb), which "
        "answers a sync before its store has loaded and sends the content afterwards (the time counts "
        "until the content is there).",
        f"- **idle connections**: {p.idle_rooms * p.idle_clients:,} synced, silent connections "
        f"({p.idle_rooms} rooms x {p.idle_clients}); server RSS growth divided by the connections.",
        f"- **join storm**: {p.storm_clients} clients connect at once to a {p.storm_doc:,}-character "
        f"document and sync it (time until the last one has its sync step 2; median of {p.storm_repeat}).",
        f"- **large document**: a {p.large_doc:,}-character text; time for a new client to sync it from a "
        "running server (median of 3), and, for collab, after a restart, when the first client makes the "
        "server load it from SQLite.",
        "",
        "Every run's full report (all percentiles, deliveries, echoes, losses, convergence, the CPU of the",
        "server and of the generator, how busy both cores were) is in the JSON file that each run writes",
        "to `bench/results/`.",
    ]


def compression_section(rows: list[dict[str, Any]], p: Profile) -> list[str]:
    fixed_name = f"fixed_{p.fixed_rates[0]}"
    if not runs(rows, fixed_name, "collab-deflate") and not runs(rows, "idle", "collab-deflate"):
        return []
    table = [
        (f"fixed {p.fixed_rates[0]:,} edits/s: latency p50 (ms)", fixed_name, _latency("p50")),
        (f"fixed {p.fixed_rates[0]:,} edits/s: latency p99 (ms)", fixed_name, _latency("p99")),
        (f"fixed {p.fixed_rates[0]:,} edits/s: server CPU (% of a core)", fixed_name,
         _get("server_cpu_percent")),
        ("idle connections: KiB each", "idle", _get("kib_per_connection")),
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
        off = median(runs(rows, scenario, "collab"), get)
        on = median(runs(rows, scenario, "collab-deflate"), get)
        lines.append(f"| {label} | {fmt(off)} | {fmt(on)} | {ratio(on, off)} |")
    memory = ratio(median(runs(rows, "idle", "collab-deflate"), _get("kib_per_connection")),
                   median(runs(rows, "idle", "collab"), _get("kib_per_connection")))
    lines += [
        "",
        f"Compression is **off by default**: a compressed connection held {memory} the memory of a plain one",
        "here (its zlib state), and a typed character is a Yjs update of a few dozen bytes that leaves",
        "compression little to shrink. Turn it on only where bandwidth is dearer than server memory.",
    ]
    return lines


def others_share(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The median share of the server's and the generator's core that other processes took."""
    others: dict[str, list[float]] = {"server": [], "generator": []}
    for r in rows:
        for window in [r, *r.get("storms", [])]:
            for who in others:
                busy, own = window.get(f"{who}_core_busy_percent"), window.get(f"{who}_cpu_percent")
                if isinstance(busy, (int, float)) and isinstance(own, (int, float)):
                    others[who].append(max(0.0, busy - own))
    return {who: f"{statistics.median(v):.0f} %" if v else "-" for who, v in others.items()}


def limits_section(rows: list[dict[str, Any]]) -> list[str]:
    reasons = sorted({f"{r['server']}: {r.get('stop_reason')}" for r in rows
                      if r["scenario"] == "ramp" and "error" not in r})
    bound = sorted({f"{r['scenario']}/{r['server']}" for r in rows if r.get("generator_bound")})
    busy_runs = [r for r in rows if contended(r)]
    share = others_share(rows)
    failed = sorted({f"{r['scenario']}/{r['server']}" + (f" ({r['error'][:120]})" if "error" in r else "")
                     for r in rows if "error" in r or r.get("ok") is False or r.get("converged") is False
                     or (r.get("lost") or 0) > 0 or (r.get("undecodable_messages") or 0) > 0})
    return [
        "", "## Limits of this measurement", "",
        f"- Ramp stop reasons: {'; '.join(reasons) or '-'}.",
        f"- Runs where the generator was the limit (†): {', '.join(bound) or 'none'}.",
        f"- Runs on a contended machine (‡): {len(busy_runs)} of {len(rows)}. Median share of a core that "
        f"other processes took beside the measured ones: {share['server']} of the server's core, "
        f"{share['generator']} of the generator's.",
        f"- Runs with an error, a loss, a failed sync or a diverged document: {', '.join(failed) or 'none'}.",
        "- The reference server sends every update back to its writer as well (and every presence",
        "  update back to its sender), so per edit it sends more messages: compare the CPU per message",
        "  sent as well as per edit. Echoes are counted apart and never as deliveries.",
    ]


ABOUT = """
What each optimisation of collab bought, measured before and after, and where its CPU goes
now: [performance.md](performance.md).

## The servers under test

- **collab**: `python -m collab serve --store sqlite:///... --log-level warning
  --max-connections-per-address 100000 --max-connections-per-document 2000` (every client of the
  benchmark comes from 127.0.0.1 and the big room holds 1,001; every other setting is the default:
  SQLite store with group commit, the update gate and every other limit on, collab's own
  WebSocket layer, uvloop and httptools as installed, per-message compression off).
- **Reference server**: `@y/websocket-server` 0.1.1 from npm (`bench/node/package.json` and its
  lock), started as `HOST=127.0.0.1 PORT=... node bench/node/node_modules/@y/websocket-server/src/server.js`
  with no persistence, and with `YPERSISTENCE=<dir>` (y-leveldb) for the many-documents scenario.
  It is the classic reference server (the same code as `bin/server.js` of `y-websocket` 1.5.x,
  moved into its own package). Its newest release depends on a prerelease `yjs` 14; 0.1.1 is the
  newest release that installs with `yjs` 13.
- **pycrdt-websocket**: the version installed in the project's environment, served by uvicorn
  through `bench/pycrdt_server.py` (its `ASGIServer`, documents in memory).

## How the load is generated and measured

`bench/loadgen` (`node bench/loadgen/loadgen.mjs SCENARIO --url ...`; its packages are pinned
in `bench/loadgen/package-lock.json`) runs every client in one Node.js process, speaking the
y-websocket protocol through `y-protocols` over a lean WebSocket client of its own (frames parsed
straight from a reused read buffer of Node's `net`; `--socket ws` uses the `ws` package instead,
as it always does with compression; the lean client costs the generator about a quarter less
CPU per message: 8.5 to 9.5 against 11.2 to 12.3 µs, three runs each at 30,000 messages/s against the
reference server on the busy machine). Writers keep a real `Y.Doc` and type
into its `Y.Text` at a moving cursor (now and then a jump, sometimes a backspace), so every edit
is a genuine Yjs update. Every edit inserts a marker `[writer:seq]`; receivers find the markers
in the raw update bytes, so the latency of each delivery is exact, duplicates, gaps and losses
are counted, and an update that a server merges or re-encodes still counts once per marker.
Receivers keep what they receive and merge it at the end (`--replica full` applies every update
as it arrives instead); then every client's text is compared with what a freshly syncing client
gets from the server. Presence moves are y-protocols `Awareness` updates, timed by client id and
clock. Over each measured window the generator reads its own CPU and event-loop use, the
server's CPU (`/proc/PID/stat`, all threads) and how busy both cores were (`/proc/stat`).
`collab loadtest` remains the tool for users; the benchmark's figures come from this generator.
"""


SECTION = re.compile(r"<!-- (?P<name>[\w-]+):start -->.*?<!-- (?P=name):end -->\n?", re.DOTALL)


def with_sections_of(output: Path, text: str) -> str:
    """``text`` followed by the sections other benchmark scripts wrote into ``output`` (each
    between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``), which this report keeps."""
    old = output.read_text() if output.is_file() else ""
    kept = [match.group(0).rstrip("\n") for match in SECTION.finditer(old)]
    return text.rstrip("\n") + "".join(f"\n\n{section}" for section in kept) + "\n"


def load_rows(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text()))


def recorded_environment(rows: Rows) -> dict[str, str]:
    """The environment of the newest run among ``rows`` (a merged file holds several); results
    written before rows kept it are rendered with the current one, and say so."""
    for row in reversed(rows):
        if row.get("environment"):
            return dict(row["environment"])
    print("bench: these results do not say when they were measured; the report gives today's "
          "date and load", file=sys.stderr)
    return environment()


def environment() -> dict[str, str]:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "node": node,
            "machine": f"{os.cpu_count()} CPUs ({model})", "load": load}


def ensure_node_packages(servers: list[str]) -> None:
    needed = [LOADGEN_DIR] + ([NODE_DIR] if any(s.startswith("node") for s in servers) else [])
    for directory in needed:
        if not (directory / "node_modules" / ".package-lock.json").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=directory, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one short repeat (about 13 minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny loads, to check that everything runs")
    parser.add_argument("--repeats", type=int, help="override the number of repeats")
    parser.add_argument("--servers", default="collab,node,pycrdt,collab-deflate,node-leveldb")
    parser.add_argument("--scenarios",
                        help="comma-separated (default: all): " + ", ".join(scenarios(Profile())))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"),
                        help="directory for raw results")
    parser.add_argument("--preliminary", action="store_true",
                        help="mark the report as taken on a busy machine")
    parser.add_argument("--merge", metavar="RESULTS_JSON",
                        help="keep an earlier run's results for the scenarios not run now")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="only rewrite the report from an earlier run's results")
    args = parser.parse_args()
    profile = QUICK if args.quick else SMOKE if args.smoke else Profile()
    if args.repeats:
        profile.repeats = args.repeats
    command = "python bench/run.py" + (" --quick" if args.quick else " --smoke" if args.smoke else "")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.render:
        rows = load_rows(Path(args.render))
        profile.repeats = 1 + max((r["repeat"] for r in rows), default=0)
        output.write_text(with_sections_of(output, markdown(rows, profile, command,
                                                            recorded_environment(rows),
                                                            args.preliminary)))
        return 0
    table = scenarios(profile)
    chosen = args.scenarios.split(",") if args.scenarios else list(table)
    unknown = [s for s in chosen if s not in table]
    servers = args.servers.split(",")
    unknown += [s for s in servers if s not in SERVERS]
    if unknown:
        print(f"bench: unknown scenario or server: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if shutil.which("taskset") is None or shutil.which("node") is None or (os.cpu_count() or 1) < 2:
        print("bench: needs taskset, Node.js and at least 2 CPUs", file=sys.stderr)
        return 2
    ensure_node_packages(servers)
    os.sched_setaffinity(0, {LOAD_CPU})
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    meta = environment()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = results_dir / f"{stamp}.json"
    earlier = [r for r in load_rows(Path(args.merge)) if r["scenario"] not in chosen] if args.merge else []

    def save(rows: list[dict[str, Any]]) -> None:
        raw.write_text(json.dumps(rows, indent=1))

    rows = run_all(profile, servers, chosen, results_dir, rows=list(earlier), save=save, meta=meta)
    save(rows)
    output.write_text(with_sections_of(output, markdown(rows, profile, command, meta, args.preliminary)))
    print(f"wrote {output} and {raw}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
