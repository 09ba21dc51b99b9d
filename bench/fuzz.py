"""A long fuzzing campaign: hostile messages against several fresh `collab serve` processes.

    python bench/fuzz.py                          # 5 servers x 25,000 messages (about 10 minutes)
    python bench/fuzz.py --servers 2 --messages 2000          # a short run
    python bench/fuzz.py --ungated --servers 3 --messages 20000   # the same against no gate

Each server gets a fresh SQLite store. Hostile clients send mutated real messages, random bytes,
forged lengths and the known reproductions (tests/fuzzing.py) while a writer types and a
watcher asks /liveness_check every 100 ms. Then the server is stopped with SIGTERM (it must exit
0), started again on the same store, and a fresh joiner must load exactly the writer's text.
Counted per server: crashes (the process exited during the campaign), hangs (a liveness answer
slower than 1 s, or none), divergences (a fresh joiner or the restarted store disagreeing with
the writer), the close codes the hostile clients got and the server's refusals by reason.
``--ungated`` runs the same against the server with the gate bypassed (bench/ungated_server.py),
as a baseline. Results: bench/results/fuzz.json and a table on stdout (for docs/hostile-input.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collab.gate import REASONS  # noqa: E402
from tests import fuzzing  # noqa: E402
from tests.metrics import scrape  # noqa: E402
from tests.pyclient import PyClient  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402


class UngatedServer(ServerProcess):
    """`collab serve` with the gate bypassed, started the same way."""

    def start(self, timeout: float = 20.0) -> ServerProcess:
        import subprocess

        env = {**os.environ, "COLLAB_LOG_LEVEL": "warning", **self.env}
        cmd = [sys.executable, str(ROOT / "bench" / "ungated_server.py"), "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--store", self.store, *self.args]
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                                        stdout=self._log_file or subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self


def refusals(server: ServerProcess) -> dict[str, Any]:
    """The gate's counters from /metrics (Prometheus text): ``collab_gate_<name>_total``."""
    try:
        report = scrape(server.http_url)
    except OSError:
        return {}
    return {name.removeprefix("collab_gate_").removesuffix("_total"): value
            for (name, _labels), value in report.samples.items() if name.startswith("collab_gate_")}


async def one_server(index: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    kind = UngatedServer if args.ungated else ServerProcess
    store = f"sqlite:///{work / f'fuzz-{index}.db'}"
    server = kind(store, log_path=work / f"server-{index}.log").start()
    assert server.process is not None
    process = server.process
    outcome: dict[str, Any] = {"server": index, "seed": args.seed + index}
    started = time.monotonic()
    try:
        result, writer = await asyncio.wait_for(fuzzing.run(
            server.ws_url, server.http_url, "fuzzed", messages=args.messages, seed=args.seed + index,
            attackers=args.attackers, alive=lambda: process.poll() is None), args.timeout)
    except (asyncio.TimeoutError, AssertionError, OSError) as exc:
        diverged = isinstance(exc, AssertionError) and str(exc).startswith("text is")
        outcome.update(crashed=process.poll() is not None, exit_code=process.poll(),
                       hung=isinstance(exc, asyncio.TimeoutError) and process.poll() is None,
                       diverged=diverged or None, error=f"{type(exc).__name__}: {str(exc)[:300]}",
                       gate=refusals(server), seconds=round(time.monotonic() - started, 1))
        server.stop()
        return outcome
    outcome.update(messages=result.messages, connections=result.connections,
                   closes={str(k): v for k, v in sorted(result.closes.items(), key=str)},
                   liveness_checks=result.liveness_checks, slow_liveness=result.slow_liveness,
                   slowest_liveness_ms=round(result.slowest_liveness * 1000, 1),
                   hung=result.liveness_failures > 0 or result.slowest_liveness >= 1.0,
                   crashed=result.crashed is not None, gate=refusals(server),
                   writer_disconnected=writer.close_codes != [],
                   seconds=round(result.seconds, 1))
    text = writer.text()
    await writer.close()
    if result.crashed is not None:
        outcome.update(exit_code=process.poll(), diverged=None)
        server.stop()
        return outcome
    code = await asyncio.to_thread(server.terminate)
    outcome["exit_code"] = code
    restarted = kind(store, log_path=work / f"server-{index}-restarted.log").start()
    try:
        reader = await PyClient(restarted.ws_url, "fuzzed").start(timeout=30)
        outcome["loaded_after_restart"] = reader.text() == text
        outcome["document_chars"] = len(text)
        await reader.close()
    finally:
        restarted.stop()
    outcome["diverged"] = not outcome["loaded_after_restart"]
    outcome["crashed"] = outcome["crashed"] or code != 0
    return outcome


def table(outcomes: list[dict[str, Any]], ungated: bool) -> str:
    rows = ["| server | messages | crashed | hung (slowest liveness) | diverged | exit "
            "| loads after restart |",
            "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        rows.append(f"| {o['server']} | {o.get('messages', '?')} | {o['crashed']} | {o['hung']} "
                    f"({o.get('slowest_liveness_ms', '?')} ms; {o.get('slow_liveness', '?')} of "
                    f"{o.get('liveness_checks', '?')} over 1 s) | {o['diverged']} | {o.get('exit_code')} "
                    f"| {o.get('loaded_after_restart')} |")
    total = sum(o.get("messages", 0) for o in outcomes)
    closes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for o in outcomes:
        closes.update(o.get("closes", {}))
        reasons.update({k: v for k, v in (o.get("gate") or {}).items()
                        if k in REASONS and v})
    def count(key: str) -> int:
        return sum(bool(o[key]) for o in outcomes)

    summary = (f"\n{'ungated' if ungated else 'gated'}: {total} messages over {len(outcomes)} servers; "
               f"crashes {count('crashed')}, hangs {count('hung')}, divergences {count('diverged')}\n"
               f"close codes: {dict(closes.most_common())}\n"
               f"refusals by reason: {dict(reasons.most_common())}")
    return "\n".join(rows) + summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument("--messages", type=int, default=25_000, help="hostile messages per server")
    parser.add_argument("--attackers", type=int, default=4, help="hostile connections at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per server at most")
    parser.add_argument("--ungated", action="store_true", help="bypass the gate (baseline)")
    args = parser.parse_args()
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.servers):
            outcome = await one_server(index, args, Path(tmp))
            outcomes.append(outcome)
            print(json.dumps(outcome), flush=True)
    report = table(outcomes, args.ungated)
    print(report)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    name = "fuzz-ungated.json" if args.ungated else "fuzz.json"
    (results / name).write_text(json.dumps({"args": vars(args), "outcomes": outcomes}, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
