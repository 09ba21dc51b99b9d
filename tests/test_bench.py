"""The benchmark's load generator (stock Yjs clients on Node.js) and its harness run and report.

Short and bounded: these check that the generator counts what a server delivers and that one
small scenario produces a report, never how fast anything is (figures come from ``make bench``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require_service
from tests.servers import ROOT, ServerProcess

LOADGEN_DIR = ROOT / "bench" / "loadgen"

pytestmark = pytest.mark.node


@pytest.fixture(autouse=True)
def generator_available() -> None:
    if shutil.which("node") is None:
        require_service("Node.js", "node is not on PATH")
    if not (LOADGEN_DIR / "node_modules" / "yjs").is_dir():
        require_service("bench/loadgen packages", "run `npm ci --prefix bench/loadgen` (make test does)")


def loadgen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(LOADGEN_DIR / "loadgen.mjs"), *args], capture_output=True, text=True,
                          timeout=timeout)


def report(*args: str) -> dict[str, object]:
    done = loadgen(*args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.parametrize("socket", ["lean", "ws"])
def test_fanout_counts_every_delivery_and_the_servers_cpu(server: ServerProcess, socket: str) -> None:
    assert server.process is not None
    r = report("fanout", "--url", server.ws_url, "--rooms", "2", "--clients", "3", "--rate", "20",
               "--duration", "1", "--warmup", "0.2", "--server-pid", str(server.process.pid),
               "--socket", socket)
    assert r["edits_sent"] >= 20
    assert r["deliveries_expected"] == 2 * r["edits_sent"]  # two receivers per writer
    assert r["deliveries"] == r["deliveries_expected"] and r["lost"] == 0
    assert r["latency_ms"]["count"] == r["deliveries"]  # type: ignore[index]
    assert r["echoes"] == 0  # collab does not send an edit back to its writer
    assert r["converged"] is True and r["rooms_checked"] == 2
    assert isinstance(r["server_cpu_seconds"], (int, float)) and r["server_cpu_seconds"] >= 0
    assert isinstance(r["generator_cpu_percent"], (int, float))


def _metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_rooms_spread_over_several_servers_and_their_cpu_adds_up(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    servers = [server_factory(f"sqlite:///{tmp_path / f'collab-{i}.db'}") for i in range(2)]
    r = report("fanout", "--url", ",".join(s.ws_url for s in servers), "--rooms", "4", "--clients", "3",
               "--rate", "20", "--duration", "1", "--warmup", "0.2",
               "--server-pid", ",".join(str(s.process.pid) for s in servers if s.process))
    assert r["lost"] == 0 and r["converged"] is True and r["rooms_checked"] == 4
    # rooms 0 and 2 on the first server, 1 and 3 on the second: each stored its half
    stored = [_metric(s, "collab_store_committed_updates_total") for s in servers]
    assert all(n >= 20 for n in stored) and sum(stored) >= r["edits_sent"]
    assert isinstance(r["server_cpu_seconds"], (int, float)) and r["server_cpu_seconds"] > 0


def test_presence_moves_reach_every_other_client(server: ServerProcess) -> None:
    r = report("presence", "--url", server.ws_url, "--clients", "6", "--rate", "5", "--duration", "1")
    assert r["presence_known_at_start_min"] == 5  # the room's presence, several states in a message
    assert r["undecodable_messages"] == 0
    assert r["moves_sent"] >= 24
    assert r["deliveries"] + r["gaps"] == r["deliveries_expected"] == 5 * r["moves_sent"]  # type: ignore[operator]
    assert r["stale_presence"] == 0 and r["converged"] is True


def test_a_large_document_arrives_whole_in_a_join_storm(server: ServerProcess) -> None:
    # 150,000 characters: a frame with a 64-bit length that spans many reads
    r = report("join", "--url", server.ws_url, "--clients", "4", "--size", "150000")
    assert r["ok"] is True and r["storms"][0]["document_lengths"] == [150000]  # type: ignore[index]


def test_full_replicas_converge_too(server: ServerProcess) -> None:
    r = report("fanout", "--url", server.ws_url, "--rooms", "1", "--clients", "3", "--writers", "2",
               "--rate", "10", "--duration", "1", "--warmup", "0", "--replica", "full")
    assert r["lost"] == 0 and r["converged"] is True


def test_bad_options_get_a_clear_error() -> None:
    done = loadgen("fanout", "--url", "http://127.0.0.1:1/")
    assert done.returncode == 2 and "--url expects ws://" in done.stderr
    done = loadgen("nosuch", "--url", "ws://127.0.0.1:1/")
    assert done.returncode == 2 and "expected a scenario" in done.stderr
    done = loadgen("fanout", "--url", "ws://127.0.0.1:1/", "--socket", "tcp")
    assert done.returncode == 2 and "--socket is lean" in done.stderr
    done = loadgen("fanout", "--url", "ws://127.0.0.1:1/,ws://127.0.0.1:2/", "--spread", "documents")
    assert done.returncode == 2 and "--spread expects rooms or clients" in done.stderr
    done = loadgen("fanout", "--url", "ws://127.0.0.1:1/", "--server-pid", "12,x")
    assert done.returncode == 2 and "--server-pid expects a process id" in done.stderr


def test_harness_runs_a_short_scenario_and_writes_a_report(tmp_path: Path) -> None:
    if shutil.which("taskset") is None:
        require_service("taskset", "the benchmark pins server and generator to cores with taskset")
    output, results = tmp_path / "benchmarks.md", tmp_path / "results"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--scenarios", "fixed_20",
               "--servers", "collab", "--output", str(output), "--results", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(next(results.glob("*.json")).read_text())
    assert [(r["scenario"], r["server"]) for r in rows] == [("fixed_20", "collab")]
    assert "error" not in rows[0] and rows[0]["lost"] == 0 and rows[0]["converged"] is True
    lines = output.read_text().splitlines()
    line = next(x for x in lines if x.startswith("| fixed 20 edits/s: latency p99 "))
    collab_cell = line.split("|")[3].strip()
    assert collab_cell not in ("", "-")
    # Rendered again later, the report says when and where its results were measured.
    assert rows[0]["environment"]["date"] in next(x for x in lines if x.startswith("Measured: "))
    raw = tmp_path / "earlier.json"
    raw.write_text(json.dumps([{**row, "environment": {**row["environment"], "date": "2001-02-03"}}
                               for row in rows]))
    rendered = tmp_path / "rendered.md"
    again = subprocess.run([*command[:2], "--smoke", "--output", str(rendered), "--render",
                            str(raw)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "Measured: 2001-02-03 on " in rendered.read_text()
