"""The editor's pure JavaScript parts (page paths, title edits, the list of documents, counts,
names, file import checks, label placement), tested with Node's own test runner."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import require_service
from tests.servers import ROOT

WEB = ROOT / "web"


def test_web_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        require_service("Node.js", "the node binary is not on PATH")
    if not (WEB / "node_modules" / "yjs").is_dir():
        require_service("web packages", "web/node_modules is missing (run `make web`)")
    assert node is not None
    result = subprocess.run([node, "--test", "test/"], cwd=WEB, capture_output=True, text=True, timeout=120)
    summary = [line for line in result.stdout.splitlines() if line.startswith(("# pass", "# fail", "not ok"))]
    assert result.returncode == 0, "\n".join(summary) + "\n" + result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in summary, summary
    assert int(summary[0].split()[-1]) >= 10, summary  # the tests ran
