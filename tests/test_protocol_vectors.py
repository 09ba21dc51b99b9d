"""collab.protocol and collab.crdt against bytes made by the real JavaScript encoders
(y-protocols, lib0, yjs): ``tests/js/vectors.mjs`` generates ``tests/js/protocol_vectors.json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from collab import crdt, protocol
from collab.protocol import ProtocolError
from tests.jsclient import JS_DIR, need_node

VECTORS_PATH = JS_DIR / "protocol_vectors.json"
VECTORS: dict[str, list[dict[str, Any]]] = json.loads(Path(VECTORS_PATH).read_text(encoding="utf-8"))


def by_name(group: str) -> list[Any]:
    return [pytest.param(v, id=v.get("name") or str(v.get("value", v.get("text")))[:20])
            for v in VECTORS[group]]


@pytest.mark.node
def test_checked_in_vectors_are_what_the_js_encoders_produce() -> None:
    node = need_node()
    result = subprocess.run([node, "vectors.mjs"], cwd=JS_DIR, capture_output=True, timeout=60, check=True)
    regenerate = "cd tests/js && node vectors.mjs > protocol_vectors.json"
    assert json.loads(result.stdout) == VECTORS, f"the generator changed: {regenerate}"


@pytest.mark.parametrize("vector", by_name("varuints"))
def test_varuint(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    assert protocol.read_var_uint(raw, 0) == (vector["value"], len(raw))
    assert protocol.write_var_uint(vector["value"]) == raw


@pytest.mark.parametrize("vector", by_name("strings"))
def test_var_string(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    assert protocol.read_var_string(raw, 0) == (vector["text"], len(raw))
    assert protocol.write_var_string(vector["text"]) == raw


def expected_message(vector: dict[str, Any]) -> protocol.Message:
    kind = vector["kind"]
    if kind == "query-awareness":
        return protocol.QueryAwareness()
    if kind == "auth-denied":
        return protocol.Auth(denied=True, reason=vector["reason"])
    payload = bytes.fromhex(vector["payload"])
    return {"step1": protocol.SyncStep1, "step2": protocol.SyncStep2,
            "update": protocol.SyncUpdate}[kind](payload)


@pytest.mark.parametrize("vector", by_name("messages"))
def test_message_decodes_and_reencodes_identically(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    message = protocol.decode_message(raw)
    assert message == expected_message(vector)
    assert protocol.encode_message(message) == raw


@pytest.mark.parametrize("vector", by_name("messages"))
def test_dedicated_encoders_match(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    kind = vector["kind"]
    if kind == "query-awareness":
        assert protocol.encode_query_awareness() == raw
    elif kind == "auth-denied":
        assert protocol.encode_auth_denied(vector["reason"]) == raw
    else:
        encode = {"step1": protocol.encode_sync_step1, "step2": protocol.encode_sync_step2,
                  "update": protocol.encode_sync_update}[kind]
        assert encode(bytes.fromhex(vector["payload"])) == raw


@pytest.mark.parametrize("vector", by_name("awareness"))
def test_awareness(vector: dict[str, Any]) -> None:
    raw, payload = bytes.fromhex(vector["hex"]), bytes.fromhex(vector["payload"])
    assert protocol.decode_message(raw) == protocol.AwarenessUpdate(payload)
    entries = protocol.decode_awareness_payload(payload)
    assert [(e.client_id, e.clock, e.state) for e in entries] == [
        (e["client_id"], e["clock"], e["state"]) for e in vector["entries"]]
    assert [e.is_removal for e in entries] == [e["state"] == "null" for e in vector["entries"]]
    assert protocol.encode_awareness_payload(entries) == payload
    assert protocol.encode_awareness(payload) == raw


@pytest.mark.parametrize("vector", VECTORS["documents"], ids=lambda v: repr(v["text"][:12]))
def test_engine_reads_yjs_documents(vector: dict[str, Any]) -> None:
    update = bytes.fromhex(vector["update"])
    doc = crdt.Document()
    doc.apply(update)
    assert doc.text() == vector["text"]
    expected_sv = {int(client): clock for client, clock in vector["state_vector"].items()}
    assert crdt.decode_state_vector(crdt.state_vector_of(update)) == expected_sv
    assert crdt.decode_state_vector(doc.state_vector()) == expected_sv
    # The engine's own encoding of the same document is interchangeable with Yjs's.
    assert crdt.contains_all(doc.full_state(), [update])
    assert crdt.contains_all(update, [doc.full_state()])


def step2_against_state_vector() -> tuple[bytes, bytes]:
    [vector] = [v for v in VECTORS["messages"] if v["name"] == "step2 against a state vector"]
    return bytes.fromhex(vector["payload"]), bytes.fromhex(VECTORS["documents"][1]["update"])


def test_engine_applies_a_yjs_diff_on_top_of_its_base() -> None:
    diff, base = step2_against_state_vector()
    doc = crdt.Document()
    assert doc.apply(base) is not None
    assert doc.apply(diff) is not None
    assert doc.text() == VECTORS["documents"][0]["text"]


# --- malformed input: every bound is checked ---------------------------------------------------


def all_frames() -> list[Any]:
    frames = [(v["name"], bytes.fromhex(v["hex"])) for v in VECTORS["messages"] + VECTORS["awareness"]]
    return [pytest.param(raw, id=name) for name, raw in frames]


def prefixes(raw: bytes) -> list[int]:
    """Every proper prefix length of a short frame; for a long one, the interesting ones."""
    if len(raw) <= 600:
        return list(range(len(raw)))
    return [*range(12), *range(len(raw) - 12, len(raw)), len(raw) // 2]


@pytest.mark.parametrize("raw", all_frames())
def test_every_truncation_is_refused(raw: bytes) -> None:
    for cut in prefixes(raw):
        with pytest.raises(ProtocolError):
            protocol.decode_message(raw[:cut])


@pytest.mark.parametrize("raw", all_frames())
def test_trailing_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_message(raw + b"\x00")


@pytest.mark.parametrize("vector", by_name("awareness"))
def test_truncated_awareness_payload_is_refused(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["payload"])
    for cut in range(len(payload)):
        with pytest.raises(ProtocolError):
            protocol.decode_awareness_payload(payload[:cut])


WITH_LENGTH = [p for p in by_name("messages") if p.values[0]["kind"] != "query-awareness"]


@pytest.mark.parametrize("vector", WITH_LENGTH)
def test_declared_length_past_the_end_is_refused(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    header = raw[:2]  # message type and sync type (or auth kind), then the length
    _, body_start = protocol.read_var_uint(raw, 2)
    body = raw[body_start:]
    for declared in (len(body) + 1, 2**32, 2**53 - 1):
        forged = header + protocol.write_var_uint(declared) + body
        with pytest.raises(ProtocolError, match="exceeds"):
            protocol.decode_message(forged)


@pytest.mark.parametrize("raw", [
    pytest.param(b"\x80" * 64, id="message type never ends"),
    pytest.param(b"\x00" + b"\xff" * 64, id="sync type never ends"),
    pytest.param(b"\x00\x02" + b"\x80" * 9 + b"\x01", id="length past 8 bytes"),
    pytest.param(b"\x01" + b"\xff" * 1000, id="awareness length never ends"),
    pytest.param(b"\x00\x02" + bytes.fromhex("8080808080808010") + b"x", id="length of 2**53"),
    pytest.param(b"\x00\x02" + bytes.fromhex("ffffffffffffff7f") + b"x", id="length of 2**56-1"),
])
def test_runaway_and_oversized_varints_are_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_message(raw)


def test_largest_js_number_is_the_varint_limit() -> None:
    limit = bytes.fromhex(next(v["hex"] for v in VECTORS["varuints"] if v["value"] == 2**53 - 1))
    assert protocol.read_var_uint(limit, 0) == (2**53 - 1, 8)
    with pytest.raises(ProtocolError, match="range"):
        protocol.read_var_uint(bytes.fromhex("8080808080808010"), 0)  # 2**53
    with pytest.raises(ValueError):
        protocol.write_var_uint(2**53)
