"""The y-protocols wire format (y-websocket, y-protocols/sync, y-protocols/awareness), sans-I/O.

Pure functions over bytes. Every varint and length prefix is bounds-checked against the bytes
actually present, so a hostile length never turns into an allocation. Anything malformed raises
:class:`ProtocolError`; nothing here performs I/O or knows about asyncio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from collab.gate import MAX_DEPTH, json_depth_within

MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

AUTH_PERMISSION_DENIED = 0

MAX_AWARENESS_ENTRIES = 4096
"""Presence entries one awareness message may carry (a stock client relays every state it
knows, so a message holds at most one entry per person in the room)."""
MAX_AWARENESS_STATE_BYTES = 64 * 1024
"""The JSON text of one presence state, at most (cursors and names take a few hundred bytes)."""
MAX_AWARENESS_DEPTH = MAX_DEPTH

# lib0 writes JavaScript numbers as varuints; anything past 2**53 cannot come from a real client.
MAX_VAR_UINT = 2**53 - 1
_MAX_VAR_UINT_BYTES = 8


class ProtocolError(ValueError):
    """A message that does not follow the y-protocols wire format."""


# --- varints and length-prefixed fields -------------------------------------------------------


_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))


def write_var_uint(value: int) -> bytes:
    """Encode a non-negative integer as a lib0 varuint (7 bits per byte, little end first)."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if value < 0 or value > MAX_VAR_UINT:
        raise ValueError(f"varuint out of range: {value}")
    if value < 0x4000:
        return bytes((0x80 | (value & 0x7F), value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a varuint at ``pos``; returns (value, next position)."""
    if pos < len(data) and data[pos] < 0x80:  # most numbers of the protocol: one byte
        return data[pos], pos + 1
    value = 0
    shift = 0
    for i in range(_MAX_VAR_UINT_BYTES):
        if pos + i >= len(data):
            raise ProtocolError("truncated varint")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > MAX_VAR_UINT:
                raise ProtocolError("varint out of range")
            return value, pos + i + 1
        shift += 7
    raise ProtocolError("varint too long")


def write_var_bytes(payload: bytes) -> bytes:
    return write_var_uint(len(payload)) + payload


def read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError(f"declared length {length} exceeds the {len(data) - pos} bytes left")
    return bytes(data[pos:end]), end


def write_var_string(text: str) -> bytes:
    return write_var_bytes(text.encode("utf-8"))


def read_var_string(data: bytes, pos: int) -> tuple[str, int]:
    raw, pos = read_var_bytes(data, pos)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise ProtocolError("string is not valid UTF-8") from exc


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """"Here is my state vector; send me what I lack"."""

    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """The answer to a step 1: an update with everything the asker lacked."""

    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    """An incremental document update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    """Presence states; ``payload`` is the awareness update without its length prefix."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    """A request for every awareness state the server knows."""


@dataclass(frozen=True, slots=True)
class Auth:
    """An auth message; the only defined kind is "permission denied" with a reason."""

    denied: bool
    reason: str


Message = SyncStep1 | SyncStep2 | SyncUpdate | AwarenessUpdate | QueryAwareness | Auth


def decode_message(data: bytes) -> Message:
    """Decode one y-websocket message. Trailing bytes after the message are an error."""
    msg_type, pos = read_var_uint(data, 0)
    message: Message
    if msg_type == MSG_SYNC:
        sub_type, pos = read_var_uint(data, pos)
        payload, pos = read_var_bytes(data, pos)
        if sub_type == SYNC_STEP1:
            message = SyncStep1(payload)
        elif sub_type == SYNC_STEP2:
            message = SyncStep2(payload)
        elif sub_type == SYNC_UPDATE:
            message = SyncUpdate(payload)
        else:
            raise ProtocolError(f"unknown sync message type {sub_type}")
    elif msg_type == MSG_AWARENESS:
        payload, pos = read_var_bytes(data, pos)
        message = AwarenessUpdate(payload)
    elif msg_type == MSG_QUERY_AWARENESS:
        message = QueryAwareness()
    elif msg_type == MSG_AUTH:
        kind, pos = read_var_uint(data, pos)
        reason, pos = read_var_string(data, pos)
        message = Auth(kind == AUTH_PERMISSION_DENIED, reason)
    else:
        raise ProtocolError(f"unknown message type {msg_type}")
    if pos != len(data):
        raise ProtocolError(f"{len(data) - pos} unexpected bytes after the message")
    return message


_SYNC_PREFIX = {
    SYNC_STEP1: bytes([MSG_SYNC, SYNC_STEP1]),
    SYNC_STEP2: bytes([MSG_SYNC, SYNC_STEP2]),
    SYNC_UPDATE: bytes([MSG_SYNC, SYNC_UPDATE]),
}


def encode_sync_step1(state_vector: bytes) -> bytes:
    return _SYNC_PREFIX[SYNC_STEP1] + write_var_bytes(state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return _SYNC_PREFIX[SYNC_STEP2] + write_var_bytes(update)


_UPDATE_PREFIX = _SYNC_PREFIX[SYNC_UPDATE]


def encode_sync_update(update: bytes) -> bytes:
    return b"".join((_UPDATE_PREFIX, write_var_uint(len(update)), update))


def encode_awareness(payload: bytes) -> bytes:
    return bytes([MSG_AWARENESS]) + write_var_bytes(payload)


def encode_query_awareness() -> bytes:
    return bytes([MSG_QUERY_AWARENESS])


def encode_auth_denied(reason: str) -> bytes:
    return bytes([MSG_AUTH, AUTH_PERMISSION_DENIED]) + write_var_string(reason)


def encode_message(message: Message) -> bytes:
    """Encode any decoded message back to bytes (the inverse of :func:`decode_message`)."""
    if isinstance(message, SyncStep1):
        return encode_sync_step1(message.state_vector)
    if isinstance(message, SyncStep2):
        return encode_sync_step2(message.update)
    if isinstance(message, SyncUpdate):
        return encode_sync_update(message.update)
    if isinstance(message, AwarenessUpdate):
        return encode_awareness(message.payload)
    if isinstance(message, QueryAwareness):
        return encode_query_awareness()
    if isinstance(message, Auth):
        kind = AUTH_PERMISSION_DENIED if message.denied else 1
        return bytes([MSG_AUTH]) + write_var_uint(kind) + write_var_string(message.reason)
    raise TypeError(f"not a message: {message!r}")


# --- awareness payloads -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's presence: ``state`` is its JSON text, ``"null"`` meaning "gone"."""

    client_id: int
    clock: int
    state: str

    @property
    def is_removal(self) -> bool:
        return self.state == "null"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN/Infinity; JSON.parse does not


def _check_state(state: str) -> None:
    if state == "null":
        return
    if not json_depth_within(state, MAX_AWARENESS_DEPTH):
        raise ProtocolError(f"awareness state nested deeper than {MAX_AWARENESS_DEPTH} levels")
    try:
        json.loads(state, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("awareness state is not JSON") from exc


def decode_awareness_payload(payload: bytes, *, validate_json: bool = True) -> list[AwarenessEntry]:
    """Decode an awareness update. States are checked to be JSON, since every receiving
    client calls ``JSON.parse`` on them and one bad state would break all of them. The number
    of entries, the size of a state and its nesting are bounded before anything is parsed."""
    count, pos = read_var_uint(payload, 0)
    if count > MAX_AWARENESS_ENTRIES:
        raise ProtocolError(f"{count} awareness entries; at most {MAX_AWARENESS_ENTRIES} are taken")
    if count * 3 > len(payload) - pos:  # a client id, a clock and a length each
        raise ProtocolError(f"{count} awareness entries declared in {len(payload) - pos} bytes")
    entries: list[AwarenessEntry] = []
    for _ in range(count):
        client_id, pos = read_var_uint(payload, pos)
        clock, pos = read_var_uint(payload, pos)
        size, _ = read_var_uint(payload, pos)
        if size > MAX_AWARENESS_STATE_BYTES:
            raise ProtocolError(f"an awareness state of {size} bytes; at most "
                                f"{MAX_AWARENESS_STATE_BYTES} are taken")
        state, pos = read_var_string(payload, pos)
        if validate_json:
            _check_state(state)
        entries.append(AwarenessEntry(client_id, clock, state))
    if pos != len(payload):
        raise ProtocolError("unexpected bytes after the awareness entries")
    return entries


def encode_awareness_payload(entries: list[AwarenessEntry]) -> bytes:
    parts = [write_var_uint(len(entries))]
    for entry in entries:
        parts.append(write_var_uint(entry.client_id))
        parts.append(write_var_uint(entry.clock))
        parts.append(write_var_string(entry.state))
    return b"".join(parts)
