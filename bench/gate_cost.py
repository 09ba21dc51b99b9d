"""What the update gate costs per edit: the same load against `collab serve` with and without it.

    python bench/gate_cost.py            # about 5 minutes: 3 rounds of runs, each in another order
    python bench/gate_cost.py --quick    # about a minute: 1 round, shorter

Each run starts a fresh server pinned to CPU 0 (taskset) and drives it from CPU 1 with the
benchmark's load generator (stock Yjs clients on Node.js, bench/loadgen) at a fixed edit rate;
the generator reads the server's CPU from /proc over the measured window and divides it by the
edits sent. "Without the gate" is the same server with the gate's planning replaced by a
pass-through (``bench/ungated_server.py``, a benchmark-only wrapper): the difference is what the
gate costs. A third server keeps the gate but not its check of origins (the document's order,
``collab/order.py``): the gate as it was before that check. A micro-benchmark of the gate
alone on typing edits (with and without that check) runs first. Results are printed and
written to bench/results/gate_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import LOAD_CPU, Running, Server, _collab, generate  # noqa: E402

from collab import crdt, gate  # noqa: E402

GATED = Server("gated", _collab([]), "/ws")
UNGATED = Server("ungated", lambda port, data: [
    sys.executable, str(ROOT / "bench" / "ungated_server.py"), "serve", "--host", "127.0.0.1",
    "--port", str(port), "--store", f"sqlite:///{data / 'collab.db'}", "--log-level", "warning"], "/ws")
WITHOUT_ORIGINS = Server("without_origins", lambda port, data: [
    sys.executable, str(ROOT / "bench" / "ungated_server.py"), "--without-origins", "serve",
    "--host", "127.0.0.1", "--port", str(port), "--store", f"sqlite:///{data / 'collab.db'}",
    "--log-level", "warning"], "/ws")
"""The gate as it was before it checked origins (no document order kept)."""


def typing_updates(count: int, document: int = 20_000) -> tuple[bytes, list[bytes]]:
    """What a typist's client sends: one-character inserts, now and then a deletion, into a
    document that already holds ``document`` characters from another client."""
    base = crdt.Document()
    base.edit_text(0, "x" * document)
    typist = crdt.document_from([base.full_state()])
    updates = []
    position = document // 2
    for i in range(count):
        if i % 10 == 9:
            update = typist.edit_text(position - 1, delete=1)
            position -= 1
        else:
            update = typist.edit_text(position, "abcdefghij"[i % 10])
            position += 1
        assert update is not None
        updates.append(update)
    return base.full_state(), updates


def micro(count: int = 20_000) -> dict[str, float]:
    """The gate alone (planning each edit against the document's clocks), the same with the
    check of origins (the document's order), and the engine alone applying the same edits, in
    microseconds of CPU per edit."""
    import pycrdt

    base, updates = typing_updates(count)
    state = crdt.document_from([base]).clocks()
    started = time.process_time()
    for update in updates:
        plan = gate.plan(update, state)
        state.update(plan.clocks)
    gate_us = (time.process_time() - started) / count * 1e6
    loaded = crdt.document_from([base])
    order, state = loaded._order, loaded.clocks()
    started = time.process_time()
    for update in updates:
        plan = gate.plan(update, state)
        order.integrate(plan.items)
        state.update(plan.clocks)
    ordered_us = (time.process_time() - started) / count * 1e6
    doc = pycrdt.Doc()
    doc.apply_update(base)
    started = time.process_time()
    for update in updates:
        doc.apply_update(update)
    engine_us = (time.process_time() - started) / count * 1e6
    return {"gate_us_per_edit": round(gate_us, 2),
            "gate_with_origins_us_per_edit": round(ordered_us, 2),
            "engine_apply_us_per_edit": round(engine_us, 2)}


def serve_once(server: Server, rate: int, duration: float, work: Path) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(dir=work))
    running = Running(server, data, work / f"{server.name}.log").start()
    try:
        result = generate(running, "fanout", rooms=50, clients=5, writers=1, rate=rate / 50,
                          duration=duration, warmup=1.0)
    finally:
        running.stop()
    keys = ("edits_sent", "server_cpu_seconds", "server_cpu_us_per_edit", "server_cpu_percent",
            "server_core_busy_percent", "lost_deliveries", "contended")
    return {"server": server.name, **{k: result.get(k) for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=int, default=1000, help="edits per second over all rooms")
    args = parser.parse_args()
    pairs = 1 if args.quick else 3
    duration = 4.0 if args.quick else 10.0
    os.sched_setaffinity(0, {LOAD_CPU})
    report: dict[str, Any] = {"rate": args.rate, "micro": micro(5_000 if args.quick else 20_000),
                              "runs": []}
    print("gate alone:", report["micro"])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        servers = [GATED, WITHOUT_ORIGINS, UNGATED]
        for i in range(pairs):  # each round in another order
            for server in servers[i % 3:] + servers[:i % 3]:
                run = serve_once(server, args.rate, duration, work)
                report["runs"].append(run)
                print(run)
    per_edit = {name: [r["server_cpu_us_per_edit"] for r in report["runs"]
                       if r["server"] == name and r["server_cpu_us_per_edit"]]
                for name in ("gated", "without_origins", "ungated")}
    gated, ungated = statistics.median(per_edit["gated"]), statistics.median(per_edit["ungated"])
    without_origins = statistics.median(per_edit["without_origins"])
    micro_figures = report["micro"]
    report["summary"] = {
        "gated_server_cpu_us_per_edit": gated, "ungated_server_cpu_us_per_edit": ungated,
        "without_origins_server_cpu_us_per_edit": without_origins,
        "gate_share_percent": round(100 * (gated - ungated) / gated, 1),
        "gate_alone_share_percent": round(100 * micro_figures["gate_with_origins_us_per_edit"] / gated, 1),
        "origins_alone_us_per_edit": round(micro_figures["gate_with_origins_us_per_edit"]
                                           - micro_figures["gate_us_per_edit"], 2),
    }
    print(json.dumps(report["summary"], indent=1))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "gate_cost.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
