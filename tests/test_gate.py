"""collab.gate: the strict Yjs v1 update decoder, against bytes from the real Yjs encoder
(``tests/js/update_vectors.mjs`` generates ``tests/js/update_vectors.json``), against what the
engine itself writes, and against random and mutated input."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collab import crdt, gate
from collab.gate import MAX_CLOCK, InvalidUpdate
from tests.jsclient import JS_DIR, need_node

VECTORS_PATH = JS_DIR / "update_vectors.json"
VECTORS: dict[str, list[dict[str, Any]]] = json.loads(Path(VECTORS_PATH).read_text(encoding="utf-8"))
ACCEPTED = [v for v in VECTORS["updates"] if v["refused"] is None]
SEEDS = [bytes.fromhex(v["hex"]) for v in ACCEPTED]


class HoldsEverything(dict):  # type: ignore[type-arg]
    """The state vector of a document that has every clock of every client."""

    def get(self, _client: int, _default: int = 0) -> int:  # type: ignore[override]
        return MAX_CLOCK - 1


def by_name(vectors: list[dict[str, Any]]) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in vectors]


def uint(value: int) -> bytes:
    return gate._write_uint(value)


def string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return uint(len(raw)) + raw


def update(*clients: bytes, deletes: bytes = b"\x00") -> bytes:
    return uint(len(clients)) + b"".join(clients) + deletes


def section(client: int, clock: int, *structs: bytes) -> bytes:
    return uint(len(structs)) + uint(client) + uint(clock) + b"".join(structs)


def text_item(value: str, *, origin: tuple[int, int] | None = None,
              right: tuple[int, int] | None = None, root: str = "text") -> bytes:
    info = 4 | (0x80 if origin else 0) | (0x40 if right else 0)
    out = bytes([info])
    for ref in (origin, right):
        if ref:
            out += uint(ref[0]) + uint(ref[1])
    if not origin and not right:
        out += uint(1) + string(root)
    return out + string(value)


# --- what the real encoders write -----------------------------------------------------------


@pytest.mark.node
def test_checked_in_vectors_are_what_yjs_produces() -> None:
    node = need_node()
    result = subprocess.run([node, "update_vectors.mjs"], cwd=JS_DIR, capture_output=True, timeout=60,
                            check=True)
    regenerate = "cd tests/js && node update_vectors.mjs > update_vectors.json"
    assert json.loads(result.stdout) == VECTORS, f"the generator changed: {regenerate}"


@pytest.mark.parametrize("vector", by_name(VECTORS["updates"]))
def test_every_yjs_update_passes_unchanged_and_reads_as_yjs_reads_it(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    if vector["refused"] is not None:
        with pytest.raises(InvalidUpdate) as refused:
            gate.check_update(raw)
        assert refused.value.reason == vector["refused"]
        return
    info = gate.inspect(raw)
    assert {str(c): list(span) for c, span in info.clocks.items()} == vector["clocks"]
    assert {str(c): end for c, end in info.deletes_to.items()} == vector["deletes"]
    # Against a document that holds everything, an update is integrated whole, as it is.
    plan = gate.plan(raw, HoldsEverything())
    assert plan.held is None
    assert plan.ready in (raw, None)


@pytest.mark.parametrize("vector", by_name(ACCEPTED))
def test_the_engine_takes_each_yjs_update_without_holding_anything_back(vector: dict[str, Any]) -> None:
    doc = crdt.Document()
    doc.load([bytes.fromhex(vector["hex"])])  # verifies the engine's state vector afterwards
    gate.check_update(doc.full_state())
    # What waits is exactly what an empty document cannot integrate: the engine has none of it.
    assert gate.decode_state_vector(doc.state_vector()) == doc.clocks()


@pytest.mark.parametrize("vector", by_name(VECTORS["state_vectors"]))
def test_yjs_state_vectors(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    assert gate.decode_state_vector(raw) == {int(c): k for c, k in vector["clocks"].items()}
    assert gate.encode_state_vector(gate.decode_state_vector(raw)) == raw


# What the engine writes must pass too: stored documents and relayed updates are its output.
_EDITS = st.lists(st.tuples(st.sampled_from(["insert", "delete", "map", "array", "xml"]),
                            st.integers(0, 40),
                            st.text("abcxyz ,.!", min_size=1, max_size=12)),
                  min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EDITS, st.integers(0, 2**53 - 1))
def test_everything_the_engine_writes_passes_the_gate(edits: list[tuple[str, int, str]],
                                                      client_id: int) -> None:
    import pycrdt

    doc = pycrdt.Doc(client_id=client_id)
    produced: list[bytes] = []
    doc.observe(lambda event: produced.append(event.update))
    text = doc.get("text", type=pycrdt.Text)
    values = doc.get("values", type=pycrdt.Map)
    items = doc.get("items", type=pycrdt.Array)
    fragment = doc.get("xml", type=pycrdt.XmlFragment)
    for op, index, value in edits:
        if op == "insert":
            text.insert(min(index, len(text)), value)
        elif op == "delete" and len(text):
            start = min(index, len(text) - 1)
            del text[start:min(len(text), start + len(value))]
        elif op == "map":
            values[value] = {"n": index, "list": [value, None, True, 1.5], "nested": {"k": [index]}}
        elif op == "array":
            items.append(pycrdt.Map({"v": value}) if index % 2 else value)
            if index % 3 == 0 and len(items) > 1:
                del items[0]
        else:
            element = pycrdt.XmlElement("p", {"class": value})
            fragment.children.append(element)
            element.children.append(pycrdt.XmlText(value))
    state = doc.get_state()
    whole = doc.get_update()
    for part in [*produced, whole, doc.get_update(produced[0] and pycrdt.get_state(produced[0])),
                 pycrdt.merge_updates(*produced)]:
        gate.check_update(part)
    clocks = gate.decode_state_vector(state)
    assert {c: end for c, (_s, end) in gate.inspect(whole).clocks.items()} == clocks
    # Delivered in any order, the updates end up as the document, and the engine of the
    # receiver never holds anything the gate did not plan for.
    shuffled = produced[:]
    random.Random(client_id).shuffle(shuffled)
    receiver = crdt.Document()
    for part in shuffled:
        receiver.integrate(part)
    assert receiver.waiting == 0
    assert receiver.clocks() == clocks
    assert receiver.text() == str(text)


# --- the reproductions and every rule -------------------------------------------------------


def test_the_struct_at_clock_two_to_the_32_is_refused() -> None:
    panic = bytes.fromhex("0101959aef3affffffff0f418906000301959aef3a010003")
    with pytest.raises(InvalidUpdate) as refused:
        gate.check_update(panic)
    assert refused.value.reason == "clock"


@pytest.mark.parametrize(("raw", "reason"), [
    pytest.param(update(section(1, MAX_CLOCK - 2, text_item("abc"))), "clock", id="clock past the bound"),
    pytest.param(update(section(1, 0, text_item("a", origin=(2, MAX_CLOCK)))),
                 "clock", id="origin past the bound"),
    pytest.param(update(deletes=uint(1) + uint(1) + uint(1) + uint(MAX_CLOCK) + uint(1)), "clock",
                 id="deletion past the bound"),
    pytest.param(uint(2**30) + b"\x00", "count", id="clients beyond the bytes left"),
    pytest.param(uint(1) + uint(2**31) + uint(1) + uint(0) + b"\x00", "count",
                 id="structs beyond the bytes left"),
    pytest.param(update(section(1, 0, b"\x08" + uint(1) + string("a") + uint(2**20) + b"\x7e")), "count",
                 id="values beyond the bytes left"),
    pytest.param(update(section(1, 0, b"\x08" + uint(1) + string("a") + uint(1) + b"\x75" + uint(2**40))),
                 "count", id="array beyond the bytes left"),
    pytest.param(update(deletes=uint(1) + uint(1) + uint(2**20) + b"\x00\x01"), "count",
                 id="deletions beyond the bytes left"),
    pytest.param(update(section(1, 0, b"\x08" + uint(1) + string("a") + uint(1)
                                + b"\x75\x01" * 100 + b"\x7e")),
                 "depth", id="a value nested 100 deep"),
    pytest.param(update(section(1, 0, b"\x05" + uint(1) + string("t") + string("[" * 100 + "]" * 100))),
                 "depth", id="an embed nested 100 deep"),
    pytest.param(update(section(1, 0, b"\x05" + uint(1) + string("t") + string("{oops"))),
                 "json", id="embed not JSON"),
    pytest.param(update(section(1, 0, b"\x06" + uint(1) + string("t") + string("bold") + string("NaN"))),
                 "json",
                 id="format value NaN"),
    pytest.param(update(section(1, 0, b"\x02" + uint(1) + string("a") + uint(1) + string('"x"'))),
                 "unsupported", id="legacy JSON content"),
    pytest.param(update(section(1, 0, b"\x07" + uint(1) + string("f") + b"\x05" + string("hook"))),
                 "unsupported", id="XML hook"),
    pytest.param(update(section(1, 0, b"\x07" + uint(1) + string("f") + b"\x0f")),
                 "content", id="unknown type"),
    pytest.param(update(section(1, 0, b"\x0b" + uint(1) + string("a"))), "content", id="content kind 11"),
    pytest.param(update(section(1, 0, b"\x11" + uint(1) + string("a") + uint(1))), "content",
                 id="content kind 17 (read as 1 by a 4-bit mask)"),
    pytest.param(update(section(1, 0, b"\x40" + uint(3))), "flags", id="flags on a GC struct"),
    pytest.param(update(section(1, 0, b"\x04" + uint(2) + string("t") + string("a"))),
                 "flags", id="parent kind 2"),
    pytest.param(update(section(1, 0, b"\x00" + uint(0))), "length", id="GC of length 0"),
    pytest.param(update(section(1, 0, text_item(""))), "length", id="empty string"),
    pytest.param(update(deletes=uint(1) + uint(1) + uint(1) + uint(0) + uint(0)),
                 "length", id="deletion of 0"),
    pytest.param(update(section(1, 0, b"\x04" + uint(1) + string("text") + uint(3) + b"\xed\xb3\xbf")),
                 "utf8", id="a surrogate encoded as UTF-8"),
    pytest.param(update(section(1, 0, b"\x04" + uint(1) + uint(2) + b"\xc3\x28" + string("a"))),
                 "utf8", id="a root name that is not UTF-8"),
    pytest.param(update(section(1, 0, text_item("a")), section(1, 1, text_item("b", origin=(1, 0)))),
                 "duplicate", id="a client twice"),
    pytest.param(update(section(1, 0, text_item("a")),
                        deletes=uint(2) + (uint(1) + uint(1) + b"\x00\x01") * 2),
                 "duplicate", id="a client twice in the delete set"),
    pytest.param(update(section(1, 5, text_item("a", origin=(1, 5)))),
                 "reference", id="its own clock as origin"),
    pytest.param(update(section(1, 5, text_item("a", right=(1, 9)))),
                 "reference", id="a later clock as origin"),
    pytest.param(update(section(1, 0, text_item("ab"), b"\x04" + uint(0) + uint(1) + uint(0) + string("x"))),
                 "reference", id="a string as parent"),
    pytest.param(update(section(1, 0, text_item("a"))) + b"\x00", "trailing",
                 id="bytes after the delete set"),
    pytest.param(b"\x01\x01" + b"\xff" * 9, "varint", id="a number longer than 8 bytes"),
    pytest.param(b"", "truncated", id="empty"),
    pytest.param(update(section(1, 0, text_item("abc")))[:-3], "truncated", id="cut short"),
])
def test_what_breaks_a_rule_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidUpdate) as refused:
        gate.check_update(raw)
    assert refused.value.reason == reason
    assert reason in gate.REASONS


def test_a_parent_that_is_a_type_of_the_same_update_is_accepted() -> None:
    nested = update(section(1, 0, b"\x07" + uint(1) + string("m") + b"\x02",
                            b"\x04" + uint(0) + uint(1) + uint(0) + string("inner")))
    info = gate.inspect(nested)
    assert info.type_ids == {(1, 0)}
    assert crdt.document_from([nested]).clocks() == {1: 6}


@pytest.mark.parametrize(("raw", "reason"), [
    pytest.param(b"\x0a" + b"\x01\x01" * 3, "count", id="count beyond the bytes left"),
    pytest.param(b"\xff\xff\xff\xff\x0f\x01\x01", "count", id="the 10-byte step 1 count"),
    pytest.param(b"\x01\x01" + uint(MAX_CLOCK + 1), "clock", id="clock past the bound"),
    pytest.param(b"\x02\x01\x01\x01\x02", "duplicate", id="a client twice"),
    pytest.param(b"\x01\x01\x01\x00", "trailing", id="trailing bytes"),
    pytest.param(b"", "truncated", id="empty"),
])
def test_bad_state_vectors_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidUpdate) as refused:
        gate.decode_state_vector(raw)
    assert refused.value.reason == reason


def test_json_depth_is_decided_before_parsing() -> None:
    assert gate.json_depth_within('{"a": [1, {"b": "[[[[[[[["}]}', 3)
    assert not gate.json_depth_within("[" * 5000 + "]" * 5000)
    assert gate.json_depth_within("[" * 64 + "]" * 64)
    assert not gate.json_depth_within("[" * 65 + "]" * 65)
    assert gate.json_depth_within("[[]]" * 1000, 2)
    assert not gate.json_depth_within("[{" * 40 + "}]" * 40)  # alternating kinds count each level


# --- planning against a document --------------------------------------------------------------


def test_a_struct_after_a_gap_waits_instead_of_entering_the_document() -> None:
    writer = crdt.Document()
    base = writer.edit_text(0, "hello world")
    assert base is not None
    [client] = writer.clocks()
    silent = update(section(99, 42, text_item("xx", origin=(client, 4), right=(client, 5))))
    doc = crdt.document_from([base])
    plan = gate.plan(silent, doc.clocks())
    assert plan.ready is None and plan.held == silent and plan.waits_for == ((99, 41),)
    applied = doc.integrate(silent)
    assert applied.update is None and applied.waiting
    assert doc.text() == "hello world"
    assert crdt.document_from([doc.full_state()]).text() == "hello world"


def test_a_split_update_integrates_what_it_can_and_the_rest_later() -> None:
    alice, bob = crdt.Document(), crdt.Document()
    first = alice.edit_text(0, "ab")
    assert first is not None
    bob.apply(first)
    second = bob.edit_text(1, "X")  # depends on alice's first
    third = alice.edit_text(2, "c")
    assert second is not None and third is not None
    both = crdt.merge([second, third])  # alice's part can go in at once, bob's must wait
    receiver = crdt.Document()
    assert receiver.apply(crdt.merge([alice.edit_text(0, "") or crdt.EMPTY_UPDATE])) is None
    plan = gate.plan(both, {})
    assert plan.ready is None and plan.held is not None  # alice's own part starts at clock 2
    receiver.apply(first)
    plan = gate.plan(both, receiver.clocks())
    assert plan.ready == both and plan.held is None
    # bob's struct without its dependency: the ready part carries only alice's struct.
    only_bob_missing = gate.plan(crdt.merge([second, third]), {**receiver.clocks()})
    assert only_bob_missing.held is None


def test_deletions_of_unknown_items_wait_for_them() -> None:
    writer = crdt.Document()
    insert = writer.edit_text(0, "abcdef")
    delete = writer.edit_text(1, delete=3)
    assert insert is not None and delete is not None
    doc = crdt.Document()
    applied = doc.integrate(delete)
    assert applied.update is None and applied.waiting and doc.waiting == 1
    applied = doc.integrate(insert)
    assert doc.text() == "aef" and doc.waiting == 0
    assert applied.update is not None and [c.origin for c in applied.released] == [None]


def test_waiting_is_bounded() -> None:
    doc = crdt.Document(max_waiting_bytes=100)
    orphan = update(section(7, 10, text_item("x" * 60, origin=(8, 3))))
    doc.integrate(orphan)
    with pytest.raises(InvalidUpdate) as refused:
        doc.integrate(update(section(9, 10, text_item("y" * 60, origin=(8, 3)))))
    assert refused.value.reason == "waiting"
    assert doc.waiting == 1


# --- random and mutated input ------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.dictionaries(st.integers(0, 300), st.integers(0, 300), max_size=4))
def test_random_bytes_raise_only_invalid_update(raw: bytes, state: dict[int, int]) -> None:
    for call in (gate.check_update, gate.decode_state_vector, lambda r: gate.plan(r, state)):
        try:
            call(raw)
        except InvalidUpdate as exc:
            assert exc.reason in gate.REASONS


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and data:
            i = rng.randrange(len(data))
            flipped = data[i] ^ (1 << rng.randrange(8))
            data[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256), flipped])
        elif choice < 0.7 and data:
            del data[rng.randrange(len(data))]
        elif choice < 0.9:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        else:
            del data[rng.randrange(len(data) + 1):]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.lists(st.sampled_from(range(len(SEEDS))), max_size=3))
def test_mutated_yjs_updates_are_refused_or_integrated_whole(seed: int, base: list[int]) -> None:
    """The gate's promise to the engine: whatever it lets through, the engine takes in without
    failing and without holding anything back."""
    rng = random.Random(seed)
    doc = crdt.Document()
    for index in base:
        doc.apply(SEEDS[index])
    mutant = _mutate(rng.choice(SEEDS), rng)
    try:
        doc.integrate(mutant)
    except InvalidUpdate as exc:
        assert exc.reason in (*gate.REASONS, "waiting")
        return
    assert gate.decode_state_vector(doc.state_vector()) == doc.clocks()
    gate.check_update(doc.full_state())


def test_a_large_update_goes_in_slices_whatever_order_its_clients_come_in() -> None:
    import pycrdt

    first = b"\x04" + uint(1) + string("text") + string("a")
    chain = [b"\x84" + uint(1) + uint(i) + string("b") for i in range(2500)]  # each after the last
    others = [b"\x84" + uint(1) + uint(2500) + string("c")] + [
        b"\x84" + uint(2) + uint(i) + string("d") for i in range(1499)]  # all after client 1's end
    update = uint(2) + (uint(1500) + uint(2) + uint(0) + b"".join(others)) + (
        uint(2501) + uint(1) + uint(0) + first + b"".join(chain)) + b"\x00"
    assert len(gate.slices(update)) == 5  # 1000 + 500, then 1000 + 1000 + 501 structs
    doc = crdt.Document()
    applied = doc.integrate(update)
    assert applied.update is not None and doc.waiting == 0
    assert doc.clocks() == {1: 2501, 2: 1500}
    reference = pycrdt.Doc()
    reference.apply_update(update)
    assert doc.text() == str(reference.get("text", type=pycrdt.Text))
    assert crdt.document_from([applied.update]).text() == doc.text()


def _typing(seed: int) -> tuple[dict[int, int], list[bytes]]:
    """A writer's typing (at a cursor that now and then jumps, with backspaces), and what the
    server holds before its last edit."""
    rng = random.Random(seed)
    other, writer = crdt.Document(), crdt.Document()
    writer.apply(other.edit_text(0, "shared text"))
    cursor, sent = 0, []
    for _ in range(rng.randint(1, 12)):
        length = len(writer.text())
        if rng.random() < 0.2:
            cursor = rng.randint(0, length)
        removed = min(cursor, rng.choice([0, 0, 0, 1, 3]))
        cursor -= removed
        cursor = min(cursor, length - removed)
        token = rng.choice(["a", "bc", "[1:23]", "é"])
        text = writer.text()  # the engine counts UTF-8 bytes
        at = len(text[:cursor].encode())
        update = writer.edit_text(at, token, len(text[:cursor + removed].encode()) - at)
        assert update is not None
        sent.append(update)
        cursor += len(token)
    server = crdt.Document()
    server.apply(other.full_state())
    for update in sent[:-1]:
        server.apply(update)
    return server.clocks(), sent


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.booleans())
def test_the_short_path_for_typing_plans_as_the_general_reader(seed: int, mutated: bool) -> None:
    """What typing sends is planned in a straight line; that plan is the general reader's, and
    whatever the straight line does not take (or would refuse) goes to the general reader."""
    state, sent = _typing(seed)
    update = _mutate(sent[-1], random.Random(seed)) if mutated else sent[-1]
    try:
        general: gate.Plan | InvalidUpdate = gate._plan_read(update, state)
    except InvalidUpdate as exc:
        general = exc
    try:
        typed = gate._plan_typing(update, state)
    except InvalidUpdate as exc:
        assert isinstance(general, InvalidUpdate) and exc.reason == general.reason
        return
    if typed is None:
        assert mutated or len(gate.structs(update)) != 1 or update[:2] != b"\x01\x01"
        return
    assert typed == general


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**28 - 1), st.lists(st.tuples(st.integers(0, 2**25 - 1), st.binary(max_size=3)),
                                           min_size=1, max_size=12))
def test_client_ids_that_share_their_first_bytes_decode_as_themselves(low: int,
                                                                      ids: list[tuple[int, bytes]]) -> None:
    """Client ids are decoded through a cache keyed on the first bytes of their encoding; ids that
    agree there and differ after (or are shorter than the key) must still decode exactly."""
    for high, after in ids:
        client = low | high << 28
        data = b"\x05" + gate._write_uint(client) + after
        assert gate._client(data, 1) == gate._uint(data, 1) == (client, len(data) - len(after))
