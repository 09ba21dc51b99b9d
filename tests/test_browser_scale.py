"""Two browser tabs behind a round-robin balancer in front of two instances (Redis fan-out,
PostgreSQL store); one instance is killed while both people type."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.metrics import scrape
from tests.servers import ROOT, ServerProcess, free_port
from tests.services import PrivateRedis, fresh_database
from tests.test_browser import (  # noqa: F401
    RECONNECT_TIMEOUT_MS,
    Editor,
    browser,
    editors,
    two_synced_pages,
)

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(150)]


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database, made on a worker thread: Playwright's synchronous API keeps
    an event loop running on this one, where asyncio.run is not allowed."""
    made = fresh_database()
    with ThreadPoolExecutor(1) as worker:
        url = worker.submit(made.__enter__).result()
        try:
            yield url
        finally:
            worker.submit(made.__exit__, None, None, None).result()


@pytest.fixture
def instances(server_factory: Callable[..., ServerProcess], database: str,
              redis_server: PrivateRedis) -> list[ServerProcess]:
    return [server_factory(database, args=["--redis", redis_server.url]) for _ in range(2)]


@pytest.fixture
def balancer_url(instances: list[ServerProcess]) -> Iterator[str]:
    """``python -m tests.balancer`` in front of the instances: no affinity, stopped by PID."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.balancer", "--port", str(port),
                                *(f"127.0.0.1:{s.port}" for s in instances)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the test balancer did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(5)


def peers_on(server: ServerProcess) -> int:
    return int(scrape(server.http_url).value("collab_connections", transport="websocket"))


def test_pages_behind_the_balancer_survive_an_instance_killed(
        instances: list[ServerProcess], balancer_url: str,
        editors: Callable[[str], Editor]) -> None:  # noqa: F811
    url = f"{balancer_url}/d/balanced"
    ada, bob = two_synced_pages(editors, url)
    ada.type_at("start", "ada before\n")
    bob.wait_text("ada before\n")
    bob.type_at("end", "bob before")
    ada.wait_text("ada before\nbob before")

    # Kill an instance that really holds at least one of the two pages.
    victim = max(instances, key=peers_on)
    assert peers_on(victim) >= 1
    victim.kill()
    ada.type_at("start", "ada after ")
    bob.type_at("end", " bob after")
    expected = "ada after ada before\nbob before bob after"
    for editor in (ada, bob):
        editor.wait_text(expected, timeout=RECONNECT_TIMEOUT_MS)
        editor.wait_saved(timeout=RECONNECT_TIMEOUT_MS)
    ada.screenshot("browser-balanced-ada")
    bob.screenshot("browser-balanced-bob")
