"""collab inside a FastAPI application, as docs/embedding.md shows it: ``FastAPI(lifespan=
server.lifespan)`` and ``app.mount("/collab", server.app)``, the host's own routes reading and
changing documents from Python while a stock client edits through the prefix."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from fastapi import FastAPI

from collab import Collab, Settings
from tests.embedded import Host
from tests.pyclient import PyClient
from tests.services import wait_until

pytestmark = pytest.mark.timeout(60)


def fastapi_host(server: Collab) -> FastAPI:
    app = FastAPI(lifespan=server.lifespan)
    app.mount("/collab", server.app)

    @app.get("/notes/{name}")
    async def read(name: str) -> dict[str, str]:
        return {"text": await server.text(name)}

    @app.post("/notes/{name}/sign")
    async def sign(name: str, by: str) -> dict[str, str]:
        async with server.edit(name) as text:
            text.append(f"\n-- {by}")
        return {"text": await server.text(name)}

    return app


async def fetch(url: str, method: str = "GET") -> dict[str, str]:
    def call() -> dict[str, str]:
        request = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(call)


async def test_a_fastapi_app_mounts_collab_and_edits_its_documents(tmp_path: Path) -> None:
    server = Collab(Settings(store=f"sqlite:///{tmp_path / 'fastapi.db'}", log_level="warning"))
    host = await Host(server, app=fastapi_host(server)).start()
    try:
        writer = await PyClient(host.ws_url, "minutes").start()
        await writer.insert("agreed: ship on friday")
        async with asyncio.timeout(10):  # the room has it once the server's echo arrives
            while await server.text("minutes") != "agreed: ship on friday":
                await asyncio.sleep(0.02)
        assert (await fetch(f"{host.http_url}/notes/minutes"))["text"] == "agreed: ship on friday"

        signed = await fetch(f"{host.http_url}/notes/minutes/sign?by=ada", method="POST")
        assert signed["text"] == "agreed: ship on friday\n-- ada"
        await wait_until(lambda: writer.text() == "agreed: ship on friday\n-- ada", timeout=10)
        await writer.close()
    finally:
        await host.close()

    reopened = Collab(Settings(store=f"sqlite:///{tmp_path / 'fastapi.db'}", log_level="warning"))
    async with reopened.lifespan(None):
        assert await reopened.text("minutes") == "agreed: ship on friday\n-- ada"
