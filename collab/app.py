"""The Starlette application: routes, lifespan (store, bus, rooms) and the static editor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from collab import __version__, codes
from collab.admission import Admission
from collab.bus import Bus, open_bus
from collab.config import Settings, redact_url
from collab.rooms import Rooms
from collab.store import Store, open_store
from collab.transport.poll import PollEndpoint, PollLimits
from collab.transport.websocket import Limits, WebSocketEndpoint

log = logging.getLogger("collab")

class AssetFiles(StaticFiles):
    """Bundles have content hashes in their names, so they can be cached for good."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


class CollabApp(Starlette):
    """The Starlette app, except that WebSockets under ``/ws`` and the HTTP fallback under
    ``/poll`` go straight to their endpoints: no routing (a room name may hold anything a URL can
    carry, which a route pattern would refuse with a bare 403) and no middleware frames kept
    alive for the life of every connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path = scope["path"]
            if path == "/ws" or path.startswith("/ws/"):
                await self.state.collab.sockets(scope, receive, send)
                return
        elif scope["type"] == "http":
            path = scope["path"]
            if path == "/poll" or path.startswith("/poll/"):
                await self.state.collab.polls(scope, receive, send)
                return
        elif scope["type"] == "lifespan":
            await self.state.collab.lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)


class Collab:
    """The parts one instance runs, and the flag that says whether it takes new clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store = open_store(settings.store, commit_window=settings.commit_window,
                                       compact_threshold=settings.compact_threshold)
        self.bus: Bus = open_bus(settings.redis, settings.instance_id)
        self.rooms = Rooms(self.store, self.bus, idle_seconds=settings.room_idle,
                           durable_acks=settings.durable_acks,
                           presence_hold=settings.poll_presence_hold)
        self.accepting = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.admission = Admission(is_accepting=lambda: self.accepting)
        self.sockets = WebSocketEndpoint(
            self.rooms, self.admission,
            Limits(max_send_buffer=settings.max_send_buffer, keepalive=settings.keepalive),
        )
        self.polls = PollEndpoint(self.rooms, self.admission, PollLimits(
            max_body=settings.max_message_size, timeout=settings.poll_timeout))

    async def start(self) -> None:
        try:
            await self.store.open()
        except Exception as exc:
            raise RuntimeError(f"cannot open the store {redact_url(self.settings.store)}: "
                               f"{exc or type(exc).__name__}") from exc
        await self.bus.open()
        self.rooms.start()
        self.loop = asyncio.get_running_loop()
        self.accepting = True
        log.info("collab %s ready (store %s, bus %s)", __version__, redact_url(self.settings.store),
                 redact_url(self.settings.redis) if self.settings.redis else "local")

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol. A failure to start is one line ("cannot open the store
        …: connection refused"), not a traceback."""
        await receive()  # lifespan.startup
        try:
            await self.start()
        except Exception as exc:
            await self._close_quietly()
            await send({"type": "lifespan.startup.failed", "message": f"collab cannot start: {exc}"})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.stop()
        await send({"type": "lifespan.shutdown.complete"})

    async def _close_quietly(self) -> None:
        for part in (self.store, self.bus):
            with contextlib.suppress(Exception):
                await part.close()

    def drain(self) -> None:
        """Take no new clients and answer the parked polls at once: a server that stops
        gracefully waits for requests in progress, and a parked poll would hold it up."""
        self.accepting = False
        self.polls.close_all(codes.SERVICE_RESTART.close, "server restarting, poll again")

    async def stop(self) -> None:
        """Take no new clients, close the ones left with 1012, flush everything to the store."""
        self.drain()
        self.sockets.close_all(codes.SERVICE_RESTART.close, "server restarting, reconnect")
        await self.rooms.close()
        await self.store.close()
        await self.bus.close()
        log.info("collab stopped; every accepted update is stored")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    collab = Collab(settings)

    async def liveness(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readiness(_request: Request) -> Response:
        if collab.accepting and collab.store.is_open:
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    async def metrics(_request: Request) -> Response:
        rooms = collab.rooms.rooms
        return JSONResponse({
            "version": __version__,
            "instance": settings.instance_id,
            "accepting": collab.accepting,
            "rooms": len(rooms),
            "peers": collab.rooms.member_count,
            "updates_applied": collab.rooms.updates_applied,
            "bus_healthy": collab.bus.healthy,
            "bus": collab.bus.metrics(),
            "poll": dataclasses.asdict(collab.polls.stats),
        })

    index_html = Path(settings.web_dir) / "index.html"

    async def editor(_request: Request) -> Response:
        """The page: the list of documents at the root, a document at /d/<name> (one HTML file;
        the page tells them apart by its own path, relative to wherever the app is mounted)."""
        if not index_html.is_file():
            return PlainTextResponse(
                "The editor is not built. Run `make run` (it builds web/ with npm), or connect a "
                "Yjs client to /ws/<room>.\n", status_code=503)
        return FileResponse(index_html, headers={"Cache-Control": "no-cache"})

    service_worker = Path(settings.web_dir) / "sw.js"

    async def worker(_request: Request) -> Response:
        """Served from the root so that it may keep the pages loadable while offline."""
        if not service_worker.is_file():
            return PlainTextResponse("The editor is not built.\n", status_code=404)
        return FileResponse(service_worker, media_type="text/javascript",
                            headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/liveness_check", liveness),
        Route("/readiness_check", readiness),
        Route("/metrics", metrics),
        Route("/", editor),
        Route("/d/{name:path}", editor),
        Route("/sw.js", worker),
        Mount("/assets", AssetFiles(directory=Path(settings.web_dir) / "assets", check_dir=False)),
    ]
    app = CollabApp(routes=routes)
    app.state.collab = collab
    return app
