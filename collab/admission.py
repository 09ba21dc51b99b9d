"""Admission: the one place that decides who may do what with which document.

Transport-neutral: the WebSocket transport, the HTTP fallback and the document API each describe
a request as an :class:`AccessRequest` and call :meth:`Admission.admit`, which either returns the
:class:`Access` granted or raises :class:`Refused` with the status, close code and reason to
answer with. Nothing of the document is sent before ``admit`` returned.

The decision itself is an :data:`Authorize` function. The server's own (open, or signed tokens
when a secret is set) is one of them; a host application's hook is another, used instead of it,
never beside it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

from collab import codes

Mode = Literal["read", "write"]

MAX_DOCUMENT_NAME_BYTES = 255


@dataclass(frozen=True, slots=True)
class Access:
    """What a client was granted: read (see the document and presence live, change nothing) or
    write; ``user`` is what the authorizer knows of the person (``sub``, ``name``)."""

    mode: Mode
    user: Mapping[str, Any] = field(default_factory=dict)
    slot: Slot | None = field(default=None, compare=False, repr=False)
    """The connection slot admission reserved for this client (see :meth:`release`)."""

    @property
    def may_write(self) -> bool:
        return self.mode == "write"

    def release(self) -> None:
        """The connection this access was granted to has ended: give its slot back. Every
        transport calls it once the client is gone; calling it again does nothing."""
        if self.slot is not None:
            self.slot.release()


class Slot:
    """One held place in the connection limits; released at most once."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


WRITE = Access("write")
READ = Access("read")


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A request for a document, as any transport sees it. ``document`` is the name exactly as
    the client sent it (still percent-encoded); header keys are lower-case."""

    document: str
    transport: str
    """``"websocket"``, ``"poll"`` or ``"api"``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    client: tuple[str, int] | None = None

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any], document: str, transport: str) -> AccessRequest:
        """The request an ASGI ``http`` or ``websocket`` scope describes. A repeated header or
        query parameter keeps its last value."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        client = scope.get("client")
        return cls(document, transport, headers, _cookies(headers.get("cookie", "")), query,
                   tuple(client) if client else None)  # type: ignore[arg-type]


def _cookies(header: str) -> dict[str, str]:
    cookie = SimpleCookie()
    try:
        cookie.load(header)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in cookie.items()}


class Refused(Exception):
    """A request admission turned down: answer ``status`` over HTTP (before a WebSocket
    upgrade), or close with ``close_code`` where the connection is already open."""

    def __init__(self, outcome: codes.Outcome, reason: str) -> None:
        super().__init__(reason)
        assert outcome.http is not None and outcome.close is not None
        self.status: int = outcome.http
        self.close_code: int = outcome.close
        self.reason = reason


Authorize = Callable[[AccessRequest], Awaitable["Access | None"]]
"""Decides what a request may do: the :class:`Access` granted, or None to refuse it (403).
It may raise :class:`Refused` itself for a more precise answer (401 for a missing token)."""


async def open_access(_request: AccessRequest) -> Access:
    """The authorizer without a secret: everyone may write (development only)."""
    return WRITE


def check_document_name(name: str) -> None:
    """Raise :class:`Refused` (400) for a name no document may have."""
    if not name:
        raise Refused(codes.BAD_REQUEST, "the document name is empty")
    if len(name.encode("utf-8")) > MAX_DOCUMENT_NAME_BYTES:
        raise Refused(codes.BAD_REQUEST,
                      f"the document name is longer than {MAX_DOCUMENT_NAME_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in unquote(name, errors="replace")):
        raise Refused(codes.BAD_REQUEST, "the document name contains control characters")


class Admission:
    """Admits requests in a fixed order: a valid name, an instance taking clients, then the
    authorizer's decision."""

    def __init__(self, authorize: Authorize = open_access, *,
                 is_accepting: Callable[[], bool] = lambda: True) -> None:
        self.authorize = authorize
        self.is_accepting = is_accepting

    async def admit(self, request: AccessRequest) -> Access:
        """The access granted to ``request``; raises :class:`Refused`."""
        check_document_name(request.document)
        if not self.is_accepting():
            raise Refused(codes.SERVICE_RESTART, "shutting down")
        access = await self.authorize(request)
        if access is None:
            raise Refused(codes.FORBIDDEN, "access denied")
        return access
