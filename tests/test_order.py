"""The document's order of items (collab/order.py) against the engine, and the check it makes
possible: an item whose right origin is not to the right of its origin is refused, so that no
sequence of messages makes two honest replicas diverge."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collab import crdt, gate
from collab.gate import _write_uint as uint
from collab.order import Order

FIRST_CHAR = 0x4E00
"""Every inserted character is a distinct CJK one (one UTF-16 unit): the engine's text then
names the order of the visible items."""


def item(origin: tuple[int, int] | None, right: tuple[int, int] | None, text: str,
         parent: str | None = None) -> bytes:
    """One string item, encoded as Yjs does."""
    info = 0x04 | (0x80 if origin else 0) | (0x40 if right else 0)
    out = bytes([info])
    if origin:
        out += uint(origin[0]) + uint(origin[1])
    if right:
        out += uint(right[0]) + uint(right[1])
    if not origin and not right:
        assert parent is not None
        out += b"\x01" + uint(len(parent)) + parent.encode()
    raw = text.encode()
    return out + uint(len(raw)) + raw


def update(client: int, clock: int, *structs: bytes) -> bytes:
    return uint(1) + uint(len(structs)) + uint(client) + uint(clock) + b"".join(structs) + b"\x00"


class Replica:
    """An honest writer: a plain engine document, as a Yjs client holds one."""

    def __init__(self, client: int) -> None:
        self.doc = pycrdt.Doc(client_id=client)
        self.text = self.doc.get("text", type=pycrdt.Text)

    def _offset(self, index: int) -> int:
        """The engine's offset (UTF-8 bytes) of character ``index``."""
        return len(str(self.text)[:index].encode())

    def insert(self, index: int, chars: str) -> bytes:
        before = self.doc.get_state()
        self.text.insert(self._offset(index), chars)
        return self.doc.get_update(before)

    def delete(self, index: int, length: int) -> bytes | None:
        size = len(str(self.text))
        if not size:
            return None
        before = self.doc.get_state()
        index = min(index, size - 1)
        del self.text[self._offset(index):self._offset(min(size, index + length))]
        return self.doc.get_update(before)

    def apply(self, data: bytes) -> None:
        self.doc.apply_update(data)

    def diff(self, other: Replica) -> bytes:
        return self.doc.get_update(other.doc.get_state())


def assert_same_order(doc: crdt.Document, chars: dict[tuple[int, int], str]) -> None:
    text = doc.text()
    ordered = [chars[i] for i in doc._order.items("text") if i in chars and chars[i] in text]
    assert "".join(ordered) == text


operations = st.lists(st.tuples(st.sampled_from(["insert", "insert", "insert", "delete", "sync",
                                                 "serve"]),
                                st.integers(0, 2), st.integers(0, 2), st.integers(0, 40),
                                st.integers(1, 3)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.permutations([3, 1_000_000, 2**40]), st.randoms(use_true_random=False))
def test_honest_concurrent_edits_pass_and_the_order_matches_the_engine(
        ops: list[tuple[str, int, int, int, int]], client_ids: list[int], rng: random.Random) -> None:
    """Three writers edit concurrently and sync now and then; the server takes what each sent,
    in arrival order, and sometimes a merged diff: nothing honest is refused, and the server's
    order of items is the engine's."""
    replicas = [Replica(c) for c in client_ids]
    server = crdt.Document()
    chars: dict[tuple[int, int], str] = {}
    outbox: list[list[bytes]] = [[], [], []]
    counter = 0
    for op, a, b, index, length in ops:
        writer = replicas[a]
        if op == "insert":
            text = "".join(chr(FIRST_CHAR + counter + k) for k in range(length))
            counter += length
            sent = writer.insert(index, text)
            for struct in gate.structs(sent):
                if struct.kind == 4:
                    assert struct.length == length
                    for k in range(length):
                        chars[(struct.client, struct.clock + k)] = text[k]
            outbox[a].append(sent)
        elif op == "delete":
            sent = writer.delete(index, length)
            if sent is not None:
                outbox[a].append(sent)
        elif op == "sync" and a != b:
            replicas[b].apply(writer.diff(replicas[b]))
        elif op == "serve":
            pending, outbox[a] = outbox[a], []
            if pending and rng.random() < 0.3:
                pending = [pycrdt.merge_updates(*pending)]
            for data in pending:
                server.apply(data)
    for pending in outbox:
        for data in pending:
            server.apply(data)
    for replica in replicas:
        for other in replicas:
            other.apply(replica.diff(other))
    assert server.text() == str(replicas[0].text)
    assert_same_order(server, chars)
    joiner = crdt.document_from([server.full_state()])  # a fresh load orders the same way
    assert joiner.text() == server.text()
    assert list(joiner._order.items("text")) == list(server._order.items("text"))


def relay(server: crdt.Document, data: bytes, sender: int | None, inbox: list[list[bytes]]) -> None:
    """What a room does with an update: what it changed goes to the others, what it let in of
    earlier waiting ones to everybody."""
    applied = server.integrate(data)
    if applied.update is not None:
        for w, box in enumerate(inbox):
            if w != sender:
                box.append(applied.update)
    for change in applied.released:
        for box in inbox:
            box.append(change.update)


hostile_ops = st.lists(st.tuples(st.sampled_from(["hostile", "type", "type", "send", "receive"]),
                                 st.integers(0, 1), st.integers(0, 10_000), st.integers(0, 10_000),
                                 st.sampled_from([2, 50, 2**33])), min_size=1, max_size=50)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_ops, st.sampled_from([(3, 10**6), (10**6, 3), (40, 41)]))
def test_hostile_origins_never_make_honest_replicas_diverge(
        ops: list[tuple[str, int, int, int, int]], writer_ids: tuple[int, int]) -> None:
    """Hostile items with any origin and right origin the server holds (or none), among two
    writers typing concurrently: the server refuses what it must, relays what it took, and in
    the end the writers, the server and a fresh joiner hold the same text. (Without the check,
    a writer ended with the same characters in another order in about one case in six.)"""
    writers = [Replica(c) for c in writer_ids]
    server = crdt.Document()
    server.apply(writers[0].insert(0, "abcdef"))
    writers[1].apply(writers[0].diff(writers[1]))
    ids = [(writer_ids[0], clock) for clock in range(6)]
    outbox: list[list[bytes]] = [[], []]
    inbox: list[list[bytes]] = [[], []]
    hostile_clock: dict[int, int] = {}
    for op, w, x, y, hostile in ops:
        if op == "hostile":
            origin = ids[x % len(ids)] if x % 5 else None
            right = ids[y % len(ids)] if y % 5 else None
            clock = hostile_clock.get(hostile, 0)
            data = update(hostile, clock, item(origin, right, "H", parent="text"))
            try:
                relay(server, data, None, inbox)
            except crdt.InvalidUpdate as refusal:
                assert refusal.reason == "origins"
                continue
            hostile_clock[hostile] = clock + 1
            ids.append((hostile, clock))
        elif op == "type":
            sent = writers[w].insert(x % 8, "w")
            outbox[w].append(sent)
            ids.extend((writer_ids[w], s.clock) for s in gate.structs(sent) if s.kind == 4)
        elif op == "send":
            for data in outbox[w]:
                relay(server, data, w, inbox)
            outbox[w] = []
        elif op == "receive":
            for data in inbox[w]:
                writers[w].apply(data)
            inbox[w] = []
    for w in (0, 1):
        for data in outbox[w]:
            relay(server, data, w, inbox)
    for w in (0, 1):
        for data in inbox[w]:
            writers[w].apply(data)
    joiner = crdt.document_from([server.full_state()])
    assert str(writers[0].text) == str(writers[1].text) == server.text() == joiner.text()


def test_the_reproduction_of_the_campaigns_divergence_is_refused() -> None:
    """From the long fuzzing campaign, reduced: an item whose right origin is to the left of its
    origin. Before the check, the server (which took it before a writer's concurrent edit) and
    the writer (which took it after) ended with the same characters in other orders."""
    base = Replica(1)
    base_update = base.insert(0, "abcdef")
    hostile = update(2, 0, item((1, 4), (1, 1), "H"))
    writer = Replica(3)
    writer.apply(base_update)
    concurrent = writer.insert(1, "z")

    engine = Replica(7)  # what a server without the check did: the engine takes anything
    engine.apply(base_update)
    engine.apply(hostile)
    engine.apply(concurrent)
    unchecked_writer = Replica(3)
    unchecked_writer.apply(base_update)
    unchecked_writer.apply(concurrent)
    unchecked_writer.apply(hostile)
    assert str(engine.text) != str(unchecked_writer.text), "the reproduction no longer diverges"

    server = crdt.Document()
    server.apply(base_update)
    with pytest.raises(crdt.InvalidUpdate) as refused:
        server.apply(hostile)
    assert refused.value.reason == "origins"
    assert server.text() == "abcdef"
    server.apply(concurrent)
    writer_text = str(writer.text)
    assert server.text() == writer_text == "azbcdef"


@pytest.mark.parametrize("name, structs", [
    ("right origin left of the origin", [item((1, 4), (1, 1), "H")]),
    ("right origin equal to the origin", [item((1, 2), (1, 2), "H")]),
    ("right origin in another sequence", [item((1, 2), (5, 0), "H")]),
    ("inconsistent in the same update, after a sound item",
     [item((1, 1), (1, 2), "G"), item((2, 0), (1, 0), "H")]),
])
def test_inconsistent_origins_are_refused_and_change_nothing(name: str, structs: list[bytes]) -> None:
    doc = crdt.Document()
    doc.apply(Replica(1).insert(0, "abcdef"))
    other = Replica(5)
    doc.apply(update(5, 0, item(None, None, "x", parent="other")))
    state, text = doc.state_vector(), doc.text()
    order = list(doc._order.items("text"))
    with pytest.raises(crdt.InvalidUpdate) as refused:
        doc.apply(update(2, 0, *structs))
    assert refused.value.reason == "origins", name
    assert doc.state_vector() == state and doc.text() == text
    assert list(doc._order.items("text")) == order
    assert other is not None


def test_an_item_with_concurrent_items_between_its_origins_passes() -> None:
    """Between an honest item's origins lie only items its maker did not know: those pass,
    wherever they are; an item of the maker's own past between them does not."""
    doc = crdt.Document()
    base = Replica(1)
    doc.apply(base.insert(0, "abc"))
    concurrent = Replica(5)
    concurrent.apply(doc.full_state())
    doc.apply(concurrent.insert(1, "xyz"))  # a x y z b c
    doc.apply(update(2, 0, item((1, 0), (1, 1), "H")))  # made without knowing x y z
    assert doc.text() in ("aHxyzbc", "axyzHbc")
    doc.apply(update(3, 0, item((5, 0), (1, 1), "K")))  # knew x, not y and z: passes
    assert "xK" in doc.text() or "zK" in doc.text()
    text = doc.text()
    with pytest.raises(crdt.InvalidUpdate) as refused:  # right origin y: x precedes y in its
        doc.apply(update(4, 0, item((1, 0), (5, 1), "L")))  # client, so its maker knew x
    assert refused.value.reason == "origins" and doc.text() == text


class _GeneralOrder(Order):
    """An order that always takes the general path."""

    __slots__ = ()

    def integrate(self, structs: Sequence[gate.Struct], *, check: bool = True) -> None:
        self._integrate_all(self._in_dependency_order(structs), len(structs), check)


def _runs(order: Order) -> dict[int, list[tuple[int, int, bool]]]:
    return {client: [(run.clock, run.length, run.gc) for run in runs]
            for client, runs in order._runs.items()}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.permutations([3, 1_000_000, 2**40]))
def test_typing_takes_the_short_path_to_the_same_order(
        ops: list[tuple[str, int, int, int, int]], client_ids: list[int]) -> None:
    """The short path for typing (an item after its client's last one) leaves the order, its
    runs and their labels' order exactly as the general path does."""
    replicas = [Replica(c) for c in client_ids]
    sent: list[bytes] = []
    for op, a, b, index, length in ops:
        if op == "insert":
            sent.append(replicas[a].insert(index, "x" * length))
        elif op == "delete":
            deleted = replicas[a].delete(index, length)
            if deleted is not None:
                sent.append(deleted)
        elif op in ("sync", "serve") and a != b:
            replicas[b].apply(replicas[a].diff(replicas[b]))
    short, general = Order(), _GeneralOrder()
    state: dict[int, int] = {}
    for data in sent:
        plan = gate.plan(data, state)
        if plan.ready is None:
            continue  # waits for another writer's changes: never handed to an order
        state.update(plan.clocks)
        short.integrate(plan.items)
        general.integrate(plan.items)
    assert list(short.items("text")) == list(general.items("text"))
    assert _runs(short) == _runs(general)


class _GeneralDocument(crdt.Document):
    """A document that plans every update by the gate's general reader and orders its items
    by the order's general path (no path for typing anywhere)."""

    def __init__(self) -> None:
        super().__init__()
        self._order = _GeneralOrder()

    def integrate(self, update: bytes, origin: object = None) -> crdt.Applied:
        self._check_usable()
        return self._integrate_plan(gate._plan_read(update, self._clocks), origin)


def _outcome(doc: crdt.Document, data: bytes) -> object:
    try:
        applied = doc.integrate(data, "sender")
    except crdt.InvalidUpdate as refusal:
        return refusal.reason
    return (applied.update, dict(applied.ranges), applied.waiting,
            [(change.update, change.origin, dict(change.ranges)) for change in applied.released])


typing_ops = st.lists(st.tuples(st.sampled_from(["hostile", "type", "type", "type", "delete",
                                                 "send", "sync"]),
                                st.integers(0, 1), st.integers(0, 10_000), st.integers(0, 10_000),
                                st.sampled_from([2, 50, 2**33])), min_size=1, max_size=50)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typing_ops, st.randoms(use_true_random=False))
def test_the_documents_path_for_typing_integrates_as_the_general_path(
        ops: list[tuple[str, int, int, int, int]], rng: random.Random) -> None:
    """Two writers typing and deleting concurrently, updates delivered late or out of order
    (so that some wait and are released), hostile items among them: a document that takes
    typing edits by its short path answers every update as one that plans and orders each by
    the general path (the same refusals, changes, ranges, waiting and releases), and ends, or
    loads what it produced, in the same state."""
    writers = [Replica(3), Replica(10**6)]
    base = writers[0].insert(0, "abcdef")
    writers[1].apply(base)
    short, general = crdt.Document(), _GeneralDocument()
    stored: list[bytes] = []
    ids = [(3, clock) for clock in range(6)]
    outbox: list[list[bytes]] = [[], []]
    hostile_clock: dict[int, int] = {}

    def deliver(data: bytes) -> bool:
        outcome = _outcome(short, data)
        assert outcome == _outcome(general, data)
        if isinstance(outcome, str):
            return False
        produced, _ranges, _waiting, released = outcome
        stored.extend([produced] if produced is not None else [])  # what a room stores
        stored.extend(change for change, _origin, _ranges in released)
        return True

    deliver(base)
    for op, w, x, y, hostile in ops:
        if op == "hostile":
            origin = ids[x % len(ids)] if x % 5 else None
            right = ids[y % len(ids)] if y % 5 else None
            clock = hostile_clock.get(hostile, 0) + (1 if x % 7 == 0 else 0)  # sometimes a gap
            if deliver(update(hostile, clock, item(origin, right, "H", parent="text"))):
                hostile_clock[hostile] = clock + 1
                ids.append((hostile, clock))
        elif op == "type":
            sent = writers[w].insert(x % 10, "w" * (1 + y % 3 // 2))
            outbox[w].append(sent)
            ids.extend((s.client, s.clock) for s in gate.structs(sent) if s.kind == 4)
        elif op == "delete":
            sent = writers[w].delete(x % 10, 1 + y % 2)
            if sent is not None:
                outbox[w].append(sent)
        elif op == "send":
            pending, outbox[w] = outbox[w], []
            if len(pending) > 1 and rng.random() < 0.3:
                rng.shuffle(pending)
            for data in pending:
                deliver(data)
        elif op == "sync":
            writers[w].apply(writers[1 - w].diff(writers[w]))
    assert short.text() == general.text()
    assert short.clocks() == general.clocks()
    assert (short.waiting, short.waiting_bytes) == (general.waiting, general.waiting_bytes)
    assert _runs(short._order) == _runs(general._order)
    assert list(short._order.items("text")) == list(general._order.items("text"))
    loaded, loaded_general = crdt.Document(), _GeneralDocument()
    assert loaded.load(stored) == [] and loaded_general.load(stored) == []
    assert loaded.text() == loaded_general.text() == short.text()
    assert _runs(loaded._order) == _runs(loaded_general._order)


def test_typing_after_an_item_with_another_right_origin_is_checked() -> None:
    """Only an item whose right origin is still its run's right neighbour grows the run at
    once; one that names another right origin is checked as any other."""
    base, x, y = (Replica(1).insert(0, "abcdef"), update(2, 0, item((1, 2), (1, 3), "X")),
                  update(2, 1, item((2, 0), (1, 3), "Y")))
    order, state = Order(), {}
    for data in (base, x, y):
        plan = gate.plan(data, state)
        state.update(plan.clocks)
        if data is y:
            assert order._extends_run(plan.items[0])  # the short path took it
        else:
            order.integrate(plan.items)
    doc = crdt.Document()
    for data in (base, x, y):
        doc.apply(data)
    assert doc.text() == "abcXYdef"
    assert _runs(doc._order) == _runs(order)
    assert _runs(doc._order)[2] == [(0, 2, False)]
    for right in ((1, 1), (1, 4)):  # left of its origin; past d, which its maker knew
        with pytest.raises(crdt.InvalidUpdate) as refused:
            doc.apply(update(2, 2, item((2, 1), right, "Z")))
        assert refused.value.reason == "origins"
    assert doc.text() == "abcXYdef"
