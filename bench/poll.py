"""The HTTP fallback against WebSockets, measured in one run by collab's own load tester, which
drives both transports with the same clients, writers and markers (``collab loadtest
--transport``):

- latency p50/p99 from a writer's edit to every other client's receipt, at a fixed load;
- the server's CPU per delivered update at that load (from /proc, over the load window only);
- the cost of an idle client: server memory, server CPU and requests per minute, with N silent
  clients of each transport held open.

    python bench/poll.py                    # 50 rooms x 5 clients at 10 edits/s, 500 idle clients
    python bench/poll.py --quick            # a short run to try it out

The server runs pinned to CPU 0 with its SQLite store, the load tester to CPU 1; each
measurement gets a fresh server process, and the transports alternate which goes first from one
repeat to the next. Raw results go to bench/results/poll-*.json; the report is written into
docs/benchmarks.md as its own section (which bench/run.py keeps when it rewrites the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from run import LOAD_CPU, SERVERS, Running, environment  # noqa: E402

from collab.loadtest import engine  # noqa: E402
from collab.loadtest.engine import Options, Run  # noqa: E402
from collab.loadtest.stats import Window  # noqa: E402

TRANSPORTS = ("websocket", "poll")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def others_busy(seconds: float) -> float:
    """Share of the machine (percent of all cores) that was busy over ``seconds``, by /proc/stat."""
    def sample() -> tuple[int, int]:
        parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(parts), parts[3] + parts[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return round(100 * (1 - (idle1 - idle0) / max(total1 - total0, 1)), 1)


async def fixed_load(server: Running, transport: str, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(Options(server.url, transport=transport, connect_timeout=30))
    rooms = engine.make_rooms(run, f"fixed-{transport}", args.rooms, args.clients, 1)
    await engine.open_clients(run, [c for r in rooms for c in r.clients])
    writers = [c for r in rooms for c in r.clients if c.writer_id >= 0 and c.alive]
    await asyncio.sleep(1.0)  # let the joins settle before the window opens
    run.window = Window()
    run.window.start()
    cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
    sent_for = await engine.write_for(run, writers, args.rate, args.duration, random.Random(7))
    await engine.drain(run, 5.0)
    cpu_used, wall = cpu_seconds(server.pid) - cpu_before, time.perf_counter() - wall_before
    run.window.stop()
    summary = run.window.summary(sent_for)
    summary.update(await engine.check_convergence(run, rooms))
    engine.close_all(rooms)
    delivered = int(summary["updates_delivered"])
    return {
        "transport": transport, "latency_ms": summary["latency_ms"], "edits": summary["edits_sent"],
        "delivered": delivered, "lost": summary["lost_deliveries"], "converged": summary["converged"],
        "server_cpu_percent": round(100 * cpu_used / wall, 1),
        "server_cpu_us_per_delivery": round(1e6 * cpu_used / max(delivered, 1), 1),
        "loadtester_cpu_percent": summary["loadtester_cpu_percent"],
    }


async def idle_clients(server: Running, transport: str, args: argparse.Namespace) -> dict[str, Any]:
    run = Run(Options(server.url, transport=transport, connect_timeout=60))
    rss_before = rss_kib(server.pid)
    rooms = engine.make_rooms(run, f"idle-{transport}", args.idle // 10, 10, 0)
    clients = [c for r in rooms for c in r.clients]
    failed = await engine.open_clients(run, clients)
    await asyncio.sleep(3.0)
    requests_before = sum(getattr(c.ws, "requests", 0) for c in clients)
    cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
    await asyncio.sleep(args.hold)
    cpu_used, wall = cpu_seconds(server.pid) - cpu_before, time.perf_counter() - wall_before
    requests = sum(getattr(c.ws, "requests", 0) for c in clients) - requests_before
    rss_after = rss_kib(server.pid)
    engine.close_all(rooms)
    count = len(clients) - failed
    minutes = wall / 60
    return {
        "transport": transport, "clients": count, "failed": failed, "hold_seconds": round(wall, 1),
        "kib_each": round((rss_after - rss_before) / max(count, 1), 1),
        "cpu_ms_per_client_minute": round(1e3 * cpu_used / max(count, 1) / minutes, 3),
        "requests_per_client_minute": round(requests / max(count, 1) / minutes, 2)
        if transport == "poll" else None,
        "errors_while_idle": run.connection_errors - failed,
    }


def measure(kind: str, transport: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    server = Running(SERVERS["collab"], data, data / f"{kind}-{transport}.log").start()
    try:
        coroutine = fixed_load if kind == "fixed" else idle_clients
        result = engine_loop(coroutine(server, transport, args))
    finally:
        server.stop()
    result["kind"] = kind
    result["machine_busy_percent"] = others_busy(0.5)
    return result


def engine_loop(coroutine: Any) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def median(rows: list[dict[str, Any]], kind: str, transport: str, key: str,
           sub: str | None = None) -> float:
    values = [r[key][sub] if sub else r[key] for r in rows
              if r["kind"] == kind and r["transport"] == transport]
    return statistics.median(values) if values else float("nan")


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def both(kind: str, key: str, sub: str | None = None) -> tuple[float, float]:
        return median(rows, kind, "websocket", key, sub), median(rows, kind, "poll", key, sub)

    table = [("fixed load: latency p50", "ms", both("fixed", "latency_ms", "p50")),
             ("fixed load: latency p99", "ms", both("fixed", "latency_ms", "p99")),
             ("fixed load: server CPU", "% of a core", both("fixed", "server_cpu_percent")),
             ("fixed load: server CPU per delivered update", "µs",
              both("fixed", "server_cpu_us_per_delivery")),
             ("idle client: server memory each", "KiB", both("idle", "kib_each")),
             ("idle client: server CPU", "ms per client-minute", both("idle", "cpu_ms_per_client_minute"))]
    lines = ["| metric | unit | WebSocket | HTTP fallback | fallback / WebSocket |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, unit, (ws, poll) in table:
        ratio = f"{poll / ws:.2f}x" if ws else "-"
        lines.append(f"| {name} | {unit} | {ws:,.2f} | {poll:,.2f} | {ratio} |")
    requests = median(rows, "idle", "poll", "requests_per_client_minute")
    lines.append(f"| idle client: requests | per minute | - | {requests:,.2f} | - |")
    return "\n".join(lines)


MARK = "poll"


def section(rows: list[dict[str, Any]], args: argparse.Namespace, meta: dict[str, str],
            preliminary: bool) -> str:
    busy = statistics.median(r["machine_busy_percent"] for r in rows)
    lines = [f"<!-- {MARK}:start -->", "## The HTTP fallback against WebSockets", ""]
    if preliminary:
        lines += [
            "> **Preliminary.** Measured on a shared machine while other work ran (the whole machine "
            f"was a median {busy:.0f} % busy right after each measurement), so the latencies mostly "
            "measure the machine. The fallback needs the load tester to run once per delivery (to "
            "poll again) where a WebSocket needs only the server, so contention inflates its "
            "latency far more; the CPU rows are the least disturbed. The final figures will come "
            "from a quiet machine.", ""]
    lines += [
        "collab's own load tester drives both transports with the same clients, writers and "
        "markers (`collab loadtest --transport websocket|poll`), against a fresh `collab serve` "
        "(SQLite store, default settings) per measurement, server on CPU 0 and load tester on "
        "CPU 1, transports alternating which goes first.", "",
        f"Command: `python bench/poll.py{' --repeats ' + str(args.repeats) if args.repeats != 3 else ''}"
        f"{' --hold ' + format(args.hold, 'g') if args.hold != 60 else ''}`  ",
        f"Measured: {meta['date']} on {meta['machine']}; repeats: {args.repeats}; Python "
        f"{meta['python']}; load average at the end: {meta['load']}.", "",
        f"Fixed load: {args.rooms} rooms x {args.clients} clients, one writer per room at "
        f"{args.rate:g} edits/s for {args.duration:g} s ({args.rooms * args.rate:,.0f} edits/s, "
        f"{args.rooms * args.rate * (args.clients - 1):,.0f} deliveries/s); latency from the "
        "writer's edit to each other client's receipt; server CPU from /proc over the load window, "
        "divided by the updates delivered. Idle: "
        f"{args.idle} synced clients of each transport (in rooms of 10) that send nothing, held "
        f"{args.hold:g} s with the default 25 s poll timeout; server memory growth and CPU divided "
        "by the clients, and the requests each idle poller made. Medians over the repeats.", "",
        markdown(rows, args), "",
        "Where the fallback's cost comes from: every delivery to a fallback client is the answer "
        "to a parked request, and the client's next poll is a new request (head parsing, "
        "admission, a room join), where a WebSocket sends one frame; a writer's edit is one "
        "more request. Updates that arrive while a client is between two polls go out together "
        "in its next answer, from the room's history. An idle poller costs one request per poll "
        "timeout (25 s) and a parked request (its disconnect watcher and timer) in memory.",
        f"<!-- {MARK}:end -->"]
    return "\n".join(lines)


def write_section(output: Path, text: str) -> None:
    """Replace this script's section of ``output`` (or add it at the end)."""
    old = output.read_text() if output.is_file() else ""
    pattern = re.compile(rf"<!-- {MARK}:start -->.*?<!-- {MARK}:end -->", re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _match: text, old)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    output.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=50, help="rooms of the fixed load")
    parser.add_argument("--clients", type=int, default=5, help="clients in each room (one writes)")
    parser.add_argument("--rate", type=float, default=10.0, help="edits/s of the one writer per room")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the fixed load")
    parser.add_argument("--idle", type=int, default=500, help="idle clients of each transport")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the idle clients are held")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each kind and transport")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 10 rooms, 100 idle for 30 s")
    parser.add_argument("--preliminary", action="store_true",
                        help="mark the figures as taken on a busy machine")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"),
                        help="the page whose section is rewritten (not with --quick)")
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="only rewrite the report from a run's results")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        ran = argparse.Namespace(**{**saved["args"], "render": None})
        text = section(saved["rows"], ran, saved["environment"], args.preliminary)
        write_section(Path(args.output), text)
        print(text)
        return 0
    if args.quick:  # shorter, where not given otherwise
        for name, value in (("repeats", 1), ("rooms", 10), ("duration", 5.0), ("idle", 100), ("hold", 30.0)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    os.sched_setaffinity(0, {LOAD_CPU})
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="collab-bench-poll-") as tmp:
        for repeat in range(args.repeats):
            order = TRANSPORTS if repeat % 2 == 0 else TRANSPORTS[::-1]
            for kind in ("fixed", "idle"):
                for transport in order:
                    data = Path(tmp) / f"{repeat}-{kind}-{transport}"
                    data.mkdir()
                    row = measure(kind, transport, args, data)
                    row["repeat"] = repeat
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    out = results / f"poll-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = environment()
    out.write_text(json.dumps({"args": vars(args), "environment": meta, "rows": rows}, indent=2))
    text = section(rows, args, meta, args.preliminary)
    if not args.quick:
        write_section(Path(args.output), text)
    print(text)
    print(f"raw results: {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
