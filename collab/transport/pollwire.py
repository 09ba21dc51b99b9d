"""The HTTP fallback's wire format, sans-I/O: request parameters and bodies.

A body, in either direction, is a sequence of y-protocols messages (the very bytes a WebSocket
frame would carry), each prefixed with its length as a lib0 varuint. A request's parameters
travel in the query string, so that ``navigator.sendBeacon`` (which sets no headers) can say
goodbye with the same URL:

| parameter | meaning |
|---|---|
| ``client`` | the client's own key, 8-64 characters of ``A-Za-z0-9_-``, the same on every request |
| ``version`` | the version token of the last answer (absent on the first request) |
| ``wait=1`` | park the request until there is something to send, or the poll timeout passes |
| ``bye=1`` | the client is leaving: its presence goes at once |
| ``acks=1`` | durable acks, as over the WebSocket |

A body that holds a sync step 1 asks to be brought up to date (a poll); one without is a send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collab import protocol
from collab.protocol import ProtocolError, read_var_bytes, write_var_bytes
from collab.version import BadVersion, Version

CLIENT_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}")
VERSION_HEADER = "collab-version"


class BadRequest(ValueError):
    """A request the fallback cannot take; the message is the reason given to the client."""


def encode_body(frames: Iterable[bytes]) -> bytes:
    return b"".join(write_var_bytes(frame) for frame in frames)


def decode_body(body: bytes) -> list[bytes]:
    """The messages of a body, each still encoded. Raises :class:`ProtocolError`."""
    frames = []
    pos = 0
    while pos < len(body):
        frame, pos = read_var_bytes(body, pos)
        frames.append(frame)
    return frames


def _flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "0").lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise BadRequest(f"{name}={value!r} is not a flag (use 1 or 0)")


@dataclass(frozen=True, slots=True)
class PollQuery:
    client: str
    since: Version | None
    wait: bool
    bye: bool
    acks: bool


def parse_query(query: Mapping[str, str]) -> PollQuery:
    client = query.get("client", "")
    if not CLIENT_KEY.fullmatch(client):
        raise BadRequest("client must be 8-64 characters of A-Z, a-z, 0-9, _ and -")
    since = None
    if query.get("version"):
        try:
            since = Version.decode(query["version"])
        except BadVersion as exc:
            raise BadRequest(str(exc)) from None
    return PollQuery(client, since, _flag(query, "wait"), _flag(query, "bye"), _flag(query, "acks"))


@dataclass(frozen=True, slots=True)
class PollBody:
    state_vector: bytes | None
    """The client's state vector when the body asks to be brought up to date (a poll)."""
    messages: list[protocol.Message]
    """Everything else, in order."""

    @property
    def changes(self) -> list[bytes]:
        """The document updates it carries."""
        return [m.update for m in self.messages
                if isinstance(m, (protocol.SyncStep2, protocol.SyncUpdate))]


def parse_body(body: bytes) -> PollBody:
    """Decode and check a whole body before anything in it is used, so that a bad one changes
    nothing. Raises :class:`ProtocolError`."""
    state_vector = None
    messages: list[protocol.Message] = []
    for frame in decode_body(body):
        message = protocol.decode_message(frame)
        if isinstance(message, protocol.SyncStep1):
            if state_vector is not None:
                raise ProtocolError("more than one sync step 1 in a body")
            state_vector = message.state_vector
            continue
        if isinstance(message, protocol.AwarenessUpdate):
            protocol.decode_awareness_payload(message.payload)  # bad JSON refuses the body
        messages.append(message)
    return PollBody(state_vector, messages)
