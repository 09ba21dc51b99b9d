"""`collab loadtest` against a real `collab serve` on loopback: short, bounded loads whose report
must add up (every edit delivered to every other client, nothing lost, documents converged)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from collab.loadtest import wsclient
from tests.metrics import scrape
from tests.servers import ServerProcess

LOADTEST = [sys.executable, "-m", "collab", "loadtest"]


def loadtest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOADTEST, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def memory_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("memory://")


def test_fanout_report_adds_up(server: ServerProcess) -> None:
    rooms, clients, writers, rate, duration = 3, 4, 2, 20, 2
    result = loadtest(server.ws_url, "--rooms", str(rooms), "--clients", str(clients), "--writers",
                      str(writers), "--rate", str(rate), "--duration", str(duration), "--json", "--seed", "7",
                      "--acks")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    edits = report["edits_sent"]
    assert abs(edits - rooms * writers * rate * duration) <= rooms * writers * 2
    assert report["updates_delivered"] == edits * (clients - 1)
    assert report["deliveries_expected"] == edits * (clients - 1)
    assert report["lost_deliveries"] == 0
    assert report["connection_errors"] == 0
    assert report["converged"] is True
    assert report["rooms_converged"] == rooms
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert 0 < report["acks_received"] <= edits  # durable acks: seen, never counted as deliveries


@pytest.mark.parametrize("url", ["ws", "http"])
def test_fanout_over_the_http_fallback_adds_up(server: ServerProcess, url: str) -> None:
    rooms, clients, rate, duration = 3, 4, 20, 2
    base = server.ws_url if url == "ws" else server.http_url + "/poll"
    result = loadtest(base, "--transport", "poll", "--rooms", str(rooms), "--clients", str(clients),
                      "--rate", str(rate), "--duration", str(duration), "--json", "--seed", "3", "--acks")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    edits = report["edits_sent"]
    assert report["transport"] == "poll"
    assert abs(edits - rooms * rate * duration) <= rooms * 2
    assert report["updates_delivered"] == edits * (clients - 1)
    assert report["lost_deliveries"] == 0 and report["connection_errors"] == 0
    assert report["converged"] is True and report["rooms_converged"] == rooms
    assert 0 < report["acks_received"] <= edits
    polls = scrape(server.http_url)
    assert polls.value("collab_poll_polls_total") >= rooms * clients  # it really used the fallback
    assert polls.value("collab_poll_sends_total") >= 1


def test_transport_options_are_checked(server: ServerProcess) -> None:
    wrong = loadtest(server.http_url + "/poll", "--duration", "1")
    assert wrong.returncode == 2 and "--transport poll" in wrong.stderr
    deflate = loadtest(server.ws_url, "--transport", "poll", "--deflate", "--duration", "1")
    assert deflate.returncode == 2 and "--deflate" in deflate.stderr


def test_table_output_and_full_replicas(memory_server: ServerProcess) -> None:
    result = loadtest(memory_server.ws_url, "--rooms", "2", "--clients", "3", "--rate", "10",
                      "--duration", "1", "--replica", "full")
    assert result.returncode == 0, result.stderr
    assert "updates delivered" in result.stdout, result.stdout
    assert "lost deliveries                0" in result.stdout, result.stdout
    assert "converged                      yes (2/2 rooms)" in result.stdout, result.stdout


def test_join_storm(memory_server: ServerProcess) -> None:
    result = loadtest(memory_server.ws_url, "--join-storm", "8", "--doc-size", "30000", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["synced"] == 8 and report["failed"] == 0
    assert report["document_lengths"] == [30000]
    assert report["all_synced_ms"] > 0


def test_ramp_stops_and_reports_a_held_rate(memory_server: ServerProcess) -> None:
    result = loadtest(memory_server.ws_url, "--ramp", "--rooms", "2", "--clients", "2", "--rate", "5",
                      "--duration", "0.5", "--ramp-steps", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 1 <= len(report["steps"]) <= 2
    assert report["held_edit_rate"] > 0
    assert report["converged"] is True


@pytest.mark.parametrize(("args", "message"), [
    (["ftp://127.0.0.1:1/ws"], "expected a ws://HOST:PORT/PATH URL"),
    (["http://127.0.0.1:1/ws"], "an http:// URL is for --transport poll"),
    (["ws://127.0.0.1:1/ws", "--rooms", "0"], "must be at least 1"),
    (["ws://127.0.0.1:1/ws", "--rate", "fast"], "expected a number"),
    (["ws://127.0.0.1:1/ws", "--clients", "2", "--writers", "3"], "must not exceed --clients"),
])
def test_bad_arguments_give_a_clear_error(args: list[str], message: str) -> None:
    result = loadtest(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_server_is_reported_not_raised() -> None:
    from tests.servers import free_port

    result = loadtest(f"ws://127.0.0.1:{free_port()}/ws", "--rooms", "1", "--clients", "2",
                      "--duration", "1", "--json", "--connect-timeout", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["connection_errors"] == 2


def test_frame_codec_round_trip_and_fragments() -> None:
    payload = bytes(range(256)) * 300  # long enough for the 64-bit length form
    frame = wsclient.encode_frame(wsclient.OP_BINARY, payload)
    parser = wsclient.FrameParser()
    assert parser.feed(frame[:3]) == []
    assert parser.feed(frame[3:]) == [(wsclient.OP_BINARY, payload)]
    first = bytes([wsclient.OP_BINARY, 2]) + b"ab"  # not final
    last = bytes([0x80 | wsclient.OP_CONT, 1]) + b"c"
    assert parser.feed(first + last) == [(wsclient.OP_BINARY, b"abc")]


def test_deflate_round_trip() -> None:
    deflate = wsclient.Deflate.from_header("permessage-deflate; client_max_window_bits=12")
    assert deflate.client_max_window_bits == 12
    inflater = wsclient.Deflate()
    for message in (b"hello " * 50, b"\x00\x01\x02", b"hello " * 50):
        assert inflater.decompress(deflate.compress(message)) == message


def test_compressed_connections(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("memory://", args=["--per-message-deflate", "true"])
    result = loadtest(server.ws_url, "--rooms", "2", "--clients", "3", "--rate", "10", "--duration", "1",
                      "--deflate", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["deflate"] is True
    assert report["lost_deliveries"] == 0 and report["updates_delivered"] > 0
    assert report["converged"] is True
