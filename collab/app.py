"""The Starlette application: routes, lifespan (store, bus, rooms) and the static editor."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from collab import __version__, codes, crdt
from collab.admission import (
    Admission,
    Authorize,
    ConnectionLimits,
    OriginPolicy,
    Refused,
    check_document_name,
    open_access,
)
from collab.api import DocumentAPI
from collab.bus import Bus, open_bus
from collab.changes import AllEvents, ChangeNotifier, Hooks, OnChange, OnUpdate
from collab.config import Settings, redact_url
from collab.documents import TextEdit
from collab.metrics import CONTENT_TYPE, Metrics
from collab.mount import app_path, below_mount
from collab.room import RoomLimits
from collab.rooms import DocumentDeleted, Rooms
from collab.store import Store, open_store
from collab.tokens import TokenAuthorizer
from collab.transport.guard import RequestGuard
from collab.transport.poll import PollEndpoint, PollLimits
from collab.transport.websocket import Limits, WebSocketEndpoint, deny
from collab.versions import Versioner
from collab.webhooks import Webhooks

log = logging.getLogger("collab")

class AssetFiles(StaticFiles):
    """Bundles have content hashes in their names, so they can be cached for good."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


METRICS_LISTENER_PATHS = frozenset({"/metrics", "/liveness_check", "/readiness_check"})
"""All that a separate metrics listener answers."""


def on_metrics_listener(settings: Settings, scope: Scope) -> bool:
    server = scope.get("server")
    return bool(server and settings.metrics_listen and server[1] == settings.metrics_listen[1])


class CollabApp(Starlette):
    """The Starlette app, except that WebSockets under ``/ws`` and the HTTP fallback under
    ``/poll`` go straight to their endpoints: no routing (a room name may hold anything a URL can
    carry, which a route pattern would refuse with a bare 403) and no middleware frames kept
    alive for the life of every connection. Paths are read below the mount point, so the app
    works at any prefix (``Mount("/collab", app=server.app)``, ``uvicorn --root-path``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        collab: Collab = self.state.collab
        if scope["type"] == "lifespan":
            await collab.asgi_lifespan(receive, send)
            return
        if scope["type"] not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        path = app_path(scope)
        if collab.phase == "new" and path != "/liveness_check":
            await not_running(scope, receive, send)
            return
        if collab.on_metrics_listener(scope):
            if path not in METRICS_LISTENER_PATHS:
                await PlainTextResponse("Not Found\n", status_code=404)(scope, receive, send)
                return
        elif scope["type"] == "websocket":
            if path == "/ws" or path.startswith("/ws/"):
                await collab.sockets(below_mount(scope), receive, send)
                return
        elif path == "/poll" or path.startswith("/poll/"):
            await collab.polls(below_mount(scope), receive, send)
            return
        await super().__call__(scope, receive, send)


NOT_RUNNING = ("collab is not running: a host application starts it with its lifespan "
               "(Starlette(..., lifespan=server.lifespan))")


async def not_running(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer of an app whose lifespan was never entered: a clear 503, not a hang."""
    if scope["type"] == "websocket":
        await deny(scope, send, Refused(codes.SERVICE_RESTART, NOT_RUNNING))
        return
    await PlainTextResponse(NOT_RUNNING + "\n", status_code=503)(scope, receive, send)


class CannotStart(RuntimeError):
    """A part of collab (the store, the bus) could not start; the message says which and why,
    in one line for people."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_authorizer(settings: Settings) -> Authorize:
    """Signed tokens when a secret is set; otherwise everyone may write."""
    return TokenAuthorizer(settings.secret) if settings.secret else open_access


Phase = Literal["new", "running", "stopped"]


class Collab:
    """One collab server: the composition root. It owns the store, the bus, the rooms and the
    endpoints; :attr:`app` is its ASGI app (mountable at any prefix) and :meth:`lifespan` opens
    and closes its parts for the life of whoever serves the app: a host application, or
    ``collab serve``, which is built on this same object.

    ``authorize`` is a host application's access decision; it replaces the built-in one
    (signed tokens with ``COLLAB_SECRET``, open without). ``on_change(name, text)`` and
    ``on_update(name, update)`` are told after a document changed, debounced per document
    (:mod:`collab.changes`)."""

    def __init__(self, settings: Settings | None = None, *, authorize: Authorize | None = None,
                 on_change: OnChange | None = None, on_update: OnUpdate | None = None) -> None:
        settings = settings or Settings.from_env()
        self.settings = settings
        self.editor = settings.editor_dir
        if settings.web_dir is not None and not (settings.web_dir / "index.html").is_file():
            raise ValueError(f"no built editor in {settings.web_dir} (COLLAB_WEB_DIR): index.html is missing")
        self.store: Store = open_store(settings.store, commit_window=settings.commit_window,
                                       compact_threshold=settings.compact_threshold,
                                       kept_fold_bytes=settings.compact_cache_bytes,
                                       compact_log_ratio=settings.compact_log_ratio,
                                       max_unstored_updates=settings.store_backlog_updates,
                                       max_unstored_bytes=settings.store_backlog_bytes)
        self.bus: Bus = open_bus(settings.redis, settings.instance_id,
                                 answer_timeout=settings.bus_timeout)
        self.changes = ChangeNotifier(self._text_or_none, debounce=settings.change_debounce,
                                      max_delay=settings.change_max_delay)
        if on_change is not None or on_update is not None:
            self.changes.add(Hooks(on_change, on_update))
        self.webhooks = Webhooks(settings.webhook, secret=settings.webhook_secret,
                                 instance=settings.instance_id, attempts=settings.webhook_attempts,
                                 timeout=settings.webhook_timeout)
        if settings.webhook:
            self.changes.add(self.webhooks)
        self.versions = Versioner(self.store, quiet=settings.version_quiet,
                                  every=settings.version_interval, retention=settings.version_retention)
        self.rooms = Rooms(self.store, self.bus, idle_seconds=settings.room_idle,
                           bus_poll_interval=settings.bus_poll_interval,
                           durable_acks=settings.durable_acks,
                           presence_hold=settings.poll_presence_hold, limits=RoomLimits(
                               max_document_size=settings.max_document_size,
                               max_presence_state=settings.max_presence_state,
                               max_presence_entries=settings.max_presence_entries),
                           events=AllEvents(self.changes, self.versions))
        self.versions.rooms = self.rooms
        self.accepting = False
        self.phase: Phase = "new"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.open = authorize is None and not settings.secret
        self.admission = Admission(
            authorize or default_authorizer(settings),
            is_accepting=lambda: self.accepting,
            origins=OriginPolicy(settings.allowed_origins),
            limits=ConnectionLimits(per_instance=settings.max_connections,
                                    per_document=settings.max_connections_per_document,
                                    per_address=settings.max_connections_per_address),
            recheck_interval=settings.recheck_interval)
        self.sockets = WebSocketEndpoint(
            self.rooms, self.admission,
            Limits(max_send_buffer=settings.max_send_buffer, keepalive=settings.keepalive,
                   max_message_rate=settings.max_message_rate, message_burst=settings.message_burst,
                   flood_patience=settings.flood_patience, presence_batch=settings.presence_batch),
        )
        self.polls = PollEndpoint(self.rooms, self.admission, PollLimits(
            max_body=settings.max_message_size, timeout=settings.poll_timeout,
            max_message_rate=settings.max_message_rate, message_burst=settings.message_burst,
            flood_patience=settings.flood_patience))

        self.guard = RequestGuard(timeout=settings.request_timeout, max_head=settings.max_request_head,
                                  max_pending=settings.max_handshakes)
        """Bounds requests before the app sees them; ``collab serve`` installs it in uvicorn."""
        self.api = DocumentAPI(self.rooms, self.store, self.admission, max_body=settings.max_message_size,
                               share_max_ttl=settings.share_max_ttl, versions=self.versions)
        self.metrics = Metrics()
        self._register_metrics()
        self.app: Starlette = self._build_app()
        """The ASGI app: the editor, its assets, the WebSocket and fallback endpoints, the
        document API, health and metrics, all relative to wherever it is mounted."""

    def _register_metrics(self) -> None:
        """Every part's counters, and the gauges read from their state, in one registry."""
        metrics = self.metrics
        metrics.gauge("collab_info", "this server: version and instance id", lambda: 1,
                      version=__version__, instance=self.settings.instance_id)
        metrics.gauge("collab_accepting", "1 while taking new clients", lambda: self.accepting)
        metrics.gauge("collab_rooms", "documents live on this instance", lambda: len(self.rooms.rooms))
        metrics.gauge("collab_connections", "clients connected now", lambda: len(self.sockets.peers),
                      transport="websocket")
        metrics.gauge("collab_store_open", "1 while the store is open", lambda: self.store.is_open)
        metrics.gauge("collab_store_unstored_updates", "accepted updates not yet durable "
                      "(waiting for a commit, or kept while the store refuses them)",
                      lambda: self.store.unstored)
        metrics.gauge("collab_store_unstored_bytes", "bytes of the accepted updates not yet durable",
                      lambda: self.store.unstored_bytes)
        metrics.gauge("collab_store_failing", "1 while the store refuses commits (readiness is 503)",
                      lambda: self.store.failing is not None)
        metrics.gauge("collab_bus_healthy", "1 while the bus reaches the other instances",
                      lambda: self.bus.healthy)
        metrics.gauge("collab_bus_subscribed_rooms", "rooms this instance hears from the bus",
                      lambda: self.bus.gauges().get("subscribed_rooms", 0))
        metrics.gauge("collab_bus_queued_messages", "frames waiting to be sent on the bus",
                      lambda: self.bus.gauges().get("queued_messages", 0))
        metrics.add("collab_", self.sockets.traffic, transport="websocket")
        metrics.add("collab_websocket_", self.sockets.stats)
        metrics.add("collab_", self.rooms.stats)
        metrics.add("collab_", self.rooms.damage)
        metrics.gauge("collab_damaged_documents", "documents found damaged in the store lately "
                      "(refused; see collab db check)", lambda: len(self.rooms.damaged))
        metrics.add("collab_admission_", lambda: self.admission.stats)
        metrics.add("collab_requests_", lambda: self.guard.stats)
        metrics.add("collab_gate_", lambda: self.rooms.refusals)
        metrics.add("collab_store_", lambda: self.store.stats)
        metrics.add("collab_bus_", lambda: self.bus.stats)
        metrics.add("collab_poll_", self.polls.stats)
        metrics.add("collab_changes_", self.changes.stats)
        metrics.add("collab_webhooks_", self.webhooks.stats)

    def _build_app(self) -> Starlette:
        collab, settings = self, self.settings

        async def liveness(_request: Request) -> Response:
            return PlainTextResponse("ok\n")

        async def readiness(_request: Request) -> Response:
            reason = collab.not_ready()
            if reason is None:
                return PlainTextResponse(f"ready: {collab.serves}\n")
            return PlainTextResponse(f"not ready: {reason}\n", status_code=503)

        async def metrics(request: Request) -> Response:
            refusal = metrics_refusal(settings, request, collab.open)
            if refusal is not None:
                return refusal
            return Response(collab.metrics.render(), media_type=CONTENT_TYPE)

        web_dir = collab.editor or Path("/nonexistent")
        index_html = web_dir / "index.html"

        async def editor(_request: Request) -> Response:
            """The page: the list of documents at the root, a document at /d/<name> (one HTML
            file; the page tells them apart by its own path, relative to wherever the app is
            mounted)."""
            if collab.editor is None:
                return PlainTextResponse(
                    "This server has no editor: it is not built. Run `make run` in a checkout (it "
                    "builds web/ with npm), or install a collab wheel; any Yjs client can use "
                    "/ws/<name>.\n", status_code=404)
            return FileResponse(index_html, headers={"Cache-Control": "no-cache"})

        service_worker = web_dir / "sw.js"

        async def worker(_request: Request) -> Response:
            """Served from the app's root so that it may keep the pages loadable while offline."""
            if not service_worker.is_file():
                return PlainTextResponse("The editor is not built.\n", status_code=404)
            return FileResponse(service_worker, media_type="text/javascript",
                                headers={"Cache-Control": "no-cache"})

        routes = [
            Route("/liveness_check", liveness),
            Route("/readiness_check", readiness),
            Route("/metrics", metrics),
            *collab.api.routes(),
            Route("/", editor),
            Route("/d/{name:path}", editor),
            Route("/sw.js", worker),
            Mount("/assets", AssetFiles(directory=web_dir / "assets", check_dir=False)),
        ]
        app = CollabApp(routes=routes)
        app.state.collab = collab
        return app

    @property
    def serves(self) -> str:
        """What this server offers, for people (the start line, the readiness body)."""
        documents = "documents at /ws/<name> and /api/docs"
        return f"the editor, {documents}" if self.editor else f"{documents}; no editor (it is not built)"

    # --- documents from Python ----------------------------------------------------------------

    def _running(self, name: str) -> None:
        if self.phase != "running":
            raise RuntimeError(f"collab is {self.phase}: documents are reachable only inside "
                               "its lifespan (server.lifespan)")
        check_document_name(name)

    async def text(self, name: str) -> str:
        """The text of document ``name`` (as in its URL, still percent-encoded), as this
        instance knows it best: its live room, else the store (so a document that lives on
        another instance reads as stored there). A document never written is ""; a deleted
        one raises :class:`collab.rooms.DocumentDeleted`."""
        self._running(name)
        doc = await self.rooms.read(name)
        return "" if doc is None else doc.text()

    async def apply(self, name: str, update: bytes, *, recreate: bool = False) -> None:
        """Apply a Yjs update to document ``name`` as a client's edit would be: live clients
        on every instance receive it; returns once the store holds it. ``recreate`` lets a
        deleted name be used again. Raises :class:`collab.crdt.InvalidUpdate` (the update
        gate's reason), :class:`collab.rooms.DocumentDeleted`, or
        :class:`collab.codes.Refused` past a limit (the document's size)."""
        self._running(name)
        if recreate:
            await self.rooms.revive(name)
        await self.rooms.apply(name, update)

    @contextlib.asynccontextmanager
    async def edit(self, name: str, *, recreate: bool = False) -> AsyncIterator[TextEdit]:
        """``async with server.edit(name) as text: text.append("…")``: change the text from
        Python (:class:`collab.documents.TextEdit`). What the block did is applied as one
        update when it ends (:meth:`apply`), merged with what clients changed meanwhile;
        nothing is applied if it raises."""
        self._running(name)
        # Changed only by the engine here (what the block does) and read: loaded, not checked
        # as a client's update would be, in less than half the time for a large document.
        # Its edits are checked where they are applied.
        copy = crdt.Document(live=False)
        if recreate:
            await self.rooms.revive(name)
        current = await self.rooms.read(name)
        if current is not None and (refused := copy.load([current.full_state()])):
            raise refused[0]
        edit = TextEdit(copy)
        yield edit
        if edit.updates:
            await self.rooms.apply(name, crdt.merge(edit.updates))

    async def _text_or_none(self, name: str) -> str | None:
        try:
            doc = await self.rooms.read(name)
        except DocumentDeleted:
            return None
        return "" if doc is None else doc.text()

    def on_metrics_listener(self, scope: Scope) -> bool:
        return on_metrics_listener(self.settings, scope)

    def not_ready(self) -> str | None:
        """Why this instance should get no new clients now, or None when it should."""
        if not self.accepting:
            return "not accepting clients (starting or stopping)"
        if not self.store.is_open:
            return "the store is not open"
        if self.store.failing is not None:
            return "the store refuses commits; accepted updates are kept and retried"
        return None

    def open_warning(self) -> str | None:
        """What to say at start about an open server (louder when reachable from elsewhere)."""
        if not self.open:
            return None
        if is_loopback(self.settings.host):
            return ("no COLLAB_SECRET: the server is open, anyone who can reach it may read and "
                    "change every document (fine on loopback, for development)")
        return (f"!!! OPEN TO THE NETWORK: no COLLAB_SECRET is set and the server listens on "
                f"{self.settings.host}: anyone who can reach it may read, overwrite and delete "
                "every document. Set COLLAB_SECRET and hand out tokens (collab token). !!!")

    async def start(self) -> None:
        try:
            await self.store.open()
        except Exception as exc:
            raise RuntimeError(f"cannot open the store {redact_url(self.settings.store)}: "
                               f"{exc or type(exc).__name__}") from exc
        await self.bus.open()
        self.rooms.start()
        self.admission.start()
        self.webhooks.start()
        self.versions.start()
        self.loop = asyncio.get_running_loop()
        self.accepting = True
        warning = self.open_warning()
        if warning is not None:
            log.warning(warning)
        log.info("collab %s ready on http://%s:%d (store %s, bus %s)", __version__,
                 self.settings.host, self.settings.port, redact_url(self.settings.store),
                 redact_url(self.settings.redis) if self.settings.redis else "local")
        if self.editor is None:
            log.warning("no editor to serve: it is not built (run `make web` in a checkout, or "
                        "install a collab wheel, which ships it); serving /ws/<name> and /api/docs only")

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """Open the store and the bus and start the rooms; on leaving, take no new clients,
        close the ones left with 1012 and flush everything to the store. A host application
        passes it as its lifespan (``Starlette(lifespan=server.lifespan)``; it takes the host
        app as an argument and ignores it) or enters it inside its own. A failure to start is
        one :class:`CannotStart` with a line for people, not a traceback of the part."""
        if self.phase != "new":
            raise RuntimeError(f"this collab server is {self.phase}: a Collab runs once")
        try:
            await self.start()
        except Exception as exc:
            await self.close_quietly()
            self.phase = "stopped"
            raise CannotStart(f"collab cannot start: {exc}") from exc
        self.phase = "running"
        try:
            yield
        finally:
            self.phase = "stopped"
            await self.stop()

    async def asgi_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, for a server that runs :attr:`app` on its own
        (``uvicorn --factory collab.app:create_app``); it enters :meth:`lifespan`."""
        await receive()  # lifespan.startup
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.lifespan())
            except CannotStart as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})

    async def close_quietly(self) -> None:
        for part in (self.store, self.bus):
            with contextlib.suppress(Exception):
                await part.close()

    def drain(self) -> None:
        """Take no new clients and answer the parked polls at once: a server that stops
        gracefully waits for requests in progress, and a parked poll would hold it up."""
        self.accepting = False
        self.polls.close_all(codes.SERVICE_RESTART.close, "server restarting, poll again")

    async def stop(self) -> int:
        """Take no new clients, close the ones left with 1012, flush everything to the store
        (waiting at most ``shutdown_store_wait`` seconds while it refuses). Returns how many
        accepted updates it could not store (their clients were closed unacknowledged, so they
        still hold them and resend them on reconnect)."""
        self.drain()
        self.sockets.close_all(codes.SERVICE_RESTART.close, "server restarting, reconnect")
        await self.admission.stop()
        await self.versions.close()
        await self.rooms.close()
        await self.changes.close()
        await self.webhooks.close()
        if self.store.unstored:
            log.info("stopping: storing %d accepted updates (waiting at most %g s)",
                     self.store.unstored, self.settings.shutdown_store_wait)
        not_stored = await self.store.close(timeout=self.settings.shutdown_store_wait)
        await self.bus.close()
        if not_stored:
            log.error("collab stopped with %d accepted updates NOT stored: the store kept "
                      "refusing them (%s)", not_stored, self.store.failing)
        else:
            log.info("collab stopped; every accepted update is stored")
        return not_stored


def metrics_refusal(settings: Settings, request: Request, open_server: bool) -> Response | None:
    """/metrics is private when asked (a token, a listener of its own) and whenever the
    documents are (a secret is set): None when this request may see it."""
    if settings.metrics_listen is not None and not on_metrics_listener(settings, request.scope):
        return PlainTextResponse("Not Found\n", status_code=404)
    if settings.metrics_token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 settings.metrics_token.encode()):
            return PlainTextResponse("/metrics needs Authorization: Bearer <COLLAB_METRICS_TOKEN>\n",
                                     status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None
    if settings.metrics_listen is None and not open_server:
        return PlainTextResponse("/metrics is private: set COLLAB_METRICS_TOKEN or "
                                 "COLLAB_METRICS_LISTEN\n", status_code=403)
    return None


def create_app(settings: Settings | None = None, *, authorize: Authorize | None = None) -> Starlette:
    """The ASGI app of a new :class:`Collab` (its ``state.collab``)."""
    return Collab(settings, authorize=authorize).app
