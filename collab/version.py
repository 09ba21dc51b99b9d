"""Versions: what a room told a client last, as a token the client sends back.

A state vector alone does not say what a client has: deletions do not advance it, and every
diff against it repeats the whole delete set. So each answer of the HTTP fallback carries a
:class:`Version`, which the client returns with its next request, to whichever instance:

- ``incarnation`` and ``seq``: a room's lifetime on one instance (random, so it names the
  instance too) and a position in its broadcast history. The same room answers with exactly
  the frames after ``seq``.
- ``document`` and ``presence``: digests of the document (state vector and delete set, in a
  canonical order) and of the live presence the client was brought up to. Any other instance,
  or the same one after the position left its history, compares them with its own: equal means
  "nothing new", exactly; different means a diff against the client's state vector.

A digest may be older than the position (an answer may reuse the digest of an earlier state):
it still names a state the client contains, so "equal" stays true. Pure: no I/O, no engine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from collab.protocol import AwarenessEntry, ProtocolError, read_var_uint, write_var_uint

FORMAT = 1
INCARNATION_BYTES = 8
DOCUMENT_DIGEST_BYTES = 16
PRESENCE_DIGEST_BYTES = 8
MAX_TOKEN_CHARS = 128


class BadVersion(ValueError):
    """A version token this server did not issue (or that was damaged on the way)."""


@dataclass(frozen=True, slots=True)
class Version:
    incarnation: bytes
    seq: int
    document: bytes
    presence: bytes

    def encode(self) -> str:
        """URL-safe text (base64url without padding), about 55 characters."""
        raw = (bytes([FORMAT]) + self.incarnation + write_var_uint(self.seq) + self.document
               + self.presence)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Version:
        if len(text) > MAX_TOKEN_CHARS:
            raise BadVersion("the version token is too long")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise BadVersion("the version token is not base64url") from None
        if not raw or raw[0] != FORMAT:
            raise BadVersion("the version token is of an unknown format")
        pos = 1 + INCARNATION_BYTES
        incarnation = raw[1:pos]
        try:
            seq, pos = read_var_uint(raw, pos)
        except ProtocolError as exc:
            raise BadVersion(f"the version token is damaged: {exc}") from None
        document = raw[pos:pos + DOCUMENT_DIGEST_BYTES]
        presence = raw[pos + DOCUMENT_DIGEST_BYTES:]
        if (len(incarnation) != INCARNATION_BYTES or len(document) != DOCUMENT_DIGEST_BYTES
                or len(presence) != PRESENCE_DIGEST_BYTES):
            raise BadVersion("the version token has the wrong length")
        return cls(incarnation, seq, document, presence)


def document_digest(state_vector: bytes, delete_set: bytes) -> bytes:
    """A digest of a document's content: its state vector and ``delete_set``, the update a
    document gives for its own state vector (no structs, only what is deleted). Both are put
    in a canonical order first, so equal documents on different instances digest equally;
    bytes that do not parse as expected are digested as they are (still exact: equal bytes
    mean equal content; only the chance of a match across instances is lost)."""
    digest = hashlib.blake2b(digest_size=DOCUMENT_DIGEST_BYTES)
    digest.update(_canonical_state_vector(state_vector))
    digest.update(b"\xff")
    digest.update(_canonical_delete_set(delete_set))
    return digest.digest()


def presence_digest(entries: Iterable[AwarenessEntry]) -> bytes:
    """A digest of the live presence: who is there, at which clock (a clock names one state)."""
    digest = hashlib.blake2b(digest_size=PRESENCE_DIGEST_BYTES)
    for client_id, clock in sorted((e.client_id, e.clock) for e in entries if not e.is_removal):
        digest.update(write_var_uint(client_id) + write_var_uint(clock))
    return digest.digest()


def _canonical_state_vector(state_vector: bytes) -> bytes:
    try:
        count, pos = read_var_uint(state_vector, 0)
        clocks = []
        for _ in range(count):
            client, pos = read_var_uint(state_vector, pos)
            clock, pos = read_var_uint(state_vector, pos)
            clocks.append((client, clock))
        if pos != len(state_vector):
            return state_vector
    except ProtocolError:
        return state_vector
    return b"".join(write_var_uint(c) + write_var_uint(k) for c, k in sorted(clocks) if k)


def _canonical_delete_set(update: bytes) -> bytes:
    """The delete set of a struct-less Yjs v1 update, clients and ranges sorted, adjacent
    ranges joined."""
    try:
        structs, pos = read_var_uint(update, 0)
        if structs != 0:
            return update
        count, pos = read_var_uint(update, pos)
        ranges: dict[int, list[tuple[int, int]]] = {}
        for _ in range(count):
            client, pos = read_var_uint(update, pos)
            length, pos = read_var_uint(update, pos)
            spans = ranges.setdefault(client, [])
            for _ in range(length):
                clock, pos = read_var_uint(update, pos)
                size, pos = read_var_uint(update, pos)
                spans.append((clock, size))
        if pos != len(update):
            return update
    except ProtocolError:
        return update
    out = bytearray()
    for client in sorted(ranges):
        merged: list[list[int]] = []
        for clock, size in sorted(ranges[client]):
            if size == 0:
                continue
            if merged and clock <= merged[-1][0] + merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], clock + size - merged[-1][0])
            else:
                merged.append([clock, size])
        if merged:
            out += write_var_uint(client) + write_var_uint(len(merged))
            for clock, size in merged:
                out += write_var_uint(clock) + write_var_uint(size)
    return bytes(out)
