"""The HTTP fallback's pure parts: version tokens, document digests, the broadcast history, and
the request wire format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collab import crdt, protocol
from collab.history import History
from collab.protocol import AwarenessEntry, ProtocolError, write_var_uint
from collab.transport import pollwire
from collab.transport.pollwire import BadRequest
from collab.version import BadVersion, Version, document_digest, presence_digest

# --- version tokens ---------------------------------------------------------------------------


@given(st.binary(min_size=8, max_size=8), st.integers(0, 2**53 - 1), st.binary(min_size=16, max_size=16),
       st.binary(min_size=8, max_size=8))
def test_a_version_survives_its_token(incarnation: bytes, seq: int, document: bytes, presence: bytes) -> None:
    version = Version(incarnation, seq, document, presence)
    token = version.encode()
    assert len(token) <= 64 and token.isascii() and "=" not in token
    assert Version.decode(token) == version


TRUNCATED = Version(b"i" * 8, 1, b"d" * 16, b"p" * 8).encode()[:-3]


@pytest.mark.parametrize("token", ["", "!!!", "AA", "x" * 200, TRUNCATED])
def test_a_damaged_token_is_refused(token: str) -> None:
    with pytest.raises(BadVersion):
        Version.decode(token)


@given(st.binary(max_size=80))
def test_no_bytes_make_decoding_fail_otherwise(raw: bytes) -> None:
    import base64
    import contextlib

    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    with contextlib.suppress(BadVersion):  # anything else escaping fails the test
        Version.decode(token)


# --- digests ----------------------------------------------------------------------------------


def _delete_set(ranges: list[tuple[int, list[tuple[int, int]]]]) -> bytes:
    out = write_var_uint(0) + write_var_uint(len(ranges))
    for client, spans in ranges:
        out += write_var_uint(client) + write_var_uint(len(spans))
        for clock, size in spans:
            out += write_var_uint(clock) + write_var_uint(size)
    return out


def test_the_digest_ignores_the_order_a_delete_set_is_written_in() -> None:
    vector = bytes([2, 1, 5, 2, 7])
    swapped = bytes([2, 2, 7, 1, 5])
    a = _delete_set([(1, [(0, 2), (4, 1)]), (2, [(3, 3)])])
    b = _delete_set([(2, [(3, 1), (4, 2)]), (1, [(4, 1), (0, 2)])])
    assert document_digest(vector, a) == document_digest(swapped, b)
    other = _delete_set([(1, [(0, 2), (5, 1)]), (2, [(3, 3)])])
    assert document_digest(vector, a) != document_digest(vector, other)


def test_documents_with_the_same_content_digest_equally_and_a_deletion_changes_it() -> None:
    doc = crdt.Document()
    doc.edit_text(0, "hello world")
    copy = crdt.document_from([doc.full_state()])

    def digest(d: crdt.Document) -> bytes:
        return document_digest(d.state_vector(), d.diff(d.state_vector()))

    assert digest(doc) == digest(copy)
    before = doc.state_vector()
    doc.edit_text(0, delete=5)
    assert doc.state_vector() == before  # a deletion does not advance the state vector...
    assert digest(doc) != digest(copy)  # ...but it changes the digest


def test_unparsable_bytes_are_digested_as_they_are() -> None:
    assert document_digest(b"\xff", b"\x01\x02") != document_digest(b"\xff", b"\x01\x03")


def test_the_presence_digest_names_who_is_there_at_which_clock() -> None:
    a = AwarenessEntry(1, 2, '{"a":1}')
    b = AwarenessEntry(2, 1, '{"b":1}')
    assert presence_digest([a, b]) == presence_digest([b, a])
    assert presence_digest([a]) != presence_digest([a, b])
    assert presence_digest([a, AwarenessEntry(2, 1, "null")]) == presence_digest([a])
    assert presence_digest([AwarenessEntry(1, 3, '{"a":1}')]) != presence_digest([a])


# --- the broadcast history --------------------------------------------------------------------


def test_the_history_answers_what_came_after_a_position_but_the_clients_own() -> None:
    history = History()
    assert history.since(0) == []
    history.append(b"a", "alice")
    mark = history.seq
    history.append(b"b", "bob")
    history.append(b"c", None)
    assert history.since(mark) == [b"b", b"c"]
    assert history.since(mark, exclude="bob") == [b"c"]
    assert history.since(0, exclude="alice") == [b"b", b"c"]
    assert history.since(history.seq) == []
    assert history.since(history.seq + 1) is None  # a position it never gave


def test_the_history_is_bounded_and_forgets_old_positions() -> None:
    history = History(max_frames=3, max_bytes=10)
    for frame in (b"1", b"2", b"3", b"4"):
        history.append(frame)
    assert history.since(0) is None and history.since(1) == [b"2", b"3", b"4"]
    history.append(b"x" * 9)  # over the byte bound: the oldest go until it fits
    assert history.since(history.seq - 2) == [b"4", b"x" * 9] and history.since(history.seq - 3) is None


def test_a_skipped_frame_makes_earlier_positions_unanswerable() -> None:
    history = History()
    history.append(b"a")
    mark = history.seq
    history.skip()
    assert history.since(mark) is None and history.since(history.seq) == []


# --- requests ---------------------------------------------------------------------------------


def test_bodies_are_length_prefixed_messages() -> None:
    frames = [protocol.encode_sync_step1(b"\x00"), protocol.encode_query_awareness(), b""]
    assert pollwire.decode_body(pollwire.encode_body(frames)) == frames
    with pytest.raises(ProtocolError):
        pollwire.decode_body(b"\x05abc")


def test_a_body_is_checked_whole_and_split_into_the_poll_and_the_rest() -> None:
    update = crdt.Document().edit_text(0, "x")
    assert update is not None
    body = pollwire.parse_body(pollwire.encode_body([
        protocol.encode_sync_update(update), protocol.encode_sync_step1(b"\x00"),
        protocol.encode_awareness(protocol.encode_awareness_payload([AwarenessEntry(1, 1, "{}")])),
    ]))
    assert body.state_vector == b"\x00" and body.changes == [update] and len(body.messages) == 2
    bad_presence = protocol.encode_awareness(protocol.encode_awareness_payload([AwarenessEntry(1, 1, "{")]))
    for bad in ([bad_presence], [b"\x07"], [protocol.encode_sync_step1(b"\x00")] * 2):
        with pytest.raises(ProtocolError):
            pollwire.parse_body(pollwire.encode_body(bad))


def test_the_query_names_the_client_and_may_carry_a_version() -> None:
    version = Version(b"i" * 8, 3, b"d" * 16, b"p" * 8)
    query = pollwire.parse_query({"client": "abcdefgh", "version": version.encode(), "wait": "1",
                                  "acks": "1"})
    assert query.client == "abcdefgh" and query.since == version and query.wait and query.acks
    assert not query.bye
    for bad in ({}, {"client": "short"}, {"client": "has space!"}, {"client": "abcdefgh", "wait": "maybe"},
                {"client": "abcdefgh", "version": "garbage!"}):
        with pytest.raises(BadRequest):
            pollwire.parse_query(bad)
