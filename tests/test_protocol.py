"""collab.protocol on its own: round trips of every message type and the error cases that the
JavaScript vectors (test_protocol_vectors.py) do not reach."""

from __future__ import annotations

import contextlib
import json
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collab import protocol
from collab.protocol import AwarenessEntry, ProtocolError
from tests.test_protocol_vectors import VECTORS

MESSAGES: list[protocol.Message] = [
    protocol.SyncStep1(b"\x00"),
    protocol.SyncStep1(b"\x02\x01\x05\x80\x01\x07"),
    protocol.SyncStep2(b"\x00\x00"),
    protocol.SyncStep2(bytes(range(256)) * 3),
    protocol.SyncUpdate(b""),
    protocol.SyncUpdate(b"\x01" * 20000),
    protocol.AwarenessUpdate(b"\x00"),
    protocol.QueryAwareness(),
    protocol.Auth(denied=True, reason="read-only ✋"),
    protocol.Auth(denied=False, reason=""),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(message: protocol.Message) -> None:
    assert protocol.decode_message(protocol.encode_message(message)) == message


def test_encode_message_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        protocol.encode_message(b"\x00")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 2**31, 2**53 - 1])
def test_var_uint_round_trips_at_every_width(value: int) -> None:
    raw = protocol.write_var_uint(value)
    assert len(raw) == max(1, -(-value.bit_length() // 7))
    assert protocol.read_var_uint(b"junk" + raw + b"tail", 4) == (value, 4 + len(raw))


@pytest.mark.parametrize("value", [-1, 2**53, 2**64])
def test_var_uint_refuses_to_write_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        protocol.write_var_uint(value)


def test_read_past_the_end_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        protocol.read_var_uint(b"\x01", 1)
    with pytest.raises(ProtocolError, match="too long"):
        protocol.read_var_uint(b"\xff" * 8 + b"\x01", 0)
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.read_var_bytes(b"\x05abcd", 0)


def test_invalid_utf8_string_is_refused() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        protocol.read_var_string(b"\x02\xc3\x28", 0)
    with pytest.raises(ProtocolError):
        protocol.decode_message(b"\x02\x00\x01\xff")


@pytest.mark.parametrize("raw", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x04", id="unknown message type"),
    pytest.param(b"\x7f\x00", id="another unknown type"),
    pytest.param(b"\x00\x03\x00", id="unknown sync type"),
    pytest.param(b"\x00", id="sync without a sync type"),
    pytest.param(b"\x00\x01", id="step 2 without a length"),
    pytest.param(b"\x03\x00", id="query awareness with a trailing byte"),
    pytest.param(b"\x01", id="awareness without a length"),
    pytest.param(b"\x02\x00", id="auth without a reason"),
])
def test_malformed_messages_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_message(raw)


def test_awareness_entries_round_trip() -> None:
    entries = [AwarenessEntry(1, 0, "{}"), AwarenessEntry(2**32 - 1, 300, '{"name":"Ünïcode 🎉"}'),
               AwarenessEntry(9, 4, "null")]
    payload = protocol.encode_awareness_payload(entries)
    assert protocol.decode_awareness_payload(payload) == entries
    assert [e.is_removal for e in entries] == [False, False, True]
    assert protocol.decode_awareness_payload(protocol.encode_awareness_payload([])) == []


@pytest.mark.parametrize("state", ["", "{", "NaN", '{"a": Infinity}', "undefined", "{'a': 1}"])
def test_awareness_state_that_is_not_json_is_refused(state: str) -> None:
    payload = protocol.encode_awareness_payload([AwarenessEntry(1, 1, state)])
    with pytest.raises(ProtocolError, match="JSON"):
        protocol.decode_awareness_payload(payload)
    assert protocol.decode_awareness_payload(payload, validate_json=False)[0].state == state


def test_awareness_payload_with_more_entries_declared_than_present() -> None:
    payload = protocol.encode_awareness_payload([AwarenessEntry(1, 1, "{}")])
    with pytest.raises(ProtocolError):
        protocol.decode_awareness_payload(b"\x02" + payload[1:])
    with pytest.raises(ProtocolError):
        protocol.decode_awareness_payload(b"\xff\xff\xff\xff\x0f" + payload[1:])
    with pytest.raises(ProtocolError):
        protocol.decode_awareness_payload(payload + b"\x00")


# --- hostile input: bounds before allocation, and only the documented error -----------------




FRAMES = [bytes.fromhex(v["hex"]) for v in VECTORS["messages"] + VECTORS["awareness"]]


def decode_everything(raw: bytes) -> None:
    message = protocol.decode_message(raw)
    if isinstance(message, protocol.AwarenessUpdate):
        protocol.decode_awareness_payload(message.payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_everything(raw)
    with contextlib.suppress(ProtocolError):
        protocol.decode_awareness_payload(raw)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(FRAMES))
def test_mutated_real_frames_raise_only_protocol_errors(seed: int, frame: bytes) -> None:
    rng = random.Random(seed)
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        if data and rng.random() < 0.6:
            data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data.insert(rng.randrange(len(data) + 1), rng.choice([0x00, 0x7F, 0x80, 0xFF]))
    with contextlib.suppress(ProtocolError):
        decode_everything(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=20))
def test_any_presence_a_stock_client_sends_is_taken(state: object) -> None:
    text = json.dumps(state)
    entries = [AwarenessEntry(7, 3, text)]
    assert protocol.decode_awareness_payload(protocol.encode_awareness_payload(entries)) == entries


def test_a_flood_of_null_entries_is_refused_before_it_is_read() -> None:
    flood = protocol.write_var_uint(1_500_000) + (b"\x01\x01" + protocol.write_var_string("null")) * 100
    started = time.perf_counter()
    with pytest.raises(ProtocolError, match="at most"):
        protocol.decode_awareness_payload(flood)
    assert time.perf_counter() - started < 0.05  # nothing was read entry by entry
    many = [AwarenessEntry(i, 1, "null") for i in range(protocol.MAX_AWARENESS_ENTRIES + 1)]
    with pytest.raises(ProtocolError, match="at most"):
        protocol.decode_awareness_payload(protocol.encode_awareness_payload(many))


def test_more_entries_than_bytes_are_refused() -> None:
    with pytest.raises(ProtocolError, match="declared"):
        protocol.decode_awareness_payload(protocol.write_var_uint(1000) + b"\x01\x01\x01")


def test_a_large_state_is_refused_before_it_is_decoded() -> None:
    state = json.dumps({"x": "y" * protocol.MAX_AWARENESS_STATE_BYTES})
    with pytest.raises(ProtocolError, match="bytes"):
        protocol.decode_awareness_payload(protocol.encode_awareness_payload([AwarenessEntry(1, 1, state)]))


@pytest.mark.parametrize("state", ["[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000,
                                   "[" * 65 + "]" * 65])
def test_deep_json_is_refused_without_recursion(state: str) -> None:
    payload = protocol.encode_awareness_payload([AwarenessEntry(1, 1, state)])
    with pytest.raises(ProtocolError, match="deeper"):
        protocol.decode_awareness_payload(payload)
    shallow = "[" * protocol.MAX_AWARENESS_DEPTH + "]" * protocol.MAX_AWARENESS_DEPTH
    protocol.decode_awareness_payload(protocol.encode_awareness_payload([AwarenessEntry(1, 1, shallow)]))
