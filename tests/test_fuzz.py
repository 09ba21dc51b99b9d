"""A short, seeded fuzzing campaign over real connections (``bench/fuzz.py`` runs the long
one): the server never exits, always answers its liveness check within a second, and the
writer, a fresh joiner and the store, read after a restart, hold the same document."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests import fuzzing
from tests.pyclient import PyClient
from tests.servers import ServerProcess

ServerFactory = Callable[..., ServerProcess]


async def test_a_seeded_fuzz_campaign_changes_nothing_for_the_good_clients(
        server_factory: ServerFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = f"sqlite:///{tmp_path / 'fuzz.db'}"
    server = server_factory(store)
    assert server.process is not None
    process = server.process
    result, writer = await fuzzing.run(server.ws_url, server.http_url, "fuzzed", messages=1000,
                                       seed=20260501, alive=lambda: process.poll() is None)
    assert result.crashed is None and process.poll() is None, server.log()
    assert result.liveness_failures == 0 and result.slowest_liveness < 1.0, result
    # (a message whose send found the connection already closed is not counted)
    assert result.messages > 950 and sum(result.closes.values()) > 100, result
    assert writer.close_codes == [], "the writer was disconnected"
    text = writer.text()
    await writer.close()
    assert await asyncio.to_thread(server.terminate) == 0
    restarted = server_factory(store)
    reader = await PyClient(restarted.ws_url, "fuzzed").start()
    assert reader.text() == text
    await reader.close()
