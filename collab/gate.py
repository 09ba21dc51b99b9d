"""The update gate: our own strict decoder of the Yjs v1 update format, in front of the engine.

The engine (Yrs, through pycrdt) trusts its input: a count becomes an allocation, a clock near
2**32 wraps, an out-of-order struct is integrated behind a hole that its own encoder later hands
to new joiners, a deep value recurses until the stack ends. So nothing reaches it that this
module has not read end to end first, by these rules:

- every count is bounded by the bytes that remain, every length by the message;
- every clock, and every clock plus length, is below :data:`MAX_CLOCK`;
- content kinds and shared-type references are the ones both Yjs and Yrs read the same way;
- strings are UTF-8, nested values are at most :data:`MAX_DEPTH` deep (checked before parsing);
- references are consistent: a client's structs are contiguous, refer only to its own earlier
  clocks, and a parent inside the update is a shared type;
- nothing follows the delete set, and no client appears twice in a section.

Against a document's state vector, :func:`plan` also says which part of an update the engine can
integrate now and which part waits for changes the document does not have yet (structs after a
gap in their client's clocks or whose origins are missing, deletions of unknown items). The
engine is only ever given the first part, so it never holds anything back on its own.

Pure functions over bytes; the only error is :class:`InvalidUpdate`, with a ``reason`` slug
(one of :data:`REASONS`) for counting.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_CLOCK = 2**30
"""Exclusive bound on every clock and clock + length. A client's clock counts what that one
client inserted in one session; Yrs keeps clocks in 32 bits and subtracts them as signed ones."""

MAX_CLIENT = 2**53 - 1
"""Client ids are JavaScript numbers (Yjs draws 32-bit ones; Yrs 53-bit ones)."""

SLICE = 1000
"""Structs the engine is given in one transaction at most: it integrates a run of items that
each follow the one before in time and memory quadratic in the run (20,000 one-character items
in one update took 243 MiB; in slices of 1,000, nothing measurable)."""

MAX_DEPTH = 64
"""Nesting of values (Any encoding and JSON text) beyond which an update is refused; the
engine's decoders recurse per level."""

REASONS = ("truncated", "varint", "count", "clock", "length", "content", "unsupported", "utf8",
           "json", "depth", "reference", "duplicate", "trailing", "flags", "origins", "waiting",
           "engine")
"""Every ``InvalidUpdate.reason``: this module raises all but the last three, which the
document's order adds (an item's right origin not to the right of its origin, see
:mod:`collab.order`) and the engine seam (too much already waits for dependencies; the engine
refused an input on its own)."""

_MAX_VAR_UINT = 2**53 - 1
_ID_BITS = 0x80 | 0x40  # has origin, has right origin
_HAS_ORIGIN = 0x80
_HAS_RIGHT_ORIGIN = 0x40
_HAS_PARENT_SUB = 0x20
_GC = 0
_SKIP = 10
_DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC = range(1, 10)
_XML_ELEMENT = 3
_XML_HOOK = 5
_CONSTANTS = frozenset({127, 126, 121, 120})  # undefined, null, false, true
_TYPE_REFS = frozenset({0, 1, 2, 3, 4, 6})  # array, map, text, xml element, fragment, xml text


@dataclass(slots=True)
class Refusals:
    """What was refused or held back at the gate, and what the engine did that it should not,
    since the instance started (rendered by /metrics): one counter per refusal reason (see
    :data:`REASONS`), then the rest."""

    truncated: int = 0
    varint: int = 0
    count: int = 0
    clock: int = 0
    length: int = 0
    content: int = 0
    unsupported: int = 0
    utf8: int = 0
    json: int = 0
    depth: int = 0
    reference: int = 0
    duplicate: int = 0
    trailing: int = 0
    flags: int = 0
    origins: int = 0
    waiting: int = 0
    """Refused because too much already waits for dependencies (see ``held``)."""
    engine: int = 0
    held: int = 0
    """Updates part of which had to wait for changes the document did not have yet."""
    engine_panics: int = 0
    rebuilds: int = 0
    """Rooms rebuilt from the store after the engine failed on their document."""

    def refused(self, reason: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)

    def by_reason(self) -> dict[str, int]:
        return {reason: getattr(self, reason) for reason in REASONS if getattr(self, reason)}


class InvalidUpdate(ValueError):
    """Bytes refused as a Yjs update or state vector; ``reason`` names the rule broken."""

    def __init__(self, message: str, reason: str = "content") -> None:
        super().__init__(message)
        self.reason = reason


def _truncated() -> InvalidUpdate:
    return InvalidUpdate("truncated: the update ends inside a field", "truncated")


# --- primitives -----------------------------------------------------------------------------


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varuint of at most 8 bytes and 2**53 - 1."""
    try:
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
        value = byte & 0x7F
        byte = data[pos + 1]
        if byte < 0x80:
            return value | byte << 7, pos + 2
        value |= (byte & 0x7F) << 7
        shift = 14
        pos += 2
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value > _MAX_VAR_UINT:
                    raise InvalidUpdate("a number past 2**53", "varint")
                return value, pos
            shift += 7
            if shift > 49:
                raise InvalidUpdate("a number longer than 8 bytes", "varint")
    except IndexError:
        raise _truncated() from None


_CLIENTS: dict[bytes, tuple[bytes, int, int]] = {}
"""Encoded client ids and their values, by the first 4 bytes of the encoding: a document has few
clients, and their ids (53-bit from Yrs, 32-bit from Yjs) are the longest numbers of every update.
The key must stop inside the id: the bytes after it (a clock, an info byte) change every edit."""


def _client(data: bytes, pos: int) -> tuple[int, int]:
    """:func:`_uint` for a client id, through :data:`_CLIENTS`. A varuint ends at its first byte
    below 0x80, so no valid encoding is a prefix of another: when the cached encoding starts at
    ``pos``, it is exactly the number there."""
    known = _CLIENTS.get(data[pos:pos + 4])
    if known is not None and data.startswith(known[0], pos):
        return known[1], pos + known[2]
    value, end = _uint(data, pos)
    if end - pos >= 4:
        if len(_CLIENTS) >= 4096:
            _CLIENTS.clear()
        _CLIENTS[data[pos:pos + 4]] = (data[pos:end], value, end - pos)
    return value, end


def _int(data: bytes, pos: int) -> int:
    """Skip a lib0 signed varint (sign and 6 bits in its first byte), bounded like :func:`_uint`."""
    value = 0
    shift = 0
    for length in range(8):
        try:
            byte = data[pos + length]
        except IndexError:
            raise _truncated() from None
        if length == 0:
            value = byte & 0x3F
            shift = 6
        else:
            value |= (byte & 0x7F) << shift
            shift += 7
        if byte < 0x80:
            if value > _MAX_VAR_UINT:
                raise InvalidUpdate("a number past 2**53", "varint")
            return pos + length + 1
    raise InvalidUpdate("a number longer than 8 bytes", "varint")


def _bytes(data: bytes, pos: int) -> tuple[int, int]:
    """A length-prefixed byte field: returns (start, end)."""
    length, pos = _uint(data, pos)
    end = pos + length
    if end > len(data):
        raise InvalidUpdate(f"a field of {length} bytes with {len(data) - pos} left", "truncated")
    return pos, end


def _string(data: bytes, pos: int) -> tuple[str, int]:
    start, end = _bytes(data, pos)
    try:
        return data[start:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise InvalidUpdate("a string that is not UTF-8", "utf8") from None


def _text_length(raw: bytes) -> int:
    """The clock length of string content: UTF-16 code units, as JavaScript strings count."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUpdate("a string that is not UTF-8", "utf8") from None
    return len(text) if len(text) == len(raw) else len(text.encode("utf-16-le")) // 2


def _clock(value: int) -> int:
    if value >= MAX_CLOCK:
        raise InvalidUpdate(f"clock {value} is past {MAX_CLOCK}", "clock")
    return value


_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def json_depth_within(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when JSON ``text`` nests at most ``limit`` levels, decided without parsing it (an
    unbalanced text counts as too deep: it is no JSON either)."""
    if text.count("[") + text.count("{") <= limit:
        return True
    brackets = _NOT_BRACKETS.sub("", _JSON_STRINGS.sub("", text))
    for _ in range(limit):
        if not brackets:
            return True
        brackets = _INNERMOST.sub("", brackets)
    return not brackets


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_json(text: str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`InvalidUpdate` unless ``text`` is strict JSON nested at most ``limit`` deep."""
    if not json_depth_within(text, limit):
        raise InvalidUpdate(f"JSON nested deeper than {limit} levels", "depth")
    try:
        json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidUpdate("content that is not JSON", "json") from None


def _json(data: bytes, pos: int) -> int:
    text, pos = _string(data, pos)
    check_json(text)
    return pos


def _any(data: bytes, pos: int) -> int:
    """Skip one lib0 Any value, iteratively, with every count bounded by the bytes left."""
    open_counts: list[int] = []  # entries left in each open array (>0) or map (<0)
    while True:
        try:
            tag = data[pos]
        except IndexError:
            raise _truncated() from None
        pos += 1
        if tag in _CONSTANTS:
            pass
        elif tag == 125:
            pos = _int(data, pos)
        elif tag == 124 or tag == 123 or tag == 122:
            pos += 4 if tag == 124 else 8
            if pos > len(data):
                raise _truncated()
        elif tag == 119:
            _text, pos = _string(data, pos)
        elif tag == 116:
            _start, pos = _bytes(data, pos)
        elif tag == 117 or tag == 118:
            count, pos = _uint(data, pos)
            per_entry = 1 if tag == 117 else 2
            if count * per_entry > len(data) - pos:
                raise InvalidUpdate(f"{count} entries declared, {len(data) - pos} bytes left", "count")
            if count:
                if len(open_counts) >= MAX_DEPTH:
                    raise InvalidUpdate(f"a value nested deeper than {MAX_DEPTH} levels", "depth")
                if tag == 118:
                    _key, pos = _string(data, pos)
                    open_counts.append(-count)
                else:
                    open_counts.append(count)
                continue
        else:
            raise InvalidUpdate(f"unknown value tag {tag}", "content")
        # One value is complete: close every container it completes.
        while open_counts:
            left = open_counts[-1]
            left += 1 if left < 0 else -1
            if left:
                open_counts[-1] = left
                if left < 0:
                    _key, pos = _string(data, pos)
                break
            open_counts.pop()
        else:
            return pos


# --- the update format --------------------------------------------------------------------


GC_STRUCT = _GC
SKIP_STRUCT = _SKIP


class Struct(NamedTuple):
    """One struct of an update as the document's order needs it (see :mod:`collab.order`)."""

    client: int
    clock: int
    length: int
    kind: int
    """:data:`GC_STRUCT`, :data:`SKIP_STRUCT` or an item's content kind."""
    origin: tuple[int, int] | None
    right_origin: tuple[int, int] | None
    parent: str | tuple[int, int] | None
    """For an item without origins: the root type's name or the id of its parent's item."""
    parent_id: tuple[int, int] | None
    key: str | None
    """For an item without origins that is a map entry: its key."""


@dataclass(slots=True)
class _Client:
    """One client's section of the struct list, as read."""

    client: int
    header: int
    """Offset of the section (its struct count)."""
    first: int
    """Offset of its first struct."""
    end: int
    """Offset just after its last struct."""
    count: int
    clock: int
    end_clock: int
    checkpoints: list[tuple[int, int, int, int, int]] | None
    """(offset, clock, structs before, dependency client, dependency clock): the structs from
    here on need the document to hold ``dependency clock`` of ``dependency client``."""
    cuts: list[tuple[int, int]] | None = None
    """(offset, clock) of every :data:`SLICE`-th struct, in a section longer than that."""
    structs_from: int = 0
    """Index of its first struct in :attr:`_Read.structs`."""


@dataclass(slots=True)
class _Read:
    clients: list[_Client]
    delete_set: int
    """Offset of the delete set."""
    deletes_to: dict[int, int]
    """The highest deleted clock + 1 per client."""
    type_ids: set[tuple[int, int]]
    parent_refs: list[tuple[int, int]]
    structs: list[Struct]


def _read(data: bytes, state: Mapping[int, int] | None) -> _Read:
    """Read and check a whole update. With ``state``, also note each point from which a client's
    structs depend on something ``state`` does not cover."""
    size = len(data)
    count, pos = _uint(data, 0)
    if count * 5 > size - pos:  # a section is at least its count, client, clock and one struct
        raise InvalidUpdate(f"{count} clients declared, {size - pos} bytes left", "count")
    clients: list[_Client] = []
    seen: set[int] = set()
    type_ids: set[tuple[int, int]] = set()
    parent_refs: list[tuple[int, int]] = []
    out: list[Struct] = []
    for _ in range(count):
        header = pos
        structs_from = len(out)
        structs, pos = _uint(data, pos)
        if structs == 0:
            raise InvalidUpdate("a client section with no structs", "count")
        if structs * 2 > size - pos:
            raise InvalidUpdate(f"{structs} structs declared, {size - pos} bytes left", "count")
        client, pos = _client(data, pos)
        if client in seen:
            raise InvalidUpdate(f"client {client} appears twice", "duplicate")
        seen.add(client)
        clock, pos = _uint(data, pos)
        start_clock = _clock(clock)
        known = state.get(client, 0) if state is not None else 0
        checkpoints: list[tuple[int, int, int, int, int]] | None = None
        if state is not None and clock > known:
            checkpoints = [(pos, clock, 0, client, clock - 1)]  # a gap before this update
        first = pos
        cuts: list[tuple[int, int]] | None = [] if structs > SLICE else None
        for index in range(structs):
            struct_at = pos
            if cuts is not None and index and index % SLICE == 0:
                cuts.append((pos, clock))
            try:
                info = data[pos]
            except IndexError:
                raise _truncated() from None
            pos += 1
            kind = info & 0x1F
            if kind in (_GC, _SKIP):
                if info != kind:
                    raise InvalidUpdate(f"flags {info:#x} on a GC or skip struct", "flags")
                length, pos = _uint(data, pos)
                if length == 0:
                    raise InvalidUpdate("a struct of length 0", "length")
                if kind == _SKIP and state is not None and known < clock + length:
                    if checkpoints is None:
                        checkpoints = []
                    checkpoints.append((struct_at, clock, index, client, clock + length - 1))
                out.append(Struct(client, clock, length, kind, None, None, None, None, None))
            else:
                origin = right_origin = parent_id = None
                parent: str | tuple[int, int] | None = None
                key: str | None = None
                if info & _ID_BITS:
                    if info & _HAS_ORIGIN:
                        ref_client, pos = _client(data, pos)
                        ref_clock, pos = _uint(data, pos)
                        origin = (ref_client, ref_clock)
                        if _missing(client, clock, ref_client, ref_clock, state):
                            checkpoints = _note(checkpoints, struct_at, clock, index, ref_client, ref_clock)
                    if info & _HAS_RIGHT_ORIGIN:
                        ref_client, pos = _client(data, pos)
                        ref_clock, pos = _uint(data, pos)
                        right_origin = (ref_client, ref_clock)
                        if _missing(client, clock, ref_client, ref_clock, state):
                            checkpoints = _note(checkpoints, struct_at, clock, index, ref_client, ref_clock)
                else:
                    parent_info, pos = _uint(data, pos)
                    if parent_info == 1:
                        parent, pos = _string(data, pos)
                    elif parent_info == 0:
                        ref_client, pos = _client(data, pos)
                        ref_clock, pos = _uint(data, pos)
                        parent = parent_id = (ref_client, ref_clock)
                        parent_refs.append(parent_id)
                        if _missing(client, clock, ref_client, ref_clock, state):
                            checkpoints = _note(checkpoints, struct_at, clock, index, ref_client, ref_clock)
                    else:
                        raise InvalidUpdate(f"parent kind {parent_info}", "flags")
                    if info & _HAS_PARENT_SUB:
                        key, pos = _string(data, pos)
                if kind == _STRING:  # the common case, inline
                    start, pos = _bytes(data, pos)
                    length = _text_length(data[start:pos])
                    if length == 0:
                        raise InvalidUpdate("an empty string item", "length")
                else:
                    length, pos = _content(data, pos, kind)
                    if kind == _TYPE:
                        type_ids.add((client, clock))
                out.append(Struct(client, clock, length, kind, origin, right_origin, parent,
                                  parent_id, key))
            clock += length
            if clock >= MAX_CLOCK:
                raise InvalidUpdate(f"clock {clock} is past {MAX_CLOCK}", "clock")
        clients.append(_Client(client, header, first, pos, structs, start_clock, clock, checkpoints,
                               cuts, structs_from))
    delete_set = pos
    deletes_to = _read_delete_set(data, pos)
    _check_parents(clients, type_ids, parent_refs)
    return _Read(clients, delete_set, deletes_to, type_ids, parent_refs, out)


def _missing(client: int, clock: int, ref_client: int, ref_clock: int,
             state: Mapping[int, int] | None) -> bool:
    """Check a reference of struct ``client:clock``; True when ``state`` does not hold it."""
    if ref_clock >= MAX_CLOCK:
        raise InvalidUpdate(f"clock {ref_clock} is past {MAX_CLOCK}", "clock")
    if ref_client == client:
        if ref_clock >= clock:
            raise InvalidUpdate(f"struct {client}:{clock} refers to its own later clock {ref_clock}",
                                "reference")
        return False
    return state is not None and state.get(ref_client, 0) <= ref_clock


def _note(checkpoints: list[tuple[int, int, int, int, int]] | None, offset: int, clock: int,
          index: int, needs_client: int, needs_clock: int) -> list[tuple[int, int, int, int, int]]:
    if checkpoints is None:
        checkpoints = []
    checkpoints.append((offset, clock, index, needs_client, needs_clock))
    return checkpoints


def _content(data: bytes, pos: int, kind: int) -> tuple[int, int]:
    """Skip an item's content; returns (its length in clock units, position after it)."""
    if kind == _STRING:
        start, end = _bytes(data, pos)
        length = _text_length(data[start:end])
        if length == 0:
            raise InvalidUpdate("an empty string item", "length")
        return length, end
    if kind == _DELETED:
        length, pos = _uint(data, pos)
        if length == 0:
            raise InvalidUpdate("a struct of length 0", "length")
        return length, pos
    if kind == _ANY:
        count, pos = _uint(data, pos)
        if count == 0:
            raise InvalidUpdate("an item with no values", "length")
        if count > len(data) - pos:
            raise InvalidUpdate(f"{count} values declared, {len(data) - pos} bytes left", "count")
        for _ in range(count):
            pos = _any(data, pos)
        return count, pos
    if kind == _TYPE:
        try:
            type_ref = data[pos]
        except IndexError:
            raise _truncated() from None
        pos += 1
        if type_ref not in _TYPE_REFS:
            if type_ref == _XML_HOOK:
                raise InvalidUpdate("XML hooks are not supported: Yjs and the engine encode "
                                    "them differently", "unsupported")
            raise InvalidUpdate(f"unknown shared type {type_ref}", "content")
        if type_ref == _XML_ELEMENT:
            _name, pos = _string(data, pos)
        return 1, pos
    if kind == _BINARY:
        _start, pos = _bytes(data, pos)
        return 1, pos
    if kind == _EMBED:
        return 1, _json(data, pos)
    if kind == _FORMAT:
        _key, pos = _string(data, pos)
        return 1, _json(data, pos)
    if kind == _DOC:
        _guid, pos = _string(data, pos)
        return 1, _any(data, pos)
    if kind == _JSON:
        raise InvalidUpdate("legacy JSON content is not supported: the engine reads one value "
                            "more than Yjs writes", "unsupported")
    raise InvalidUpdate(f"unknown content kind {kind}", "content")


def _read_delete_set(data: bytes, pos: int) -> dict[int, int]:
    size = len(data)
    if pos == size - 1 and data[pos] == 0:
        return {}
    count, pos = _uint(data, pos)
    if count * 2 > size - pos:
        raise InvalidUpdate(f"{count} deleting clients declared, {size - pos} bytes left", "count")
    deletes_to: dict[int, int] = {}
    for _ in range(count):
        client, pos = _client(data, pos)
        if client in deletes_to:
            raise InvalidUpdate(f"client {client} appears twice in the delete set", "duplicate")
        ranges, pos = _uint(data, pos)
        if ranges * 2 > size - pos:
            raise InvalidUpdate(f"{ranges} deletions declared, {size - pos} bytes left", "count")
        highest = 0
        for _ in range(ranges):
            clock, pos = _uint(data, pos)
            length, pos = _uint(data, pos)
            if length == 0:
                raise InvalidUpdate("a deletion of length 0", "length")
            end = clock + length
            if end >= MAX_CLOCK:
                raise InvalidUpdate(f"deletion up to clock {end}, past {MAX_CLOCK}", "clock")
            if end > highest:
                highest = end
        deletes_to[client] = highest
    if pos != size:
        raise InvalidUpdate(f"{size - pos} bytes after the delete set", "trailing")
    return deletes_to


def _check_parents(clients: list[_Client], type_ids: set[tuple[int, int]],
                   parent_refs: list[tuple[int, int]]) -> None:
    """A parent named by id inside this update must be one of its shared types."""
    if not parent_refs:
        return
    ranges = {c.client: (c.clock, c.end_clock) for c in clients}
    for ref in parent_refs:
        span = ranges.get(ref[0])
        if span is not None and span[0] <= ref[1] < span[1] and ref not in type_ids:
            raise InvalidUpdate(f"parent {ref[0]}:{ref[1]} is not a shared type", "reference")


# --- the public face ------------------------------------------------------------------------


def check_update(update: bytes) -> None:
    """Raise :class:`InvalidUpdate` unless ``update`` is a well-formed Yjs v1 update."""
    _read(update, None)


def structs(update: bytes) -> list[Struct]:
    """Check ``update`` and list its structs (raises :class:`InvalidUpdate`)."""
    return _read(update, None).structs


def slices(update: bytes) -> list[bytes]:
    """``update`` cut at struct boundaries into updates of at most :data:`SLICE` structs (the
    delete set goes with the last); the update itself when it is that small. The slices are in
    the update's order, which need not be an order their dependencies allow: the engine holds a
    slice's structs that depend on a later slice until that one comes."""
    return _slices(update, _read(update, None))


def _slices(update: bytes, read: _Read) -> list[bytes]:
    if sum(c.count for c in read.clients) <= SLICE:
        return [update]
    pieces: list[tuple[int, int, int, int, int]] = []  # client, clock, count, start, end
    for c in read.clients:
        bounds = [(c.first, c.clock), *(c.cuts or ()), (c.end, c.end_clock)]
        for index in range(len(bounds) - 1):
            (start, clock), (end, _next) = bounds[index], bounds[index + 1]
            count = min(SLICE, c.count - index * SLICE)
            pieces.append((c.client, clock, count, start, end))
    out: list[bytes] = []
    group: list[bytes] = []
    structs = 0
    for client, clock, count, start, end in pieces:
        if group and structs + count > SLICE:
            out.append(_write_uint(len(group)) + b"".join(group) + b"\x00")
            group, structs = [], 0
        group.append(_write_uint(count) + _write_uint(client) + _write_uint(clock) + update[start:end])
        structs += count
    out.append(_write_uint(len(group)) + b"".join(group) + update[read.delete_set:])
    return out


Ranges = Mapping[int, tuple[int, int]]
"""Per client, the clocks [start, end) of the structs in an update."""


@dataclass(frozen=True, slots=True)
class UpdateInfo:
    """What an update holds, as far as the document that receives it cares."""

    clocks: dict[int, tuple[int, int]]
    """client -> (first clock, clock after the last struct)."""
    deletes_to: dict[int, int]
    type_ids: frozenset[tuple[int, int]]


def inspect(update: bytes) -> UpdateInfo:
    """Check ``update`` and summarise it (raises :class:`InvalidUpdate`)."""
    read = _read(update, None)
    return UpdateInfo({c.client: (c.clock, c.end_clock) for c in read.clients}, read.deletes_to,
                      frozenset(read.type_ids))


@dataclass(slots=True)
class Plan:
    """How an update meets a document with a given state vector."""

    ready: bytes | None
    """What the engine can integrate now, completely (the update itself when that is all of it);
    None when nothing can be."""
    held: bytes | None
    """What must wait, as an update of its own; None when nothing waits."""
    clocks: dict[int, int]
    """The clocks that integrating ``ready`` moves the document to (changed clients only)."""
    waits_for: tuple[tuple[int, int], ...] = ()
    """(client, clock) pairs: once the document holds ``clock`` of ``client`` (its clock is past
    it), more of ``held`` may be integrated."""
    type_ids: frozenset[tuple[int, int]] = frozenset()
    """Shared types the update creates."""
    parent_refs: tuple[tuple[int, int], ...] = ()
    """Parents the update's items name by id."""
    structs: int = 0
    """How many structs the update holds (``ready`` as many or fewer)."""
    slices: list[bytes] | None = None
    """``ready`` cut into slices of at most :data:`SLICE` structs, when it is longer than that
    (see :func:`slices`)."""
    items: list[Struct] = field(default_factory=list)
    """The structs of ``ready``, for the document's order (:mod:`collab.order`)."""


_NO_TYPES: frozenset[tuple[int, int]] = frozenset()


def plan(update: bytes, state: Mapping[int, int]) -> Plan:
    """Check ``update`` (raises :class:`InvalidUpdate`) and split it into what a document whose
    state vector is ``state`` can integrate now and what has to wait."""
    typed = _plan_typing(update, state)
    return typed if typed is not None else _plan_read(update, state)


def _plan_read(update: bytes, state: Mapping[int, int]) -> Plan:
    """:func:`plan` for any update, by the general reader."""
    read = _read(update, state)
    clients = read.clients
    clocks: dict[int, int] = {}
    # The usual case, without generators (it runs once per edit): everything it needs is there.
    for c in clients:
        if c.checkpoints:
            break
    else:
        changed = {}
        structs = 0
        for c in clients:
            structs += c.count
            if c.end_clock > state.get(c.client, 0):
                changed[c.client] = clocks[c.client] = c.end_clock
        for client, end in read.deletes_to.items():
            if end > clocks.get(client, state.get(client, 0)):
                break
        else:
            return Plan(update if clients or read.deletes_to else None, None, changed, (),
                        frozenset(read.type_ids) if read.type_ids else _NO_TYPES,
                        tuple(read.parent_refs), structs,
                        _slices(update, read) if structs > SLICE else None, read.structs)
    cut = _simulate(clients, state, clocks)
    ds_cut = any(end > clocks.get(client, state.get(client, 0))
                 for client, end in read.deletes_to.items())
    changed = {client: clock for client, clock in clocks.items() if clock > state.get(client, 0)}
    types = frozenset(read.type_ids)
    refs = tuple(read.parent_refs)
    structs = sum(c.count for c in clients)
    if not cut and not ds_cut:
        return Plan(update if clients or read.deletes_to else None, None, changed, (), types, refs,
                    structs, _slices(update, read) if structs > SLICE else None, read.structs)
    return _split(update, read, state, clocks, cut, changed, types, refs, structs)


def _plan_typing(data: bytes, state: Mapping[int, int]) -> Plan | None:
    """:func:`plan` for what typing sends (see :func:`typing_item`), or None."""
    item = typing_item(data, state)
    if item is None:
        return None
    return Plan(data, None, {item.client: item.clock + item.length}, (), _NO_TYPES, (), 1, None,
                [item])


def typing_item(data: bytes, state: Mapping[int, int]) -> Struct | None:
    """What typing sends, read by :func:`plan`'s rules in a straight line: one client, one
    string item with origins, right after that client's last clock, every origin present. Such
    an update's plan is all of it, ready, with this one struct (:func:`_plan_typing`): the
    caller needs nothing else. None for any other update (or anything this would have to
    refuse, or that ends early): the general reader then decides, with its reasons.

    It runs once per edit, so its numbers of one byte (most clocks of a short document, every
    length of a typed string) are read inline."""
    size = len(data)
    if size < 8 or data[0] != 1 or data[1] != 1:
        return None
    try:
        client, pos = _client(data, 2)
        own = data[2:pos]  # the client's id as encoded: most origins name it again
        clock = data[pos]
        if clock < 0x80:
            pos += 1
        else:
            clock, pos = _uint(data, pos)
        info = data[pos]
        if info & 0x1F != _STRING or not info & _ID_BITS or clock != state.get(client, 0):
            return None
        pos += 1
        origin = right_origin = None
        if info & _HAS_ORIGIN:
            origin, pos = _typing_reference(data, pos, own, client, clock, state)
            if origin is None:
                return None
        if info & _HAS_RIGHT_ORIGIN:
            right_origin, pos = _typing_reference(data, pos, own, client, clock, state)
            if right_origin is None:
                return None
        raw = data[pos]
        if raw < 0x80:
            pos += 1
        else:
            raw, pos = _uint(data, pos)
        end = pos + raw
        if end > size:
            return None
        length = _text_length(data[pos:end])
        end_clock = clock + length
        if length == 0 or end_clock >= MAX_CLOCK:
            return None
        if data[end] != 0 or end != size - 1:  # deletions too (a backspace before the item)
            for deleting, deleted_to in _read_delete_set(data, end).items():
                if deleted_to > (end_clock if deleting == client else state.get(deleting, 0)):
                    return None
    except IndexError:
        return None
    return _new_struct(Struct, (client, clock, length, _STRING, origin, right_origin, None, None,
                                None))


def _typing_reference(data: bytes, pos: int, own: bytes, client: int, clock: int,
                      state: Mapping[int, int]) -> tuple[tuple[int, int] | None, int]:
    """An origin of :func:`typing_item`'s struct ``client:clock`` at ``pos`` (``own``: the
    client's id as encoded, which most origins name again), and where it ends; None for one
    :func:`_present` leaves to the general reader."""
    if data.startswith(own, pos):  # a whole varint: its last byte ends one
        ref_client, pos = client, pos + len(own)
    else:
        ref_client, pos = _client(data, pos)
    ref_clock = data[pos]
    if ref_clock < 0x80:
        pos += 1
    else:
        ref_clock, pos = _uint(data, pos)
    if not _present(client, clock, ref_client, ref_clock, state):
        return None, pos
    return (ref_client, ref_clock), pos


_new_struct = tuple.__new__
"""``Struct(...)`` without the named tuple's own ``__new__`` (a Python function)."""


def _present(client: int, clock: int, ref_client: int, ref_clock: int,
             state: Mapping[int, int]) -> bool:
    """Whether :func:`typing_item` takes a reference of struct ``client:clock``: False for one
    it leaves to the general reader (one it would refuse, or one ``state`` does not hold)."""
    if ref_clock >= MAX_CLOCK:
        return False
    if ref_client == client:
        return ref_clock < clock
    return state.get(ref_client, 0) > ref_clock


def _simulate(clients: list[_Client], state: Mapping[int, int], clocks: dict[int, int]) -> dict[int, int]:
    """Integrate as the engine would, as far as dependencies allow; ``clocks`` ends at the
    result. Returns, for each client that cannot go all the way, the index of the checkpoint
    where it stops."""
    def current(client: int) -> int:
        value = clocks.get(client)
        return state.get(client, 0) if value is None else value

    blocked = [c for c in clients if c.checkpoints]
    for c in clients:
        if not c.checkpoints:
            clocks[c.client] = max(current(c.client), c.end_clock)
    if not blocked:
        return {}
    waiting: dict[int, list[tuple[int, int]]] = {}  # client -> heap of (clock needed, index)
    position = [0] * len(blocked)
    runnable = deque(range(len(blocked)))
    while runnable:
        index = runnable.popleft()
        c = blocked[index]
        checkpoints = c.checkpoints
        assert checkpoints is not None
        j = position[index]
        while True:
            reached = c.end_clock if j == len(checkpoints) else checkpoints[j][1]
            if reached > c.clock and reached > current(c.client):
                clocks[c.client] = reached
                heap = waiting.get(c.client)
                while heap and heap[0][0] < reached:
                    runnable.append(heapq.heappop(heap)[1])
            if j == len(checkpoints):
                break
            _offset, _clock, _before, needs_client, needs_clock = checkpoints[j]
            if current(needs_client) > needs_clock:
                j += 1
                continue
            heapq.heappush(waiting.setdefault(needs_client, []), (needs_clock, index))
            break
        position[index] = j
    return {index: position[index] for index, c in enumerate(blocked)
            if position[index] < len(c.checkpoints or ())}


def _split(update: bytes, read: _Read, state: Mapping[int, int], clocks: dict[int, int],
           cut: dict[int, int], changed: dict[int, int], types: frozenset[tuple[int, int]],
           refs: tuple[tuple[int, int], ...], structs: int) -> Plan:
    blocked = [c for c in read.clients if c.checkpoints]
    stops = {blocked[index].client: blocked[index].checkpoints[j]  # type: ignore[index]
             for index, j in cut.items()}
    ready_parts: list[bytes] = []
    held_parts: list[bytes] = []
    waits: list[tuple[int, int]] = []
    items: list[Struct] = []
    for c in read.clients:
        stop = stops.get(c.client)
        if stop is None:
            ready_parts.append(update[c.header:c.end])
            items.extend(read.structs[c.structs_from:c.structs_from + c.count])
            continue
        offset, clock, before, needs_client, needs_clock = stop
        items.extend(read.structs[c.structs_from:c.structs_from + before])
        waits.append((needs_client, needs_clock))
        client_id = _write_uint(c.client)
        if before:
            ready_parts.append(_write_uint(before) + client_id + _write_uint(c.clock)
                               + update[c.first:offset])
        held_parts.append(_write_uint(c.count - before) + client_id + _write_uint(clock)
                          + update[offset:c.end])
    ready_ds, held_ds, ds_waits = _split_delete_set(update, read.delete_set, clocks, state)
    waits.extend(ds_waits)
    ready = (_write_uint(len(ready_parts)) + b"".join(ready_parts) + ready_ds
             if ready_parts or ready_ds != b"\x00" else None)
    held = (_write_uint(len(held_parts)) + b"".join(held_parts) + held_ds
            if held_parts or held_ds != b"\x00" else None)
    return Plan(ready, held, changed, tuple(waits), types, refs, structs,
                slices(ready) if ready is not None and structs > SLICE else None, items)


def _split_delete_set(update: bytes, pos: int, clocks: Mapping[int, int],
                      state: Mapping[int, int]) -> tuple[bytes, bytes, list[tuple[int, int]]]:
    """Deletions of what the document will hold, and deletions of what it will not yet."""
    ready: list[bytes] = []
    held: list[bytes] = []
    waits: list[tuple[int, int]] = []
    count, pos = _uint(update, pos)
    for _ in range(count):
        client, pos = _uint(update, pos)
        ranges, pos = _uint(update, pos)
        known = clocks.get(client, state.get(client, 0))
        ready_ranges: list[bytes] = []
        held_ranges: list[bytes] = []
        first_missing = None
        for _ in range(ranges):
            clock, pos = _uint(update, pos)
            length, pos = _uint(update, pos)
            end = clock + length
            if clock < known:
                ready_ranges.append(_write_uint(clock) + _write_uint(min(end, known) - clock))
            if end > known:
                start = max(clock, known)
                held_ranges.append(_write_uint(start) + _write_uint(end - start))
                first_missing = start if first_missing is None else min(first_missing, start)
        client_id = _write_uint(client)
        if ready_ranges:
            ready.append(client_id + _write_uint(len(ready_ranges)) + b"".join(ready_ranges))
        if held_ranges:
            held.append(client_id + _write_uint(len(held_ranges)) + b"".join(held_ranges))
            waits.append((client, first_missing))  # type: ignore[arg-type]
    return (_write_uint(len(ready)) + b"".join(ready), _write_uint(len(held)) + b"".join(held), waits)


def _write_uint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


# --- state vectors --------------------------------------------------------------------------


def decode_state_vector(data: bytes) -> dict[int, int]:
    """client -> clock, checked like an update (raises :class:`InvalidUpdate`)."""
    count, pos = _uint(data, 0)
    if count * 2 > len(data) - pos:
        raise InvalidUpdate(f"{count} clients declared, {len(data) - pos} bytes left", "count")
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = _uint(data, pos)
        clock, pos = _uint(data, pos)
        if client in clocks:
            raise InvalidUpdate(f"client {client} appears twice in the state vector", "duplicate")
        if clock > MAX_CLOCK:
            raise InvalidUpdate(f"clock {clock} is past {MAX_CLOCK}", "clock")
        clocks[client] = clock
    if pos != len(data):
        raise InvalidUpdate(f"{len(data) - pos} bytes after the state vector", "trailing")
    return clocks


def check_state_vector(data: bytes) -> None:
    decode_state_vector(data)


def encode_state_vector(clocks: Mapping[int, int]) -> bytes:
    return _write_uint(len(clocks)) + b"".join(
        _write_uint(client) + _write_uint(clock) for client, clock in clocks.items())
