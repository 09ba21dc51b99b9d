"""The document API: read, write, list and delete documents over HTTP.

Every request goes through the same admission as a WebSocket (transport ``"api"``), with the
document name exactly as in ``/ws/<name>`` (still percent-encoded). Writes go through the room,
so live clients and the other instances see them and whatever checks an update passes on the
way in apply here too; a 204 means stored.

    GET    /api/docs?after=NAME&limit=N   JSON listing in name order: name, size, last change
    GET    /api/docs/<name>               the text (text/plain; charset=utf-8)
    GET    /api/docs/<name>/update        the whole document as one Yjs update
    POST   /api/docs/<name>/update        apply the body (a Yjs update); ?recreate=1 revives a
                                          deleted name
    DELETE /api/docs/<name>               delete it: live clients are closed with 4410, and a
                                          reconnecting client does not bring it back

A final ``/update`` always names the update endpoint, so the text of a document whose own name
ends in ``/update`` is not reachable here (its update is, at ``…/update/update``).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from collab import codes, crdt
from collab.admission import Access, AccessRequest, Admission, Refused, check_document_name
from collab.rooms import DocumentDeleted, Rooms
from collab.store import Store

log = logging.getLogger("collab.api")

PREFIX = "/api/docs"
ALL_DOCUMENTS = "*"
"""The document a listing is admitted for: an authorizer that grants it grants the listing."""
MAX_PAGE = 1000
DEFAULT_PAGE = 100


class DocumentAPI:
    def __init__(self, rooms: Rooms, store: Store, admission: Admission, *, max_body: int) -> None:
        self.rooms = rooms
        self.store = store
        self.admission = admission
        self.max_body = max_body

    def routes(self) -> list[Route]:
        return [Route(PREFIX, self.list, methods=["GET"]),
                Route(PREFIX + "/{rest:path}", self.document, methods=["GET", "POST", "DELETE"])]

    # --- endpoints ------------------------------------------------------------------------

    async def list(self, request: Request) -> Response:
        async def page(_access: Access) -> Response:
            after = request.query_params.get("after") or None
            limit = _limit(request.query_params.get("limit"))
            documents = await self.store.list(after, limit)
            return JSONResponse({
                "documents": [{"name": d.name, "size": d.size, "last_change": _iso(d.changed_at)}
                              for d in documents],
                "next": documents[-1].name if len(documents) == limit else None,
            })

        return await self._admitted(request, ALL_DOCUMENTS, page)

    async def document(self, request: Request) -> Response:
        try:
            name, update = _target(request)
        except Refused as refused:
            return _refusal(refused)
        method = request.method
        if method == "GET":
            return await self._admitted(request, name, lambda _a: self._read(name, as_update=update))
        if method == "POST" and update:
            return await self._admitted(request, name, lambda _a: self._write(request, name),
                                        write=True)
        if method == "DELETE" and not update:
            return await self._admitted(request, name, lambda _a: self._delete(name), write=True)
        return PlainTextResponse("use GET or DELETE on /api/docs/<name>, and GET or POST on "
                                 "/api/docs/<name>/update\n", status_code=405)

    async def _read(self, name: str, *, as_update: bool) -> Response:
        room = self.rooms.rooms.get(name)  # live here: fresher than the store by a commit window
        if room is not None and not room.deleted and (room.members or room.doc.state_vector() != b"\x00"):
            doc = room.doc
        else:
            stored = await self.store.load(name)
            if stored.deleted:
                return _gone(name)
            if not stored.updates:
                return _missing(name)
            doc = crdt.document_from(stored.updates)
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


def _target(request: Request) -> tuple[str, bool]:
    """(document name as sent, still percent-encoded; whether the update endpoint is meant)."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    path = raw.decode("latin-1")
    marker = PREFIX + "/"
    rest = path[path.index(marker) + len(marker):] if marker in path else ""
    update = rest.endswith("/update")
    name = rest[:-len("/update")] if update else rest
    check_document_name(name)
    return name, update


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


def _too_large(limit: int) -> Response:
    return _status(codes.MESSAGE_TOO_LARGE, f"body larger than {limit} bytes (--max-message-size)")

