"""The HTTP fallback's benchmark harness: a short run against real servers produces its report,
and the report's section survives the other benchmark rewriting the same page. Never how fast
anything is: figures come from ``python bench/poll.py``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.servers import ROOT


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench_run = _load("bench_run", ROOT / "bench" / "run.py")
bench_poll = _load("bench_poll", ROOT / "bench" / "poll.py")


def test_a_short_run_reports_both_transports(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "poll.py"), "--quick", "--rooms", "2",
                           "--duration", "1", "--idle", "20", "--hold", "2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| fixed load: latency p50 | ms |" in done.stdout
    assert "| idle client: requests | per minute | - |" in done.stdout
    assert "nan" not in done.stdout, done.stdout  # every row was measured on both transports


def test_its_section_is_replaced_in_place_and_kept_by_the_other_report(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nold table\n")
    first = f"<!-- {bench_poll.MARK}:start -->\n## fallback\nfirst\n<!-- {bench_poll.MARK}:end -->"
    bench_poll.write_section(page, first)
    bench_poll.write_section(page, first.replace("first", "second"))
    assert page.read_text().count(":start -->") == 1 and "second" in page.read_text()
    rewritten = bench_run.with_sections_of(page, "# Benchmarks\n\nnew table\n")
    assert rewritten.startswith("# Benchmarks\n\nnew table\n") and "second" in rewritten
    assert "old table" not in rewritten
