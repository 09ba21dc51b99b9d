"""A host application that embeds collab, for tests: a Starlette app of its own (a page and a
login of its own) with ``Collab.app`` mounted under a prefix and ``Collab.lifespan`` as its
lifespan, served by uvicorn on loopback in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from collab import Access, AccessRequest, Collab
from tests.servers import free_port

SESSION_COOKIE = "session"


class Sessions:
    """The host's own users: a session cookie names one, who may write or only read.
    Changing ``users`` changes what the next check of a connection finds."""

    def __init__(self, users: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.users: dict[str, tuple[str, str]] = dict(users or {})
        """session id -> (name, "read" or "write")."""
        self.asked: list[AccessRequest] = []

    async def authorize(self, request: AccessRequest) -> Access | None:
        """The session from the cookie (browsers), or from ``?session=`` (a stock client,
        which can only set URL parameters)."""
        self.asked.append(request)
        session = request.cookies.get(SESSION_COOKIE) or request.query.get(SESSION_COOKIE, "")
        user = self.users.get(session)
        if user is None:
            return None
        name, mode = user
        return Access(mode, {"name": name})  # type: ignore[arg-type]


class Host:
    """``Starlette(routes=[..., Mount(prefix, app=server.app)], lifespan=server.lifespan)``."""

    def __init__(self, server: Collab, *, prefix: str = "/collab", lifespan: bool = True,
                 app: ASGIApp | None = None) -> None:
        """``app``: a host application of another kind (FastAPI) that mounts ``server`` at
        ``prefix`` itself."""
        self.server = server
        self.prefix = prefix
        self.port = free_port()

        async def home(_request: Request) -> PlainTextResponse:
            return PlainTextResponse("the host's own page\n")

        self.app = app or Starlette(routes=[Route("/", home), Mount(prefix, app=server.app)],
                                    lifespan=server.lifespan if lifespan else None)
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="on"))
        self._task: asyncio.Task[Any] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """collab's root under the prefix."""
        return f"{self.http_url}{self.prefix}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.prefix}/ws"

    async def start(self, timeout: float = 15) -> Host:
        self._task = asyncio.create_task(self.uvicorn.serve())
        async with asyncio.timeout(timeout):
            while not self.uvicorn.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("the host app did not start")
                await asyncio.sleep(0.02)
        return self

    async def close(self, timeout: float = 20) -> None:
        if self._task is None:
            return
        self.uvicorn.should_exit = True
        await asyncio.wait_for(self._task, timeout)
