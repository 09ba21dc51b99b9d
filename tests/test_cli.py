"""The ``collab`` command's errors and its export, run as a person would run them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.pyclient import PyClient
from tests.servers import ServerProcess, free_port


def collab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collab", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("args", "env", "message"), [
    (["serve", "--port", "99999"], {}, "99999 is not a TCP port"),
    (["serve", "--log-level", "loud"], {}, "'loud' is not a log level"),
    (["serve", "--durable-acks", "maybe"], {}, "'maybe' is not a boolean"),
    (["serve", "--store", "mysql://x"], {}, "unsupported store URL"),
    (["serve"], {"COLLAB_KEEPALIVE": "0"}, "COLLAB_KEEPALIVE='0': must be greater than 0, got 0"),
    (["serve"], {"COLLAB_PORT": "http"}, "COLLAB_PORT='http'"),
    (["db", "upgrade", "--store", "mysql://x"], {}, "unsupported store URL"),
])
def test_bad_settings_are_refused_with_one_clear_line(args: list[str], env: dict[str, str],
                                                      message: str) -> None:
    result = collab(*args, env=env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_export_reads_what_the_server_stored(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'docs.db'}"
    server = ServerProcess(store, log_path=tmp_path / "server.log").start()
    try:
        async def write() -> None:
            client = await PyClient(server.ws_url, "notes").start()
            await client.insert("exported text")
            await client.close()

        asyncio.run(write())
    finally:
        assert server.terminate() == 0
    assert collab("export", "--store", store).stdout.split() == ["notes"]
    assert collab("export", "notes", "--store", store).stdout == "exported text"
    missing = collab("export", "absent", "--store", store)
    assert missing.returncode == 1 and "no document named 'absent'" in missing.stderr


def test_export_does_not_create_a_store_that_is_not_there(tmp_path: Path) -> None:
    result = collab("export", "--store", f"sqlite:///{tmp_path / 'typo.db'}")
    assert result.returncode == 1 and "no SQLite store" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """A start that fails says so once: one line, nothing about being ready or stored."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert not re.search(r"\b(ready|stored)\b", result.stderr)
    return lines[0]


def test_a_busy_port_is_one_line_and_a_non_zero_exit(server: ServerProcess, tmp_path: Path) -> None:
    result = collab("serve", "--port", str(server.port), "--store", f"sqlite:///{tmp_path / 'b.db'}")
    assert result.returncode == 4
    assert one_line(result) == (f"collab: cannot listen on 127.0.0.1:{server.port}: address already "
                                "in use (is another server running there?)")
    assert not (tmp_path / "b.db").exists()  # nothing was started


def test_a_store_that_cannot_open_is_reported_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = collab("serve", "--port", str(free_port()), "--store",
                    f"sqlite:///{tmp_path / 'file' / 'collab.db'}", env={"COLLAB_LOG_LEVEL": "info"})
    assert result.returncode == 3
    assert one_line(result).startswith("collab cannot start: cannot open the store")


@pytest.mark.parametrize(("env", "args"), [
    ({"GAE_INSTANCE": "00c61b117c"}, []),
    ({"GAE_INSTANCE": "00c61b117c"}, ["--store", "memory://"]),
    ({"GAE_INSTANCE": "00c61b117c", "COLLAB_REDIS_URL": "redis://127.0.0.1:6379"}, []),
    ({"K_SERVICE": "collab"}, []),
])
def test_an_instance_local_store_where_several_instances_may_run_is_refused(
        env: dict[str, str], args: list[str], tmp_path: Path) -> None:
    result = collab("serve", "--port", str(free_port()), *args, env=env)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("collab: refusing to start: ") and "--single-instance" in line
    assert "COLLAB_STORE" in line and "COLLAB_REDIS_URL" in line


def test_single_instance_is_an_explicit_yes(tmp_path: Path) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path / 'one.db'}", args=["--single-instance"],
                           env={"GAE_INSTANCE": "00c61b117c"}, log_path=tmp_path / "one.log").start()
    try:
        with urllib.request.urlopen(server.http_url + "/readiness_check", timeout=5) as response:
            assert response.status == 200
    finally:
        assert server.terminate() == 0


def test_an_editor_directory_without_an_editor_is_refused(tmp_path: Path) -> None:
    result = collab("serve", "--port", str(free_port()), "--store", "memory://", "--web-dir", str(tmp_path))
    assert result.returncode == 2
    assert one_line(result) == (f"collab: no built editor in {tmp_path} (COLLAB_WEB_DIR): "
                                "index.html is missing")


def test_documents_through_a_running_server_and_through_the_store(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'docs.db'}"
    server = ServerProcess(store, log_path=tmp_path / "server.log").start()
    text_file = tmp_path / "notes.txt"
    text_file.write_text("imported text ✓\n")
    try:
        via = ["--server", server.http_url]
        assert collab("import", "notes", str(text_file), *via).returncode == 0
        assert collab("export", "notes", *via).stdout == "imported text ✓\n"
        refused = collab("import", "notes", str(text_file.with_name("other.txt")), *via)
        assert refused.returncode == 1  # no such file: one line, no traceback
        assert "Traceback" not in refused.stderr
        (tmp_path / "other.txt").write_text("other")
        over = collab("import", "notes", str(tmp_path / "other.txt"), *via)
        assert over.returncode == 1 and "--replace" in over.stderr
        assert collab("import", "notes", str(tmp_path / "other.txt"), "--replace", *via).returncode == 0
        assert collab("export", "notes", *via).stdout == "other"  # all of the old text replaced
        listing = collab("ls", "--json", *via)
        assert [d["name"] for d in json.loads(listing.stdout)] == ["notes"]
        assert collab("rm", "notes", *via).returncode == 0
        gone = collab("export", "notes", *via)
        assert gone.returncode == 1 and "410" in gone.stderr
        assert collab("rm", "notes", *via).returncode == 1
    finally:
        assert server.terminate() == 0
    # The store directly (the server is stopped): a Yjs update brings a deleted name back.
    yjs = subprocess.run([sys.executable, "-c", "import sys; from collab import crdt; "
                          "d = crdt.Document(); sys.stdout.buffer.write(d.edit_text(0, 'from a backup'))"],
                         capture_output=True, check=True).stdout
    (tmp_path / "backup.yjs").write_bytes(yjs)
    assert collab("import", "notes", str(tmp_path / "backup.yjs"), "--store", store).returncode == 0
    assert collab("export", "notes", "--store", store).stdout == "from a backup"
    assert collab("ls", "--store", store).stdout.split()[0] == "notes"
    assert collab("rm", "notes", "--store", store).returncode == 0
    assert collab("ls", "--store", store).stdout == ""


def test_loadtest_cleanup_deletes_the_documents_it_created(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("kept")
    keep = collab("import", "keep-me", str(tmp_path / "keep.txt"), "--server", server.http_url)
    assert keep.returncode == 0
    result = collab("loadtest", server.ws_url, "--rooms", "3", "--clients", "2", "--duration", "1",
                    "--rate", "5", "--no-progress", "--cleanup")
    assert result.returncode == 0, result.stderr
    assert "cleanup deleted 3 documents named lt-" in result.stderr
    listing = json.loads(collab("ls", "--json", "--server", server.http_url).stdout)
    assert [d["name"] for d in listing] == ["keep-me"]


def test_serve_collects_the_young_generations_less_often_and_full_collections_as_ever() -> None:
    """The thresholds ``collab serve`` sets: a full collection stays within a few million
    allocations of the last one (Python's defaults: 700 x 11 x 11, about 85,000)."""
    import gc

    from collab import cli

    saved = gc.get_threshold()
    try:
        cli._tune_collector()
        young, middle, old = gc.get_threshold()
        assert (young, middle, old) == (cli.GC_YOUNG_THRESHOLD, cli.GC_MIDDLE_THRESHOLD, cli.GC_OLD_THRESHOLD)
        assert middle > saved[1]  # the middle generation is collected less often than by default
        assert young * (middle + 1) * (old + 1) <= 5_000_000
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
