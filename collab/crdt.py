"""The one seam to the CRDT engine (pycrdt, the Python bindings of Yrs).

Nothing else in collab imports the engine. Updates are Yjs v1 updates, interchangeable with Yjs,
y-py and pycrdt. Every engine error surfaces as :class:`InvalidUpdate`.
"""

from __future__ import annotations

from collections.abc import Iterable

import pycrdt

from collab.protocol import ProtocolError, read_var_uint

TEXT_FIELD = "text"
"""The shared text the editor, the load tester and the exporter read and write."""

EMPTY_UPDATE = b"\x00\x00"
"""An update with no structs and an empty delete set."""


class InvalidUpdate(ValueError):
    """Bytes the engine refused as an update or a state vector."""


class Document:
    """One Yjs document. Not thread-safe: use it from one thread (the event loop)."""

    __slots__ = ("_doc", "_produced", "_subscription")

    def __init__(self) -> None:
        self._doc = pycrdt.Doc()
        self._produced: list[bytes] = []
        self._subscription = self._doc.observe(self._on_transaction)

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        self._produced.append(event.update)

    def apply(self, update: bytes) -> bytes | None:
        """Apply a remote update. Returns the update the engine produced from it (what actually
        changed, re-encoded by the engine), or None when the input changed nothing: a duplicate,
        or structs still waiting for ones they depend on."""
        self._produced.clear()
        try:
            self._doc.apply_update(update)
        except Exception as exc:  # the bindings raise ValueError and panics as other types
            raise InvalidUpdate(str(exc) or type(exc).__name__) from exc
        finally:
            produced, self._produced = self._produced, []
        produced = [u for u in produced if u != EMPTY_UPDATE]
        if not produced:
            return None
        return produced[0] if len(produced) == 1 else merge(produced)

    def load(self, updates: Iterable[bytes]) -> list[InvalidUpdate]:
        """Apply stored updates without producing anything: while observed, the engine encodes
        what each transaction changed, which would triple the time to load a large document.
        Returns the errors of updates it refused (the others are applied)."""
        self._doc.unobserve(self._subscription)
        errors = []
        try:
            for update in updates:
                try:
                    self._doc.apply_update(update)
                except Exception as exc:
                    errors.append(InvalidUpdate(str(exc) or type(exc).__name__))
        finally:
            self._subscription = self._doc.observe(self._on_transaction)
        return errors

    def state_vector(self) -> bytes:
        return self._doc.get_state()

    def covers(self, update: bytes) -> bool:
        """True when every struct in ``update`` is already integrated here (deletions are
        not compared: they never advance a state vector)."""
        mine = decode_state_vector(self.state_vector())
        theirs = decode_state_vector(state_vector_of(update))
        return all(mine.get(client, 0) >= clock for client, clock in theirs.items())

    def diff(self, state_vector: bytes) -> bytes:
        """Everything this document has that a peer with ``state_vector`` lacks."""
        try:
            return self._doc.get_update(state_vector)
        except Exception as exc:
            raise InvalidUpdate(f"bad state vector: {exc}") from exc

    def full_state(self) -> bytes:
        return self._doc.get_update()

    def text(self, field: str = TEXT_FIELD) -> str:
        """The text of a shared text field ("" if the field is absent or of another type)."""
        try:
            return str(self._doc.get(field, type=pycrdt.Text))
        except Exception:
            return ""

    def edit_text(self, index: int, insert: str = "", delete: int = 0,
                  field: str = TEXT_FIELD) -> bytes | None:
        """A local edit (used by tools and tests); returns the update it produced."""
        text = self._doc.get(field, type=pycrdt.Text)
        self._produced.clear()
        with self._doc.transaction():
            if delete:
                del text[index:index + delete]
            if insert:
                text.insert(index, insert)
        produced, self._produced = self._produced, []
        if not produced:
            return None
        return produced[0] if len(produced) == 1 else merge(produced)


def merge(updates: Iterable[bytes]) -> bytes:
    """Merge updates into one, without a document."""
    updates = list(updates)
    if not updates:
        return EMPTY_UPDATE
    try:
        return pycrdt.merge_updates(*updates)
    except Exception as exc:
        raise InvalidUpdate(f"cannot merge: {exc}") from exc


def state_vector_of(update: bytes) -> bytes:
    try:
        return pycrdt.get_state(update)
    except Exception as exc:
        raise InvalidUpdate(str(exc)) from exc


def document_from(updates: Iterable[bytes]) -> Document:
    """A document with every update applied, in order (refused ones skipped)."""
    doc = Document()
    doc.load(updates)
    return doc


def contains_all(candidate: bytes, parts: Iterable[bytes]) -> bool:
    """True when the document ``candidate`` already holds everything in ``parts``: applying any
    part to it changes nothing. Compaction checks this before it deletes the parts. (A part
    still waiting for a dependency changes nothing either: merging keeps such parts.)"""
    doc = Document()
    if doc.load([candidate]):
        return False
    return all(doc.apply(part) is None for part in parts)


def decode_state_vector(state_vector: bytes) -> dict[int, int]:
    """client id -> clock. Raises InvalidUpdate on malformed input."""
    try:
        count, pos = read_var_uint(state_vector, 0)
        clocks = {}
        for _ in range(count):
            client, pos = read_var_uint(state_vector, pos)
            clock, pos = read_var_uint(state_vector, pos)
            clocks[client] = clock
        return clocks
    except ProtocolError as exc:
        raise InvalidUpdate(f"bad state vector: {exc}") from exc
