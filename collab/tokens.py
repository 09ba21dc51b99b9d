"""Signed access tokens: JWTs (HS256) naming a document (or a prefix of names) and a mode.

An operator's backend can mint them with any JWT library; ``collab token`` mints them here.
The claims (documented in docs/protocol.md):

- ``exp`` (required): expiry, seconds since the epoch; honoured with at most
  :data:`LEEWAY` seconds of clock skew.
- ``doc``: the exact document name as it appears in the URL (still percent-encoded), or
  ``doc_prefix``: every document whose name starts with it. Exactly one of the two.
- ``mode``: ``"read"`` (see the document and presence live, change nothing) or ``"write"``.
- ``sub``, ``name`` (optional strings): who it is; ``name`` is shown in presence.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jwt

from collab import codes
from collab.admission import Access, AccessRequest, Refused

ALGORITHM = "HS256"
LEEWAY = 5.0
"""Seconds of clock skew allowed on ``exp`` (and ``nbf``/``iat`` when present)."""
QUERY_PARAMETER = "token"
"""The query parameter stock clients can set (the y-websocket provider's ``params``)."""

_TTL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h`` or ``7d`` as seconds."""
    match = _TTL.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (seconds, or a number with s, m, h or d)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"the duration must be positive, got {text!r}")
    return seconds


def mint(secret: str, *, mode: str, ttl: float, doc: str | None = None,
         doc_prefix: str | None = None, sub: str | None = None, name: str | None = None,
         now: float | None = None) -> str:
    """A token for ``doc`` (exact name) or ``doc_prefix``, valid for ``ttl`` seconds."""
    if (doc is None) == (doc_prefix is None):
        raise ValueError("a token names either a document or a document prefix")
    if mode not in ("read", "write"):
        raise ValueError(f"mode must be read or write, got {mode!r}")
    claims: dict[str, Any] = {"exp": int((time.time() if now is None else now) + ttl), "mode": mode}
    if doc is not None:
        claims["doc"] = doc
    else:
        claims["doc_prefix"] = doc_prefix
    for key, value in (("sub", sub), ("name", name)):
        if value is not None:
            claims[key] = value
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def token_of(request: AccessRequest) -> str | None:
    """The token a request carries: ``Authorization: Bearer`` first, then ``?token=``."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.query.get(QUERY_PARAMETER) or None


class TokenAuthorizer:
    """The built-in :data:`~collab.admission.Authorize` when a secret is set."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def __repr__(self) -> str:
        return "TokenAuthorizer(…)"  # never the secret

    async def __call__(self, request: AccessRequest) -> Access:
        token = token_of(request)
        if token is None:
            raise Refused(codes.UNAUTHORIZED, "a token is required (?token=… or Authorization: Bearer)")
        claims = self.verify(token)
        if not covers(claims, request.document):
            raise Refused(codes.FORBIDDEN, "the token is for another document")
        user = {key: claims[key] for key in ("sub", "name") if isinstance(claims.get(key), str)}
        return Access(claims["mode"], user, expires=float(claims["exp"]))

    def mint(self, *, doc: str, mode: str, ttl: float, now: float | None = None) -> str:
        """A token for exactly ``doc``, signed with this server's secret (share links)."""
        return mint(self._secret, mode=mode, ttl=ttl, doc=doc, now=now)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, checked; raises :class:`Refused` (401) for any fault."""
        try:
            claims: dict[str, Any] = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                                leeway=LEEWAY, options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise Refused(codes.UNAUTHORIZED, "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Refused(codes.UNAUTHORIZED, f"invalid token: {_reason(exc)}") from None
        if claims.get("mode") not in ("read", "write"):
            raise Refused(codes.UNAUTHORIZED, "invalid token: mode must be read or write")
        doc, prefix = claims.get("doc"), claims.get("doc_prefix")
        if (doc is None) == (prefix is None) or not isinstance(doc if prefix is None else prefix, str):
            raise Refused(codes.UNAUTHORIZED, "invalid token: it must name doc or doc_prefix")
        return claims


def covers(claims: dict[str, Any], document: str) -> bool:
    if "doc" in claims:
        return bool(claims["doc"] == document)
    return document.startswith(claims["doc_prefix"])


def _reason(exc: jwt.InvalidTokenError) -> str:
    """PyJWT's message for people, without the token itself (it never contains it)."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.DecodeError):
        return "not a JWT"
    return str(exc) or type(exc).__name__
