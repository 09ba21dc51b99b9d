"""Shared fixtures: real servers on loopback, and services that must not be skipped in CI."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import ServerProcess

if TYPE_CHECKING:
    from tests.services import PrivateRedis

REQUIRE_SERVICES = os.environ.get("COLLAB_REQUIRE_SERVICES") == "1"


def require_service(name: str, reason: str) -> None:
    """Skip for a missing service, or fail where CI demands that every service is there."""
    message = f"{name} unavailable: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (COLLAB_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(message)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh PostgreSQL database for a test module, dropped after it (a module that needs
    one per test defines its own)."""
    from tests.services import fresh_database  # services imports this module

    with fresh_database() as url:
        yield url


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    """A private redis-server of the test's own, which it may stop, pause or restart."""
    from tests.services import private_redis

    with private_redis() as server:
        yield server


@pytest.fixture(params=["direct", "asgi"])
def websocket_layer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test against each WebSocket layer of ``collab serve`` (its own protocol under
    uvicorn, and uvicorn's plain ASGI path): every server it starts uses that layer."""
    monkeypatch.setenv("COLLAB_WEBSOCKET_LAYER", request.param)
    return str(request.param)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``collab serve`` subprocesses; every one is stopped (by PID) at the end."""
    started: list[ServerProcess] = []

    def start(store: str | None = None, **kwargs: object) -> ServerProcess:
        store = store or f"sqlite:///{tmp_path / 'collab.db'}"
        kwargs.setdefault("log_path", tmp_path / f"server-{len(started)}.log")
        server = ServerProcess(store, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()
