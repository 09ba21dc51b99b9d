"""The churn benchmark's harness: a short run against a real server, this checkout and a
baseline ref side by side, produces its table and its section of the report. Never how fast
anything is: figures come from ``python bench/churn.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers import ROOT


def test_a_short_run_against_a_baseline_reports_every_row(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n<!-- poll:start -->\nkept\n<!-- poll:end -->\n")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "churn.py"), "--churn-mib", "0.3",
                           "--baseline", "HEAD", "--results", str(tmp_path), "--output", str(report)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| metric | target | baseline | this | ratio |" in done.stdout
    for row in ("data directory after a graceful stop", "memory added by loading the document",
                "a new client's sync (step 2)", "edit latency p95 during the churn"):
        assert f"| {row} |" in done.stdout
    [raw] = tmp_path.glob("churn-*.json")
    results = json.loads(raw.read_text())["results"]
    assert sorted(r["version"] for r in results) == ["baseline", "this"]
    assert all(r["notes"] == [] and r["probes"] > 0 and r["data_mib"] > 0 for r in results)
    page = report.read_text()
    assert "<!-- poll:start -->\nkept\n<!-- poll:end -->" in page
    assert page.count("<!-- churn:start -->") == 1 and "--baseline HEAD" in page
    assert "churn" in done.stderr  # progress, as it goes
