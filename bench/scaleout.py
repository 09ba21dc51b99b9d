"""What scaling out costs per edit, measured on the one core the server has here.

    python bench/scaleout.py                 # 2,000 edits/s, 50 rooms x 5 clients, 3 rounds
    python bench/scaleout.py --quick         # 1 round of shorter runs
    python bench/scaleout.py --rate 4000

The same fixed load (the benchmark's Node.js generator on CPU 1, one writer per room) against:

1. one process with SQLite: the single-machine default, the baseline;
2. one process with the PostgreSQL store and the Redis bus: what each process of a scaled-out
   deployment runs;
3. two processes like 2, each room on one of them (affinity by document at the balancer);
4. two processes like 2, each room's clients dealt over both (no affinity: every update is
   applied by both processes and crosses the bus once).

All processes are pinned to CPU 0, so the server CPU per edit of 3 and 4 is what several
processes cost on top of one, not what more cores buy: on a machine with a core per process
(and PostgreSQL and Redis elsewhere), 3 scales by the number of processes at its cost per edit.
Each run gets a fresh PostgreSQL database and a private redis-server, both removed afterwards.
Needs PostgreSQL (``COLLAB_TEST_POSTGRES_URL``, default the local one) and ``redis-server``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Running, Server, _collab, generate  # noqa: E402

from tests.services import PrivateRedis, fresh_database  # noqa: E402

SETUPS = ("sqlite", "postgres+redis", "2 processes: rooms apart", "2 processes: rooms shared")


def progress(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def scaled_out_services() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database and a private redis-server (their URLs), removed after."""
    redis = PrivateRedis()
    with fresh_database() as database:
        try:
            redis.start()
            yield database, redis.url
        finally:
            redis.cleanup()


def run_setup(setup: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if setup == "sqlite":
            servers = [Server("collab", _collab([]), "/ws")]
        else:
            database, redis = stack.enter_context(scaled_out_services())
            command = _collab(["--redis", redis])

            def scaled(port: int, data: Path) -> list[str]:
                line = command(port, data)
                line[line.index("--store") + 1] = database
                return line

            servers = [Server("collab", scaled, "/ws")] * (1 if setup == "postgres+redis" else 2)
        running: list[Running] = []
        try:
            for i, server in enumerate(servers):
                data = work / f"{len(os.listdir(work))}-{i}"
                data.mkdir()
                running.append(Running(server, data, work / "server.log").start())
            spread = "clients" if setup.endswith("shared") else "rooms"
            return generate(running, "fanout", spread=spread, rooms=args.rooms, clients=args.clients,
                            writers=1, rate=args.rate / args.rooms, duration=args.duration,
                            warmup=args.warmup, timeout=600)
        finally:
            for r in running:
                r.stop()


def row(setup: str, runs: list[dict[str, Any]], baseline: float | None) -> str:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return f"| {setup} | {runs[0]['error']} | | | | | |"
    per_edit = statistics.median(r["server_cpu_us_per_edit"] for r in ok)
    per_delivery = statistics.median(r["server_cpu_seconds"] * 1e6 / r["deliveries"] for r in ok)
    p50 = statistics.median(r["latency_ms"]["p50"] for r in ok)
    p99 = statistics.median(r["latency_ms"]["p99"] for r in ok)
    lost = sum(r["lost"] for r in ok)
    converged = all(r["converged"] for r in ok)
    ratio = f"{per_edit / baseline:.2f}x" if baseline else "(sqlite not run)"
    spread = ", ".join(f"{r['server_cpu_us_per_edit']:.0f}" for r in ok)
    return (f"| {setup} | {per_edit:.0f} µs ({spread}) | {ratio} | {per_delivery:.1f} µs | {p50:.2f} / "
            f"{p99:.2f} ms | {lost} | {'yes' if converged else 'NO'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000, help="edits per second in all (default 2000)")
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every setup, alternating")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="1 round of 4-second runs")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="comma-separated, of: " + ", ".join(SETUPS) + " (default all)")
    args = parser.parse_args()
    # stopped with SIGTERM, it still stops its servers and removes its database and Redis
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 4.0, 1.0
    chosen = [setup.strip() for setup in args.setups.split(",")]
    unknown = [setup for setup in chosen if setup not in SETUPS]
    if unknown:
        parser.error(f"unknown setup {unknown[0]!r}; the setups are: {', '.join(SETUPS)}")
    results: dict[str, list[dict[str, Any]]] = {setup: [] for setup in chosen}
    with tempfile.TemporaryDirectory(prefix="collab-scaleout-") as tmp:
        for round_ in range(args.rounds):
            for setup in chosen:
                progress(f"round {round_ + 1}/{args.rounds}: {setup}")
                try:
                    results[setup].append(run_setup(setup, args, Path(tmp)))
                except Exception as exc:  # one failed run is reported, not fatal
                    results[setup].append({"error": f"{type(exc).__name__}: {exc}"})
    out = ROOT / "bench" / "results" / f"scaleout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    ok = [r for r in results.get("sqlite", []) if "error" not in r]
    baseline = statistics.median(r["server_cpu_us_per_edit"] for r in ok) if ok else None
    print(f"{args.rate:,.0f} edits/s, {args.rooms} rooms x {args.clients} clients, one writer each; every "
          f"server process on CPU 0; medians of {args.rounds} (runs in brackets). Raw: {out.name}\n")
    print("| setup | server CPU per edit | / sqlite | per delivery | latency p50 / p99 | lost | converged |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for setup in chosen:
        print(row(setup, results[setup], baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
