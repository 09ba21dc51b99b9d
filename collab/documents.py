"""Documents changed from Python: what ``async with server.edit(name) as text`` hands out.

An edit works on a private copy of the document (its own Yjs client); when the block ends, what
it did goes through the room as one update, exactly like a client's edit: live clients on every
instance receive it, the store takes it, and it merges with whatever the clients changed
meanwhile (edits are positions in the CRDT, not a text that overwrites theirs).
"""

from __future__ import annotations

from collab import crdt


class TextEdit:
    """The text of one document, to read and change inside ``server.edit(name)``. Indexes are
    those of the Python string :attr:`value`."""

    def __init__(self, doc: crdt.Document) -> None:
        self._doc = doc
        self.updates: list[bytes] = []
        """What the edit produced, in order (applied when the block ends)."""

    @property
    def value(self) -> str:
        return self._doc.text()

    def __str__(self) -> str:
        return self.value

    def __len__(self) -> int:
        return len(self.value)

    def insert(self, index: int, text: str) -> None:
        current = self.value
        if not 0 <= index <= len(current):
            raise IndexError(f"insert at {index} in a text of {len(current)} characters")
        self._record(self._doc.edit_text(_offset(current, index), text))

    def delete(self, index: int, length: int) -> None:
        current = self.value
        if index < 0 or length < 0 or index + length > len(current):
            raise IndexError(f"delete {length} at {index} in a text of {len(current)} characters")
        if length:
            self._record(self._doc.edit_text(_offset(current, index),
                                             delete=_offset(current[index:], length)))

    def append(self, text: str) -> None:
        self.insert(len(self), text)

    def replace(self, text: str) -> None:
        """Make the text ``text`` with the smallest change: what it shares with the current
        text at the start and the end is kept, so concurrent edits there are not lost."""
        current = self.value
        start = 0
        limit = min(len(current), len(text))
        while start < limit and current[start] == text[start]:
            start += 1
        end = 0
        while end < limit - start and current[-1 - end] == text[-1 - end]:
            end += 1
        removed = current[start:len(current) - end]
        added = text[start:len(text) - end]
        if removed or added:
            self._record(self._doc.edit_text(_offset(current, start), added,
                                             delete=len(removed.encode("utf-8"))))

    def _record(self, update: bytes | None) -> None:
        if update is not None:
            self.updates.append(update)


def _offset(text: str, index: int) -> int:
    """The engine's position of character ``index``: it counts UTF-8 bytes (a position inside
    a character would make an update the gate refuses)."""
    return len(text[:index].encode("utf-8"))
