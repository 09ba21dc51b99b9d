"""``/metrics``: the Prometheus text format, parsed with prometheus-client's own parser, moving
with real traffic on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import REGISTRY

from collab import protocol
from collab.app import Collab
from collab.config import Settings
from collab.metrics import Histogram, Metrics, counter, labelled
from tests.metrics import Scrape, scrape
from tests.pyclient import PyClient
from tests.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]

LISTED = [  # what an operator dashboards: every one of them is there from the first scrape
    "collab_connections", "collab_rooms", "collab_messages_received", "collab_received_bytes",
    "collab_messages_sent", "collab_sent_bytes", "collab_update_apply_seconds",
    "collab_store_commit_seconds", "collab_store_commit_failures", "collab_store_unstored_updates",
    "collab_bus_lag_seconds", "collab_bus_reconnects", "collab_closes", "collab_refused",
    "collab_store_compactions", "collab_store_failing", "collab_store_unstored_bytes",
    "collab_store_failure_episodes", "collab_store_updates_not_stored",
]


async def test_counters_move_with_real_traffic(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--room-idle", "0"])
    before = await asyncio.to_thread(scrape, server.http_url)
    assert set(LISTED) <= set(before.families), set(LISTED) - set(before.families)
    assert before.families["collab_update_apply_seconds"] == "histogram"
    assert before.families["collab_store_commit_seconds"] == "histogram"
    assert before.value("collab_connections", transport="websocket") == 0

    alice = await PyClient(server.ws_url, "metered").start()
    bob = await PyClient(server.ws_url, "metered").start()
    for word in ("one ", "two ", "three ", "four ", "five ", "six "):
        await alice.insert(word)
    await bob.wait_text("one two three four five six ")
    bad = await PyClient(server.ws_url, "metered", reconnect=False).start()
    await bad.send_raw(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    assert await bad.wait_closed() == 1002
    live = await wait_scrape(server, lambda m: m.value("collab_store_committed_updates_total") == 6)

    assert live.value("collab_connections", transport="websocket") == 2
    assert live.value("collab_rooms") == 1
    assert live.value("collab_connections_accepted_total", transport="websocket") == 3
    assert live.value("collab_updates_applied_total") == 6
    assert live.value("collab_update_apply_seconds_count") == 6 + live.value("collab_duplicate_updates_total")
    assert live.value("collab_update_apply_seconds_sum") > 0
    assert live.value("collab_store_commits_total") >= 1
    assert live.value("collab_store_committed_updates_total") == 6
    assert live.value("collab_store_commit_seconds_count") == live.value("collab_store_commits_total")
    received = live.value("collab_messages_received_total", transport="websocket")
    assert received >= 6 + 3  # six updates and every client's step 1
    assert live.value("collab_received_bytes_total", transport="websocket") > received
    sent = live.value("collab_messages_sent_total", transport="websocket")
    assert sent >= 6 * 2  # each update to bob and its ack to alice
    assert live.value("collab_sent_bytes_total", transport="websocket") > sent
    assert live.value("collab_refused_total", transport="websocket", reason="bad_message") == 1
    assert live.value("collab_closes_total", transport="websocket", code="1002", by="server") == 1

    await alice.close()
    await bob.close()
    after = await wait_scrape(server, lambda m: m.value("collab_rooms") == 0)  # evicted
    assert after.value("collab_connections", transport="websocket") == 0
    assert after.total("collab_closes_total", by="client") == 2
    assert after.value("collab_store_compactions_total") == 1  # eviction folds the log
    assert after.value("collab_store_compacted_entries_total") == 6


async def wait_scrape(server: ServerProcess, done: Callable[[Scrape], bool], timeout: float = 10) -> Scrape:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        parsed = await asyncio.to_thread(scrape, server.http_url)
        if done(parsed) or asyncio.get_running_loop().time() > deadline:
            return parsed
        await asyncio.sleep(0.05)


def test_each_collab_has_its_own_registry() -> None:
    one, two = Collab(Settings(store="memory://")), Collab(Settings(store="memory://"))
    one.rooms.stats.updates_applied = 7
    assert Scrape(one.metrics.render().decode()).value("collab_updates_applied_total") == 7
    assert Scrape(two.metrics.render().decode()).value("collab_updates_applied_total") == 0
    assert not [m for m in REGISTRY.collect() if m.name.startswith("collab_")]


def test_a_part_s_dataclass_renders_without_touching_the_metrics_module() -> None:
    from dataclasses import dataclass, field

    @dataclass
    class GateStats:
        checked: int = counter("updates checked")
        refused: dict[str, int] = labelled("reason", "updates refused")
        check_seconds: Histogram = field(default_factory=lambda: Histogram("time to check", (0.1, 1.0)))

    stats = GateStats()
    metrics = Metrics()
    metrics.add("collab_gate_", stats, transport="websocket")
    stats.checked += 3
    stats.refused["too_deep"] = 2
    stats.check_seconds.observe(0.05)
    stats.check_seconds.observe(0.5)
    stats.check_seconds.observe(5)
    parsed = Scrape(metrics.render().decode())
    assert parsed.value("collab_gate_checked_total", transport="websocket") == 3
    assert parsed.value("collab_gate_refused_total", transport="websocket", reason="too_deep") == 2
    assert parsed.value("collab_gate_check_seconds_bucket", transport="websocket", le="0.1") == 1
    assert parsed.value("collab_gate_check_seconds_bucket", transport="websocket", le="1.0") == 2
    assert parsed.value("collab_gate_check_seconds_bucket", transport="websocket", le="+Inf") == 3
    assert parsed.value("collab_gate_check_seconds_count", transport="websocket") == 3
    assert parsed.families["collab_gate_check_seconds"] == "histogram"


def test_an_oversized_frame_is_counted_as_refused(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--max-message-size", "1024"])

    async def send_too_much() -> int | None:
        client = await PyClient(server.ws_url, "big", reconnect=False).start()
        await client.send_raw(protocol.encode_sync_update(b"\x00" * 4096))
        return await client.wait_closed()

    assert asyncio.run(send_too_much()) == 1009
    parsed = asyncio.run(wait_scrape(server, lambda m: m.total("collab_closes_total", code="1009") > 0))
    assert parsed.value("collab_closes_total", transport="websocket", code="1009", by="server") == 1
    assert parsed.value("collab_refused_total", transport="websocket", reason="too_large") == 1
