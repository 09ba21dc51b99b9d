"""The ``collab`` command's errors and its export, run as a person would run them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
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


def test_a_store_that_cannot_open_stops_the_server_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = collab("serve", "--port", str(free_port()), "--store",
                    f"sqlite:///{tmp_path / 'file' / 'collab.db'}")
    assert result.returncode == 3
    assert "collab cannot start: cannot open the store" in result.stderr
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
