"""collab.crdt: the engine seam's promises (produced updates, duplicates, junk, merge checks)."""

from __future__ import annotations

import pytest

from collab import crdt
from collab.crdt import Document, InvalidUpdate


def doc_with(*inserts: str) -> tuple[Document, list[bytes]]:
    doc = Document()
    updates = []
    for text in inserts:
        update = doc.edit_text(len(doc.text()), text)
        assert update is not None
        updates.append(update)
    return doc, updates


def test_apply_returns_what_the_engine_produced() -> None:
    _, [update] = doc_with("hello")
    replica = Document()
    produced = replica.apply(update)
    assert produced is not None
    assert crdt.document_from([produced]).text() == "hello"


def test_duplicate_update_returns_none() -> None:
    _, [first, second] = doc_with("a", "b")
    replica = crdt.document_from([first, second])
    assert replica.apply(first) is None
    assert replica.apply(second) is None
    assert replica.apply(crdt.merge([first, second])) is None
    assert replica.apply(crdt.EMPTY_UPDATE) is None
    assert replica.text() == "ab"


def test_update_waiting_for_its_dependency_changes_nothing_until_it_arrives() -> None:
    _, [first, second] = doc_with("first ", "second")
    replica = Document()
    assert replica.apply(second) is None
    assert replica.text() == ""
    produced = replica.apply(first)
    assert produced is not None
    assert replica.text() == "first second"
    # What the engine reports covers both the update and the one it had been holding back.
    assert crdt.document_from([produced]).text() == "first second"


@pytest.mark.parametrize("junk", [b"\xff\xff\xff", b"garbage!", b"\x01\x01\x05\x00\x84"])
def test_junk_raises_invalid_update(junk: bytes) -> None:
    doc, _ = doc_with("keep me")
    with pytest.raises(InvalidUpdate):
        doc.apply(junk)
    assert doc.text() == "keep me"


def test_truncated_update_raises_invalid_update_or_changes_nothing() -> None:
    _, [update] = doc_with("some text that is long enough")
    for cut in range(1, len(update)):
        doc = Document()
        try:
            produced = doc.apply(update[:cut])
        except InvalidUpdate:
            continue
        # Whatever a prefix is accepted as, it must not claim to be the whole text.
        assert produced is None or doc.text() != "some text that is long enough"


def test_state_vector_and_diff() -> None:
    source, [first, _second] = doc_with("one ", "two")
    behind = crdt.document_from([first])
    diff = source.diff(behind.state_vector())
    assert behind.apply(diff) is not None
    assert behind.text() == "one two"
    assert behind.apply(source.diff(behind.state_vector())) is None
    with pytest.raises(InvalidUpdate):
        source.diff(b"\xff\xff\xff")


def test_covers_compares_structs_only() -> None:
    doc, [update] = doc_with("abc")
    assert doc.covers(update)
    assert not Document().covers(update)
    deletion = doc.edit_text(0, delete=1)
    assert deletion is not None
    before_delete = crdt.document_from([update])
    # Deletions do not advance a state vector, so covers() cannot see them ...
    assert before_delete.covers(deletion)
    # ... but contains_all() can.
    assert not crdt.contains_all(update, [deletion])


def test_merge() -> None:
    _, updates = doc_with("a", "b", "c")
    merged = crdt.merge(updates)
    assert crdt.document_from([merged]).text() == "abc"
    assert crdt.merge([]) == crdt.EMPTY_UPDATE
    assert crdt.document_from([crdt.merge([updates[0]])]).text() == "a"
    with pytest.raises(InvalidUpdate):
        crdt.merge([updates[0], b"\xff\xff\xff"])


def test_contains_all() -> None:
    doc, updates = doc_with("x", "y", "z")
    assert crdt.contains_all(doc.full_state(), updates)
    assert crdt.contains_all(crdt.merge(updates), updates)
    assert not crdt.contains_all(crdt.merge(updates[:2]), updates)
    assert crdt.contains_all(doc.full_state(), [])


def test_state_vector_helpers_refuse_junk() -> None:
    _, [update] = doc_with("abc")
    clocks = crdt.decode_state_vector(crdt.state_vector_of(update))
    assert list(clocks.values()) == [3]
    with pytest.raises(InvalidUpdate):
        crdt.state_vector_of(b"\xff\xff\xff")
    with pytest.raises(InvalidUpdate):
        crdt.decode_state_vector(b"\x02\x01")


def test_text_of_a_missing_field_is_empty() -> None:
    doc, _ = doc_with("abc")
    assert doc.text("nothing-here") == ""
    assert doc.text() == "abc"


def test_edit_text_insert_delete_and_no_op() -> None:
    doc = Document()
    assert doc.edit_text(0, "hello world") is not None
    assert doc.edit_text(5, delete=6) is not None
    assert doc.text() == "hello"
    assert doc.edit_text(0) is None
    assert doc.edit_text(2, "LL", delete=2) is not None
    assert doc.text() == "heLLo"


def test_a_document_that_only_loads_holds_what_a_live_one_does() -> None:
    writer = crdt.Document()
    updates = [writer.edit_text(0, "typed text"), writer.edit_text(5, "and moved "),
               writer.edit_text(0, "", delete=3)]
    stored = [u for u in updates if u is not None]
    live, loading = crdt.Document(), crdt.Document(live=False)
    assert live.load(stored) == [] and loading.load(stored) == []
    assert loading.text() == live.text() == writer.text()
    assert loading.clocks() == live.clocks()
    assert loading.full_state() == live.full_state()


def test_a_document_that_only_loads_refuses_a_live_update_and_stays_as_it_was() -> None:
    writer = crdt.Document()
    first, second = writer.edit_text(0, "stored"), writer.edit_text(6, " then typed")
    assert first is not None and second is not None
    doc = crdt.Document(live=False)
    doc.load([first])
    with pytest.raises(RuntimeError, match="only loads stored updates"):
        doc.integrate(second)  # its origins could not be checked
    assert doc.text() == "stored"
    assert doc.clocks() == crdt.document_from([first]).clocks()


def test_load_applies_stored_updates_and_reports_refused_ones() -> None:
    writer = crdt.Document()
    first, second = writer.edit_text(0, "stored "), writer.edit_text(7, "text")
    assert first is not None and second is not None
    doc = crdt.Document()
    errors = doc.load([first, b"\x05garbage", second])
    assert doc.text() == "stored text"
    assert len(errors) == 1 and isinstance(errors[0], crdt.InvalidUpdate)
    # Still observed afterwards: a later change is produced as usual.
    assert doc.apply(writer.edit_text(11, "!") or b"") is not None
