"""Admission: the one place that decides who may do what with which document.

Transport-neutral: the WebSocket transport, the HTTP fallback and the document API each describe
a request as an :class:`AccessRequest` and call :meth:`Admission.admit`, which either returns the
:class:`Access` granted or raises :class:`Refused` with the status, close code and reason to
answer with. Nothing of the document is sent before ``admit`` returned.

The decision itself is an :data:`Authorize` function. The server's own (open, or signed tokens
when a secret is set) is one of them; a host application's hook is another, used instead of it,
never beside it. A connection that stays open is :meth:`Admission.hold`-ed: the same decision is
taken again for it every ``recheck_interval`` seconds, and its holder is told when the access
was withdrawn or changed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http.cookies import CookieError, SimpleCookie
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

from collab import codes
from collab.codes import Refused

__all__ = ["READ", "WRITE", "Access", "AccessRequest", "Admission", "AdmissionStats",
           "Authorize", "ConnectionLimits", "Held", "Holder", "OriginPolicy", "Refused", "Slot",
           "open_access"]

log = logging.getLogger("collab.admission")

Mode = Literal["read", "write"]

MAX_DOCUMENT_NAME_BYTES = 255


@dataclass(frozen=True, slots=True)
class Access:
    """What a client was granted: read (see the document and presence live, change nothing) or
    write; ``user`` is what the authorizer knows of the person (``sub``, ``name``)."""

    mode: Mode
    user: Mapping[str, Any] = field(default_factory=dict)
    slot: Slot | None = field(default=None, compare=False, repr=False)
    expires: float | None = None
    """When this access ends (Unix time; a token's ``exp``), or None if the authorizer does not
    say. A share link made from it never outlives it."""
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
        # Header names are few and the same for every request: one string each for all the
        # connections that hold their request (rechecks) rather than a copy per connection.
        headers = {sys.intern(k.decode("latin-1").lower()): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        query_string = scope.get("query_string", b"")
        query = (dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
                 if query_string else _NOTHING)
        client = scope.get("client")
        return cls(document, transport, headers, _cookies(headers.get("cookie", "")), query,
                   tuple(client) if client else None)  # type: ignore[arg-type]


_NOTHING: Mapping[str, str] = MappingProxyType({})
"""No cookies, no query: shared by every request that has none."""


def _cookies(header: str) -> Mapping[str, str]:
    if not header:
        return _NOTHING
    cookie = SimpleCookie()
    try:
        cookie.load(header)
    except CookieError:
        return _NOTHING
    return {name: morsel.value for name, morsel in cookie.items()}


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


@dataclass(slots=True)
class AdmissionStats:
    admitted: int = 0
    refused_bad_request: int = 0
    refused_unauthorized: int = 0
    refused_forbidden: int = 0
    refused_origin: int = 0
    refused_full: int = 0
    refused_shutting_down: int = 0
    rechecks: int = 0
    """Open connections whose access was decided again."""
    withdrawn: int = 0
    """Open connections closed because their access was withdrawn."""
    access_changed: int = 0
    """Open connections whose mode changed at a recheck (write to read or back)."""
    recheck_errors: int = 0
    """Rechecks whose authorizer failed (the connection is kept until the next one)."""


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _split_origin(origin: str) -> tuple[str, str] | None:
    """(scheme, host[:port]) of an origin, lower-case and without a default port."""
    scheme, sep, netloc = origin.strip().lower().rstrip("/").partition("://")
    if not sep or not netloc or "/" in netloc:
        return None
    host, colon, port = netloc.rpartition(":")
    if colon and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        netloc = host
    return scheme, netloc


def _host_of(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[:netloc.find("]") + 1]
    return netloc.rpartition(":")[0] if ":" in netloc else netloc


class OriginPolicy:
    """Which web pages may open a connection (cross-site WebSocket hijacking: a browser sends
    the user's cookies with a socket any page opens, so the Origin header is the only sign of
    who asks). A request without an Origin header is not a browser's: it is judged by its
    token alone. The server's own origin (the Host the request was sent to) is always allowed;
    ``allowed`` lists the others (``*`` for any, ``null`` for sandboxed pages and files);
    empty means pages served from loopback, for development."""

    def __init__(self, allowed: tuple[str, ...] = ()) -> None:
        self.any = "*" in allowed
        self.loopback = not allowed
        self.null = "null" in allowed
        self.origins = {split for o in allowed if (split := _split_origin(o)) is not None}

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        if origin.strip().lower() == "null":
            return self.null
        split = _split_origin(origin)
        if split is None:
            return False
        scheme, netloc = split
        if host is not None and split == _split_origin(f"{scheme}://{host}"):
            return True
        if self.loopback and _host_of(netloc) in _LOOPBACK_HOSTS:
            return True
        return split in self.origins


class ConnectionLimits:
    """Connections held per instance, per document and per client address. A slot is taken
    when a connection is admitted and given back when it ends (:meth:`Access.release`)."""

    def __init__(self, *, per_instance: int, per_document: int, per_address: int) -> None:
        self.per_instance = per_instance
        self.per_document = per_document
        self.per_address = per_address
        self.total = 0
        self.by_document: dict[str, int] = {}
        self.by_address: dict[str, int] = {}

    def take(self, document: str, address: str | None) -> Slot:
        if self.total >= self.per_instance:
            raise Refused(codes.FULL, "the server is full, try again later")
        if self.by_document.get(document, 0) >= self.per_document:
            raise Refused(codes.FULL, "the document has as many connections as it may have")
        if address is not None and self.by_address.get(address, 0) >= self.per_address:
            raise Refused(codes.FULL, "too many connections from this address")
        self.total += 1
        _count(self.by_document, document, 1)
        if address is not None:
            _count(self.by_address, address, 1)
        return _LimitSlot(self, document, address)

    def give_back(self, document: str, address: str | None) -> None:
        self.total -= 1
        _count(self.by_document, document, -1)
        if address is not None:
            _count(self.by_address, address, -1)


class _LimitSlot(Slot):
    """A place in :class:`ConnectionLimits` (its fields rather than a closure: every open
    connection holds one)."""

    __slots__ = ("address", "document", "limits")

    def __init__(self, limits: ConnectionLimits, document: str, address: str | None) -> None:
        self.limits: ConnectionLimits | None = limits
        self.document, self.address = document, address

    def release(self) -> None:
        limits, self.limits = self.limits, None
        if limits is not None:
            limits.give_back(self.document, self.address)


def _count(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


HOLDING_TRANSPORTS = frozenset({"websocket", "poll"})
"""Transports whose admitted requests hold a connection slot until released."""

RECHECK_CONCURRENCY = 16
"""Decisions a recheck pass waits for at once (a host's authorizer may ask its database)."""


class Holder:
    """What holds an admitted connection open (a transport), told what a recheck found."""

    __slots__ = ()  # a holder lives as long as its connection: no dictionary of its own

    def withdrawn(self, refused: Refused) -> None:
        """The access is gone: close the connection with ``refused.close_code``."""
        raise NotImplementedError

    def changed(self, access: Access) -> None:
        """The connection keeps going with ``access`` (another mode or user)."""
        raise NotImplementedError


@dataclass(eq=False, slots=True)
class Held:
    """An open connection admission decides on again: the request it was admitted with, the
    access it has now, and when it is next due."""

    request: AccessRequest
    access: Access
    holder: Holder
    due: float


class Admission:
    """Admits requests in a fixed order, cheapest refusal first: a valid name, an instance
    taking clients, an allowed origin, the authorizer's decision, then a connection slot.
    The host application's ``authorize`` hook, when there is one, is the authorizer: there is
    no second path around it."""

    def __init__(self, authorize: Authorize = open_access, *,
                 is_accepting: Callable[[], bool] = lambda: True,
                 origins: OriginPolicy | None = None,
                 limits: ConnectionLimits | None = None,
                 recheck_interval: float = 0.0) -> None:
        self.authorize = authorize
        self.is_accepting = is_accepting
        self.origins = origins or OriginPolicy(("*",))
        self.limits = limits
        self.recheck_interval = recheck_interval
        """Seconds between two decisions on one open connection; 0: decided at connect only."""
        self.stats = AdmissionStats()
        self.held: set[Held] = set()
        self._rechecking: asyncio.Task[None] | None = None

    async def admit(self, request: AccessRequest) -> Access:
        """The access granted to ``request``; raises :class:`Refused`. For a connection
        (``websocket``, ``poll``) the access holds a slot its transport must release."""
        stats = self.stats
        try:
            check_document_name(request.document)
        except Refused:
            stats.refused_bad_request += 1
            raise
        if not self.is_accepting():
            stats.refused_shutting_down += 1
            raise Refused(codes.SERVICE_RESTART, "shutting down")
        if not self.origins.allows(request.headers.get("origin"), request.headers.get("host")):
            stats.refused_origin += 1
            raise Refused(codes.FORBIDDEN, "pages from this origin may not connect")
        try:
            access = await self._decide(request, "access denied")
        except Refused as refused:
            if refused.status == codes.UNAUTHORIZED.http:
                stats.refused_unauthorized += 1
            else:
                stats.refused_forbidden += 1
            raise
        if self.limits is not None and request.transport in HOLDING_TRANSPORTS:
            address = request.client[0] if request.client else None
            try:
                access = replace(access, slot=self.limits.take(request.document, address))
            except Refused:
                stats.refused_full += 1
                raise
        stats.admitted += 1
        return access

    async def _decide(self, request: AccessRequest, refusal: str) -> Access:
        access = await self.authorize(request)
        if access is None:
            raise Refused(codes.FORBIDDEN, refusal)
        return access

    # --- open connections -------------------------------------------------------------------

    def hold(self, request: AccessRequest, access: Access, holder: Holder) -> Held | None:
        """Decide on this open connection again every ``recheck_interval`` seconds until
        :meth:`let_go`; None when rechecks are off."""
        if self.recheck_interval <= 0:
            return None
        held = Held(request, access, holder, time.monotonic() + self.recheck_interval)
        self.held.add(held)
        return held

    def let_go(self, held: Held | None) -> None:
        if held is not None:
            self.held.discard(held)

    def start(self) -> None:
        """Run the rechecks (while the server runs: :meth:`stop`)."""
        if self.recheck_interval > 0 and self._rechecking is None:
            self._rechecking = asyncio.get_running_loop().create_task(self._recheck_forever(),
                                                                      name="admission-rechecks")

    async def stop(self) -> None:
        task, self._rechecking = self._rechecking, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _recheck_forever(self) -> None:
        # Each connection is due on its own schedule (from its admission), so that connections
        # admitted together are not all decided again at one instant by a wake-up of all.
        step = max(self.recheck_interval / 8, 0.05)
        while True:
            await asyncio.sleep(step)
            await self.recheck_due(time.monotonic())

    async def recheck_due(self, now: float) -> None:
        """Decide again on every held connection due by ``now``, a few at a time."""
        due = [held for held in self.held if held.due <= now]
        gate = asyncio.Semaphore(RECHECK_CONCURRENCY)

        async def one(held: Held) -> None:
            async with gate:
                await self._recheck(held)

        await asyncio.gather(*(one(held) for held in due))

    async def _recheck(self, held: Held) -> None:
        held.due = time.monotonic() + self.recheck_interval
        if held not in self.held:
            return
        self.stats.rechecks += 1
        try:
            access = await self._decide(held.request, "access withdrawn")
        except Refused as refused:
            if held in self.held:
                self.held.discard(held)
                self.stats.withdrawn += 1
                log.info("access to %r withdrawn (%s): closing with %d", held.request.document,
                         refused.reason, refused.close_code)
                held.holder.withdrawn(refused)
            return
        except Exception as exc:  # the authorizer failed: not a decision, keep the connection
            self.stats.recheck_errors += 1
            log.warning("rechecking access to %r failed (the connection is kept): %s",
                        held.request.document, exc or type(exc).__name__)
            return
        current = held.access
        if held in self.held and (access.mode, dict(access.user)) != (current.mode, dict(current.user)):
            held.access = replace(access, slot=current.slot)
            self.stats.access_changed += 1
            held.holder.changed(held.access)
