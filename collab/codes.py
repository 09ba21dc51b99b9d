"""What the server answers when it refuses or ends something: one table, for every transport.

Each row pairs a WebSocket close code with the HTTP status that means the same, so the
y-websocket transport, the HTTP fallback and the document API refuse a thing the same way.
Codes 4400-4499 mirror HTTP 4xx: the stock y-websocket client treats them as final and stops
reconnecting; every other code (4503 included) makes it reconnect. The table is documented in
``docs/protocol.md``; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of the table. ``close`` or ``http`` is None where the outcome has no such form."""

    close: int | None
    http: int | None
    meaning: str


NORMAL = Outcome(1000, None, "normal closure")
BAD_MESSAGE = Outcome(1002, 400, "bad message (malformed frame, bad awareness JSON)")
TEXT_FRAME = Outcome(1003, None, "text frame (the protocol is binary)")
INVALID_UPDATE = Outcome(1007, 400, "invalid Yjs update (refused by the update gate)")
MESSAGE_TOO_LARGE = Outcome(1009, 413, "message too large")
INTERNAL_ERROR = Outcome(1011, 500, "internal error (engine panic etc.)")
SERVICE_RESTART = Outcome(1012, 503, "service restart (SIGTERM): reconnect at once")
TRY_AGAIN = Outcome(1013, 503, "try again (slow client, store backlog full, room being rebuilt)")
BAD_REQUEST = Outcome(1008, 400, "bad request (invalid document name, malformed request)")
UNAUTHORIZED = Outcome(4401, 401, "unauthorized (no, expired or bad token)")
FORBIDDEN = Outcome(4403, 403, "forbidden (token for another document, origin not allowed, "
                               "access withdrawn)")
READ_ONLY = Outcome(None, 403, "read-only: changes refused, the client stays (WebSocket: one auth "
                               "message permission denied, reason read-only)")
DOCUMENT_DELETED = Outcome(4410, 410, "document deleted (404 when it never existed)")
DOCUMENT_TOO_LARGE = Outcome(4413, 413, "document too large")
PRESENCE_TOO_LARGE = Outcome(4413, 413, "presence too large (a state, or one client's entries)")
RATE_LIMITED = Outcome(4429, 429, "rate limited")
FULL = Outcome(4503, 503, "server or document full (connection limits)")
DOCUMENT_DAMAGED = Outcome(4500, 500, "document damaged in the store (refused until repaired; "
                                      "`collab db check` lists why)")
REQUEST_HEAD_TOO_LARGE = Outcome(None, 431, "request head too large")

TABLE: tuple[Outcome, ...] = (
    BAD_MESSAGE, TEXT_FRAME, INVALID_UPDATE, MESSAGE_TOO_LARGE, INTERNAL_ERROR, SERVICE_RESTART,
    TRY_AGAIN, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, READ_ONLY, DOCUMENT_DELETED, DOCUMENT_TOO_LARGE,
    PRESENCE_TOO_LARGE, RATE_LIMITED, FULL, DOCUMENT_DAMAGED, REQUEST_HEAD_TOO_LARGE,
)
"""Every documented outcome, in the order of the table in ``docs/protocol.md``."""

def http_status(close_code: int) -> int:
    """The HTTP status that means what ``close_code`` means (for a transport without
    connections, which answers where the other would close); 500 for a code not in the table."""
    for outcome in TABLE:
        if outcome.close == close_code and outcome.http is not None:
            return outcome.http
    return INTERNAL_ERROR.http or 500


class Refused(Exception):
    """Something refused with one row of the table: answer ``status`` over HTTP (a request,
    or a WebSocket before its upgrade), or close with ``close_code`` a connection already open.
    Admission raises it, and so does a room for input past a limit."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        assert outcome.http is not None and outcome.close is not None
        self.status: int = outcome.http
        self.close_code: int = outcome.close
        self.reason = reason


READ_ONLY_REASON = "read-only"
"""The reason of the y-protocols auth "permission denied" message a read-only member gets once
(it is not closed: it keeps receiving the document and presence)."""


def close_reason(text: str, limit: int = 123) -> str:
    """A close reason within the 123 UTF-8 bytes a close frame allows, cut at a word."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    cut = data[:limit - 3].decode("utf-8", errors="ignore")
    return cut.rsplit(" ", 1)[0] + "..."
