"""The document API: read, write, list and delete documents over HTTP.

Every request goes through the same admission as a WebSocket (transport ``"api"``), with the
document name exactly as in ``/ws/<name>`` (still percent-encoded). Writes go through the room,
so live clients and the other instances see them and whatever checks an update passes on the
way in apply here too; a 204 means stored.

    GET    /api/docs?after=NAME&limit=N&q=TEXT
                                          JSON listing in name order: name, title, size, last
                                          change; ``q`` keeps the documents whose title or name
                                          contains it (case and accents ignored)
    GET    /api/docs/<name>               the text (text/plain; charset=utf-8)
    GET    /api/docs/<name>/update        the whole document as one Yjs update
    POST   /api/docs/<name>/update        apply the body (a Yjs update); ?recreate=1 revives a
                                          deleted name
    DELETE /api/docs/<name>               delete it: live clients are closed with 4410, and a
                                          reconnecting client does not bring it back
    GET    /api/docs/<name>/share         whether this server makes share links, and for whom
    POST   /api/docs/<name>/share         a share link's token for the document: JSON
                                          {"mode": "read"|"write", "ttl": seconds}; needs write
                                          access, and is never longer-lived than the caller's own
    GET    /api/docs/<name>/versions?before=ID&limit=N
                                          its kept versions, newest first (no content)
    POST   /api/docs/<name>/versions      keep the document as it is now as a named version:
                                          JSON {"label": "..."}; needs write access
    GET    /api/docs/<name>/versions/<id> one version: JSON with its text and title, or with
                                          ?format=update the Yjs update of the whole document

A final ``/update``, ``/share``, ``/versions`` or ``/versions/<id>`` always names that endpoint,
so the text of a document whose own name ends so is not reachable here (its update is, at
``…/update/update``).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from collab import codes, crdt
from collab.admission import Access, AccessRequest, Admission, Refused, check_document_name, open_access
from collab.mount import app_raw_path
from collab.rooms import DocumentDeleted, Rooms
from collab.store import Store
from collab.store.base import DocumentInfo, VersionInfo
from collab.tokens import TokenAuthorizer, parse_ttl
from collab.versions import MAX_LABEL, Versioner

log = logging.getLogger("collab.api")

PREFIX = "/api/docs"
ALL_DOCUMENTS = "*"
"""The document a listing is admitted for: an authorizer that grants it grants the listing."""
MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_SCANNED = 2000
"""Documents a search looks through per request at most; past that it answers with what it found
and a ``next`` to go on from, so one request never reads every document of a large server."""
TITLE_FIELD = "title"
"""The Yjs text field the editor keeps a document's title in."""
MAX_QUERY = 200


def fold(text: str) -> str:
    """``text`` for matching: case and accents ignored (as the editor's own search does)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class Titles:
    """The title of each listed document, read from its Yjs ``title`` field: from the live room
    when this instance holds it, else from the store, remembered until the document changes (a
    title can only change with the document's size or last change)."""

    def __init__(self, rooms: Rooms, store: Store, *, capacity: int = 10_000) -> None:
        self.rooms = rooms
        self.store = store
        self.capacity = capacity
        self._known: OrderedDict[str, tuple[tuple[int, float | None], str]] = OrderedDict()

    async def title(self, info: DocumentInfo) -> str:
        room = self.rooms.rooms.get(info.name)
        if room is not None and not room.deleted and not room.doc.damaged:
            return _one_line(room.doc.text(TITLE_FIELD))
        stamp = (info.size, info.changed_at)
        known = self._known.get(info.name)
        if known is not None and known[0] == stamp:
            self._known.move_to_end(info.name)
            return known[1]
        title = await self._read(info.name)
        self._known[info.name] = (stamp, title)
        self._known.move_to_end(info.name)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)
        return title

    async def _read(self, name: str) -> str:
        stored = await self.store.load(name)
        if stored.deleted or not stored.updates:
            return ""
        try:
            return _one_line(crdt.document_from(stored.updates).text(TITLE_FIELD))
        except crdt.InvalidUpdate as exc:  # refused whole when opened; the listing goes on
            log.warning("document %r: no title (its stored updates are refused: %s)", name, exc)
            return ""


def _one_line(title: str) -> str:
    return " ".join(title.split())


class DocumentAPI:
    def __init__(self, rooms: Rooms, store: Store, admission: Admission, *, max_body: int,
                 share_max_ttl: float = 30 * 86400.0, versions: Versioner | None = None) -> None:
        self.versions = versions
        self.rooms = rooms
        self.store = store
        self.admission = admission
        self.max_body = max_body
        self.share_max_ttl = share_max_ttl
        self.titles = Titles(rooms, store)

    def routes(self) -> list[Route]:
        return [Route(PREFIX, self.list, methods=["GET"]),
                Route(PREFIX + "/{rest:path}", self.document, methods=["GET", "POST", "DELETE"])]

    # --- endpoints ------------------------------------------------------------------------

    async def list(self, request: Request) -> Response:
        async def page(_access: Access) -> Response:
            after = request.query_params.get("after") or None
            limit = _limit(request.query_params.get("limit"))
            query = fold(request.query_params.get("q", "").strip())
            if len(query) > MAX_QUERY:
                raise Refused(codes.BAD_REQUEST, f"q is longer than {MAX_QUERY} characters")
            found, next_after = await self._page(after, limit, query)
            return JSONResponse({
                "documents": [{"name": d.name, "title": title, "size": d.size,
                               "last_change": _iso(d.changed_at)} for d, title in found],
                "next": next_after,
            })

        return await self._admitted(request, ALL_DOCUMENTS, page)

    async def _page(self, after: str | None, limit: int,
                    query: str) -> tuple[list[tuple[DocumentInfo, str]], str | None]:
        """Up to ``limit`` documents after ``after`` (those matching ``query`` when there is
        one) and the ``after`` of the next page (None at the end). A search reads at most
        :data:`MAX_SCANNED` documents, so its page may be short with a ``next``."""
        found: list[tuple[DocumentInfo, str]] = []
        scanned = 0
        while True:
            batch = await self.store.list(after, limit if not query else min(MAX_PAGE, limit * 4))
            for info in batch:
                scanned += 1
                after = info.name
                title = await self.titles.title(info)
                if not query or query in fold(title) or query in fold(unquote(info.name)):
                    found.append((info, title))
                    if len(found) == limit:
                        return found, after
                if query and scanned >= MAX_SCANNED:
                    return found, after
            if not query or len(batch) < min(MAX_PAGE, limit * 4):
                return found, None

    async def document(self, request: Request) -> Response:
        try:
            name, endpoint = _target(request)
        except Refused as refused:
            return _refusal(refused)
        method = request.method
        if endpoint == "share":
            if method == "GET":
                return await self._admitted(request, name, self._share_terms)
            if method == "POST":
                return await self._admitted(request, name, lambda a: self._share(request, name, a),
                                            write=True)
            return PlainTextResponse("use GET or POST on /api/docs/<name>/share\n", status_code=405)
        if endpoint == "versions":
            if method == "GET":
                return await self._admitted(request, name, lambda _a: self._versions(request, name))
            if method == "POST":
                return await self._admitted(request, name, lambda a: self._name_version(request, name, a),
                                            write=True)
            return PlainTextResponse("use GET or POST on /api/docs/<name>/versions\n", status_code=405)
        if endpoint.startswith("versions/"):
            if method == "GET":
                version_id = int(endpoint.split("/", 1)[1])
                return await self._admitted(request, name,
                                            lambda _a: self._version(request, name, version_id))
            return PlainTextResponse("use GET on /api/docs/<name>/versions/<id>\n", status_code=405)
        update = endpoint == "update"
        if method == "GET":
            return await self._admitted(request, name, lambda _a: self._read(name, as_update=update))
        if method == "POST" and update:
            return await self._admitted(request, name, lambda _a: self._write(request, name),
                                        write=True)
        if method == "DELETE" and not update:
            return await self._admitted(request, name, lambda _a: self._delete(name), write=True)
        return PlainTextResponse("use GET or DELETE on /api/docs/<name>, and GET or POST on "
                                 "/api/docs/<name>/update\n", status_code=405)

    # --- versions -------------------------------------------------------------------------

    async def _versions(self, request: Request, name: str) -> Response:
        limit = _limit(request.query_params.get("limit"))
        before_text = request.query_params.get("before") or None
        if before_text is not None and not before_text.isdigit():
            raise Refused(codes.BAD_REQUEST, "before must be a version id")
        kept = await self.store.versions(name, before=int(before_text) if before_text else None,
                                         limit=limit)
        return JSONResponse({"versions": [_version_json(info) for info in kept],
                             "next": kept[-1].id if len(kept) == limit else None})

    async def _version(self, request: Request, name: str, version_id: int) -> Response:
        found = await self.store.version(name, version_id)
        if found is None:
            return PlainTextResponse(f"no version {version_id} of {name!r}\n", status_code=404)
        info, state = found
        if request.query_params.get("format") == "update":
            return Response(state, media_type="application/octet-stream")
        try:
            doc = crdt.document_from([state])
        except crdt.InvalidUpdate as exc:
            log.error("version %d of %r is refused by the engine: %s", version_id, name, exc)
            return _status(codes.INTERNAL_ERROR, "this version cannot be read")
        return JSONResponse({**_version_json(info), "text": doc.text(), "title": doc.text(TITLE_FIELD)})

    async def _name_version(self, request: Request, name: str, access: Access) -> Response:
        if self.versions is None:
            return PlainTextResponse("this server keeps no versions\n", status_code=404)
        asked = await self._json_body(request, '{"label": "Before the review"}')
        if isinstance(asked, Response):
            return asked
        label = asked.get("label", "") if isinstance(asked, dict) else None
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
            return _status(codes.BAD_REQUEST, f"label must be a text of 1 to {MAX_LABEL} characters")
        author = access.user.get("name")
        info = await self.versions.take(name, kind="named", label=" ".join(label.split()),
                                        authors=[author] if isinstance(author, str) else [])
        if info is None:
            return _missing(name)
        return JSONResponse(_version_json(info), status_code=201)

    # --- share links ----------------------------------------------------------------------

    @property
    def _minter(self) -> TokenAuthorizer | None:
        """The server's own token authorizer, the only one whose tokens this server can make: an
        open server needs none, and a host application's hook decides access its own way."""
        authorize = self.admission.authorize
        return authorize if isinstance(authorize, TokenAuthorizer) else None

    async def _share_terms(self, access: Access) -> Response:
        """What the editor needs to offer share links: whether it can, and the longest one."""
        signed = self._minter is not None
        return JSONResponse({
            "signed": signed,
            "may_share": signed and access.may_write,
            "mode": access.mode,
            "max_ttl": self._longest_share(access),
            "expires": _iso(access.expires),
        })

    def _longest_share(self, access: Access) -> float:
        left = self.share_max_ttl
        if access.expires is not None:
            left = min(left, access.expires - time.time())
        return max(0.0, float(int(left)))

    async def _share(self, request: Request, name: str, access: Access) -> Response:
        minter = self._minter
        if minter is None:
            reason = ("this server has no secret: every link to a document gives access to it"
                      if self.admission.authorize is open_access
                      else "access here is decided by the host application, not by share links")
            return PlainTextResponse(reason + "\n", status_code=404)
        asked = await self._json_body(request, '{"mode": "read", "ttl": 60}')
        if isinstance(asked, Response):
            return asked
        if not isinstance(asked, dict):
            return _status(codes.BAD_REQUEST, 'the body must be a JSON object: {"mode": "read", "ttl": 60}')
        mode = asked.get("mode")
        if mode not in ("read", "write"):
            return _status(codes.BAD_REQUEST, "mode must be read or write")
        try:
            ttl = parse_ttl(str(asked.get("ttl", "")))
        except ValueError as exc:
            return _status(codes.BAD_REQUEST, f"ttl: {exc}")
        longest = self._longest_share(access)
        if longest < 1:
            return _status(codes.UNAUTHORIZED, "your own access ends now: there is nothing left to share")
        now = time.time()
        granted = min(ttl, longest)
        token = minter.mint(doc=name, mode=mode, ttl=granted, now=now)
        return JSONResponse({"token": token, "mode": mode, "expires": _iso(float(int(now + granted))),
                             "shortened": granted < ttl})

    async def _read(self, name: str, *, as_update: bool) -> Response:
        try:
            doc = await self.rooms.read(name)
        except DocumentDeleted:
            return _gone(name)
        except crdt.DamagedDocument as damage:
            return _damaged(damage)
        if doc is None:
            return _missing(name)
        if as_update:
            return Response(doc.full_state(), media_type="application/octet-stream")
        return Response(doc.text().encode("utf-8"), media_type="text/plain; charset=utf-8")

    async def _write(self, request: Request, name: str) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        if not body:
            return _status(codes.BAD_REQUEST, "empty body: send a Yjs update (application/octet-stream)")
        if _flag(request.query_params.get("recreate")):
            await self.rooms.revive(name)
        try:
            await self.rooms.apply(name, body)
        except DocumentDeleted:
            return _status(codes.DOCUMENT_DELETED, f"document {name!r} was deleted; POST with "
                                                   "?recreate=1 to use the name again")
        except crdt.DamagedDocument as damage:
            return _damaged(damage)
        except crdt.InvalidUpdate as exc:
            return _status(codes.INVALID_UPDATE, f"invalid Yjs update: {exc}")
        except Exception as exc:  # the store did not take it: nothing was acknowledged
            log.warning("document API: an update of %r was not stored: %s", name, exc)
            return _status(codes.TRY_AGAIN, f"not stored ({exc or type(exc).__name__}); try again")
        return Response(status_code=204)

    async def _delete(self, name: str) -> Response:
        if (await self.store.load(name)).deleted and name not in self.rooms.rooms:
            return _gone(name)
        if not await self.rooms.delete(name):
            return _missing(name)
        log.info("document %r deleted through the API", name)
        return Response(status_code=204)

    # --- plumbing -------------------------------------------------------------------------

    async def _admitted(self, request: Request, name: str,
                        handle: Callable[[Access], Awaitable[Response]], *, write: bool = False) -> Response:
        try:
            access = await self.admission.admit(AccessRequest.from_scope(request.scope, name, "api"))
        except Refused as refused:
            return _refusal(refused)
        try:
            if write and not access.may_write:
                return _status(codes.FORBIDDEN, "read-only access: this needs write access")
            return await handle(access)
        except Refused as refused:
            return _refusal(refused)
        finally:
            access.release()

    async def _json_body(self, request: Request, example: str) -> object:
        """The request's JSON body (``{}`` when empty), or the response refusing it."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            return json.loads(body or b"{}")
        except ValueError:
            return _status(codes.BAD_REQUEST, f"the body must be JSON: {example}")

    async def _body(self, request: Request) -> bytes | Response:
        """The request body, refused with 413 past ``max_body`` without reading it all."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return _too_large(self.max_body)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return _too_large(self.max_body)
            chunks.append(chunk)
        return b"".join(chunks)


ENDPOINTS = ("update", "share", "versions")
"""What a final path segment after a document's name may name (its update, its share links,
its versions; ``versions/<id>`` names one of them)."""
_ONE_VERSION = re.compile(r"^(.+)/(versions/[0-9]{1,18})$")


def _target(request: Request) -> tuple[str, str]:
    """(document name as sent, still percent-encoded; the endpoint meant: "" for the document
    itself, else one of :data:`ENDPOINTS`)."""
    path = app_raw_path(request.scope).decode("latin-1")
    marker = PREFIX + "/"
    rest = path[len(marker):] if path.startswith(marker) else ""
    name, endpoint = rest, ""
    one = _ONE_VERSION.match(rest)
    if one is not None:
        name, endpoint = one.group(1), one.group(2)
    for candidate in ENDPOINTS if one is None else ():
        if rest.endswith("/" + candidate):
            name, endpoint = rest[:-len(candidate) - 1], candidate
            break
    check_document_name(name)
    return name, endpoint


def _version_json(info: VersionInfo) -> dict[str, object]:
    return {"id": info.id, "at": _iso(info.created_at), "kind": info.kind, "label": info.label,
            "authors": list(info.authors), "size": info.size}


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise Refused(codes.BAD_REQUEST, f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(text)


def _flag(text: str | None) -> bool:
    return (text or "").lower() in ("1", "true", "yes")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _status(outcome: codes.Outcome, reason: str, status: int | None = None) -> Response:
    code = status or outcome.http
    assert code is not None
    return PlainTextResponse(reason + "\n", status_code=code)


def _refusal(refused: Refused) -> Response:
    return PlainTextResponse(refused.reason + "\n", status_code=refused.status)


def _missing(name: str) -> Response:
    return _status(codes.DOCUMENT_DELETED, f"no document named {name!r}", status=404)


def _gone(name: str) -> Response:
    return _status(codes.DOCUMENT_DELETED, f"document {name!r} was deleted")


def _damaged(damage: crdt.DamagedDocument) -> Response:
    return _status(codes.DOCUMENT_DAMAGED, f"document damaged in the store: {damage.reason}")


def _too_large(limit: int) -> Response:
    return _status(codes.MESSAGE_TOO_LARGE, f"body larger than {limit} bytes (--max-message-size)")

