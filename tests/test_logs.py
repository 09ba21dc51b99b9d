"""Logs of a real ``collab serve``: JSON lines that a log platform reads, with the document and
connection on lines about a connection, and routine lines (health checks, connects) at DEBUG."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.pyclient import PyClient
from tests.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]


def json_lines(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"severity", "message", "time"} <= set(entry), entry
        assert str(entry["time"]).endswith("Z")
    return entries


async def traffic(server: ServerProcess) -> None:
    for path in ("/readiness_check", "/liveness_check"):
        await asyncio.to_thread(urllib.request.urlopen, server.http_url + path)
    good = await PyClient(server.ws_url, "logged%20doc").start()
    await good.insert("hello")
    bad = await PyClient(server.ws_url, "logged%20doc", reconnect=False).start()
    await bad.send_raw(b"\x00\x09\x00")
    assert await bad.wait_closed() == 1002
    await good.close()


async def test_json_lines_carry_document_and_connection(server_factory: ServerFactory,
                                                        tmp_path: Path) -> None:
    log = tmp_path / "json.log"
    server = server_factory(log_path=log, env={"COLLAB_LOG_FORMAT": "json", "COLLAB_LOG_LEVEL": "debug"})
    await traffic(server)
    assert server.terminate() == 0
    entries = json_lines(log)
    refusal = [e for e in entries if "closed a client with 1002" in str(e["message"])]
    assert len(refusal) == 1 and refusal[0]["severity"] == "WARNING"
    assert refusal[0]["document"] == "logged doc"
    connects = [e for e in entries if str(e["message"]).startswith("connected")]
    assert len(connects) == 2 and all(e["severity"] == "DEBUG" and e["document"] == "logged doc"
                                      for e in connects)
    assert len({e["connection"] for e in connects}) == 2  # one id per connection
    assert refusal[0]["connection"] == connects[1]["connection"]
    health = [e for e in entries if "/readiness_check" in str(e["message"])]
    assert health and all(e["severity"] == "DEBUG" for e in health)
    assert any("ready on http://" in str(e["message"]) and e["severity"] == "INFO" for e in entries)
    assert not [e for e in entries if "document" in e and "ready" in str(e["message"])]


async def test_at_info_routine_lines_are_left_out(server_factory: ServerFactory, tmp_path: Path) -> None:
    log = tmp_path / "info.log"
    server = server_factory(log_path=log, args=["--log-format", "json", "--log-level", "info"])
    await traffic(server)
    assert server.terminate() == 0
    messages = [str(e["message"]) for e in json_lines(log)]
    assert any("closed a client with 1002" in m for m in messages)
    assert not [m for m in messages if "_check" in m or "connection open" in m or "[accepted]" in m
                or m.startswith("connected")]


async def test_text_is_the_default(server_factory: ServerFactory, tmp_path: Path) -> None:
    log = tmp_path / "text.log"
    server = server_factory(log_path=log, env={"COLLAB_LOG_LEVEL": "info"})
    await traffic(server)
    assert server.terminate() == 0
    lines = log.read_text().splitlines()
    refusal = [line for line in lines if "closed a client with 1002" in line]
    assert len(refusal) == 1 and "[document='logged doc' connection=" in refusal[0]
    assert not [line for line in lines if line.startswith("{")]
