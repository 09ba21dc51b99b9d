"""The one seam to the CRDT engine (pycrdt, the Python bindings of Yrs).

Nothing else in collab imports the engine. Updates are Yjs v1 updates, interchangeable with Yjs,
y-py and pycrdt. Every update and state vector passes :mod:`collab.gate` before the engine sees
it, and the engine is only ever given what it can integrate completely: the rest of an update
waits here (bounded), outside the document and its encodings, until what it depends on arrives.
So the document, what it reports as changed, and what it hands to new joiners always agree.

Two errors leave this module: :class:`InvalidUpdate` (the input was refused and changed
nothing) and :class:`EnginePanic` (the engine failed inside a call: the document may be
damaged and must be rebuilt). Interrupts, exits and cancellations pass through untouched.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import pycrdt

from collab import gate
from collab.gate import InvalidUpdate
from collab.order import Order

__all__ = ["EMPTY_UPDATE", "TEXT_FIELD", "Applied", "Change", "DamagedDocument", "Document",
           "EnginePanic", "InvalidUpdate", "contains_all", "decode_state_vector", "document_from",
           "merge", "state_vector_of"]

TEXT_FIELD = "text"
"""The shared text the editor, the load tester and the exporter read and write."""

EMPTY_UPDATE = b"\x00\x00"
"""An update with no structs and an empty delete set."""

MAX_WAITING_BYTES = 4 * 1024 * 1024
"""What a document keeps of updates waiting for their dependencies, at most."""

T = TypeVar("T")

_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def _raw_engine_usable() -> bool:
    """Whether pycrdt's Rust document can be driven directly: a transaction, an update applied
    in it, a commit. pycrdt's own ``Doc.apply_update`` wraps those in a Python transaction
    object (a context manager, a lock check, an origins table), which cost more than the
    engine's own work on a typing edit; older or newer releases without them use that."""
    raw = getattr(pycrdt.Doc(), "_doc", None)
    return all(hasattr(raw, name) for name in ("create_transaction", "apply_update", "observe"))


_RAW_ENGINE = _raw_engine_usable()


class EnginePanic(Exception):
    """The engine failed inside a call (a Rust panic is a ``BaseException``, not an
    ``Exception``, or it raised after the gate accepted the input): the document may be
    damaged and is not used again."""


def _panic(action: str, exc: BaseException) -> EnginePanic:
    return EnginePanic(f"the engine failed while {action}: {type(exc).__name__}: {exc}")


class DamagedDocument(Exception):
    """A stored update of a document is refused by the gate or fails the engine: the document
    cannot be read whole, so it is not served (nor exported) in part. ``slug`` is the gate's
    reason (see :data:`gate.REASONS`), ``engine`` when the engine failed."""

    def __init__(self, reason: str, slug: str = "engine") -> None:
        super().__init__(reason)
        self.reason = reason
        self.slug = slug


@dataclass(frozen=True, slots=True)
class Change:
    """What the engine integrated of one update, as it encodes it, and who sent that update."""

    update: bytes
    origin: Hashable
    ranges: gate.Ranges
    """Per client, the clocks [start, end) of the structs it integrated (the update's own)."""


_NO_RANGES: gate.Ranges = MappingProxyType({})


class Applied:
    """The result of :meth:`Document.integrate` (a plain slotted class: one is made per edit,
    and its empty defaults are shared)."""

    __slots__ = ("ranges", "released", "update", "waiting")

    def __init__(self, *, waiting: bool = False) -> None:
        self.update: bytes | None = None
        """What this update changed (None: nothing, being a duplicate or waiting)."""
        self.ranges: gate.Ranges = _NO_RANGES
        """Per client, the clocks [start, end) of the structs in ``update``, known from the
        plan (so nobody reads the update again to learn them)."""
        self.released: Sequence[Change] = ()
        """Earlier updates that were waiting for this one, now integrated, in order."""
        self.waiting = waiting
        """Part of this update waits for changes the document does not have yet."""


@dataclass(slots=True)
class _Waiting:
    update: bytes
    origin: Hashable
    waits_for: tuple[tuple[int, int], ...]


class _NoOrder:
    """The order of a document that is only loaded, read and edited by the engine (see
    ``live``): loading places items without checking them, and the engine's own edits need no
    check, so the order would only serve checks of live updates that never come."""

    __slots__ = ()

    def integrate(self, structs: Sequence[gate.Struct], *, check: bool = True) -> None:
        if check:
            raise RuntimeError("this document only loads stored updates; it cannot check the "
                               "origins of a live one")


class Document:
    """One Yjs document. Not thread-safe: use it from one thread (the event loop)."""

    __slots__ = ("_clocks", "_damaged", "_doc", "_loading", "_order", "_produced", "_raw",
                 "_subscription", "_types", "_waiting", "_waiting_bytes", "max_waiting_bytes")

    def __init__(self, *, max_waiting_bytes: int = MAX_WAITING_BYTES,
                 live: bool = True) -> None:
        """``live=False``: a document that will only :meth:`load` stored updates and be read
        (a compaction's fold and its check, a read of a document no room holds). It keeps no
        order of items, which loading builds only for the origin checks of later live updates
        (about half the time of loading a large snapshot); integrating a live update into it
        raises ``RuntimeError``."""
        self._doc = pycrdt.Doc()
        self._raw: Any = self._doc._doc if _RAW_ENGINE else None
        self._produced: list[bytes] = []
        self._subscription = self._observe()
        self._clocks: dict[int, int] = {}
        """The engine's state vector, kept here so that planning an update costs no engine call."""
        self._types: set[tuple[int, int]] = set()
        self._order: Order | _NoOrder = Order() if live else _NoOrder()
        """The order of the document's items, for the gate's check of origins."""
        self._waiting: list[_Waiting] = []
        self._waiting_bytes = 0
        self._damaged: EnginePanic | None = None
        self._loading = False
        self.max_waiting_bytes = max_waiting_bytes

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        self._produced.append(event.update)

    def _observe(self) -> Any:
        if self._raw is not None:
            return self._raw.observe(self._on_transaction)
        return self._doc.observe(self._on_transaction)

    def _unobserve(self) -> None:
        if self._raw is not None:
            self._subscription.drop()
        else:
            self._doc.unobserve(self._subscription)

    def _engine_apply(self, update: bytes) -> None:
        """The engine's ``apply_update`` (see :data:`_RAW_ENGINE`); failures propagate."""
        raw = self._raw
        if raw is None:
            self._doc.apply_update(update)
            return
        txn = raw.create_transaction()
        try:
            raw.apply_update(txn, update)
            txn.commit()
        finally:
            txn.drop()

    # --- applying updates -----------------------------------------------------------------

    def integrate(self, update: bytes, origin: Hashable = None) -> Applied:
        """Apply a remote update as far as it can be, and whatever it lets in of the updates
        waiting. Raises :class:`InvalidUpdate` (nothing changed) or :class:`EnginePanic`."""
        if self._damaged is not None:
            raise self._damaged
        item = gate.typing_item(update, self._clocks)
        if item is not None:
            return self._integrate_typing(update, item)
        return self._integrate_plan(gate.plan(update, self._clocks), origin)

    def _integrate_plan(self, plan: gate.Plan, origin: Hashable) -> Applied:
        """:meth:`integrate` by the gate's plan of the update (the general path)."""
        if (plan.held is not None and not self._loading
                and self._waiting_bytes + len(plan.held) > self.max_waiting_bytes):
            raise InvalidUpdate(f"it depends on changes this server does not have, and "
                                f"{self._waiting_bytes} bytes already wait for theirs", "waiting")
        result = Applied(waiting=plan.held is not None)
        if plan.ready is not None:
            if plan.parent_refs:
                self._check_parents(plan)
            result.ranges = self._ranges(plan)
            if plan.slices is not None and not self._loading:
                result.update = self._apply_slices(plan)
            else:
                result.update = self._apply_ready(plan)
        if plan.held is not None:
            self._waiting.append(_Waiting(plan.held, origin, plan.waits_for))
            self._waiting_bytes += len(plan.held)
        if plan.clocks and len(self._waiting) > int(plan.held is not None):
            result.released = self._release()
        return result

    def _integrate_typing(self, update: bytes, item: gate.Struct) -> Applied:
        """:meth:`integrate` for a typing edit (:func:`gate.typing_item`): the plan of the
        general path is known without being made (all of the update is ready, it moves one
        client from ``item.clock`` by ``item.length``, it names no parent and creates no type),
        and so are its ranges."""
        loading = self._loading
        self._order.integrate((item,), check=not loading)  # refuses bad origins
        produced = self._produced
        produced.clear()
        try:
            self._engine_apply(update)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            raise self._mark_damaged(_panic("applying an update", exc)) from exc
        clock = item.clock
        end = self._clocks[item.client] = clock + item.length
        result = Applied()
        result.ranges = {item.client: (clock, end)}
        if not loading:
            result.update = self._reported(produced, True)
        if self._waiting:
            result.released = self._release()
        return result

    def apply(self, update: bytes) -> bytes | None:
        """:meth:`integrate` for callers that need no origins: everything it changed, as one
        update, or None when it changed nothing."""
        applied = self.integrate(update)
        changes = ([applied.update] if applied.update is not None else []) + [
            change.update for change in applied.released]
        if not changes:
            return None
        return changes[0] if len(changes) == 1 else merge(changes)

    def load(self, updates: Iterable[bytes], *,
             whole: Callable[[int], str] | None = None) -> list[InvalidUpdate]:
        """Apply stored updates without producing anything: while observed, the engine encodes
        what each transaction changed, which would triple the time to load a large document.
        Returns the errors of updates refused (the others are applied, or wait unbounded).
        Raises :class:`EnginePanic` if the engine failed.

        ``whole`` (the name of the update at an index, for people) makes any refusal or engine
        failure a :class:`DamagedDocument` instead: what the store holds is all or nothing."""
        self._check_usable()
        self._unobserve()
        self._loading = True
        errors = []
        index = -1
        try:
            for index, update in enumerate(updates):
                try:
                    self.integrate(update, "stored")
                except InvalidUpdate as exc:
                    if whole is not None:
                        raise DamagedDocument(f"{whole(index)} is refused: {exc}", exc.reason) from exc
                    errors.append(exc)
            self._verify_clocks()
        except EnginePanic as panic:
            if whole is None:
                raise
            where = whole(index) if index >= 0 else "the document"
            raise DamagedDocument(f"{where} fails the engine: {panic}") from panic
        finally:
            self._loading = False
            if self._damaged is None:
                self._subscription = self._observe()
        return errors

    def _apply_ready(self, plan: gate.Plan) -> bytes | None:
        assert plan.ready is not None
        self._order.integrate(plan.items, check=not self._loading)  # refuses bad origins
        produced = self._produced
        produced.clear()
        try:
            self._engine_apply(plan.ready)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            raise self._mark_damaged(_panic("applying an update", exc)) from exc
        self._clocks.update(plan.clocks)
        if plan.type_ids:
            self._types |= plan.type_ids
        if self._loading:
            return None
        return self._reported(produced, bool(plan.clocks))

    def _reported(self, produced: list[bytes], moved: bool) -> bytes | None:
        """What the engine reported of one update (``moved``: it took structs in)."""
        if len(produced) == 1 and produced[0] != EMPTY_UPDATE:  # the usual case
            return produced[0]
        produced = [u for u in produced if u != EMPTY_UPDATE]
        if not produced:
            if moved:  # the engine took structs in without reporting them: never again
                raise self._mark_damaged(EnginePanic(
                    "the engine integrated an update but reported no change"))
            return None
        return produced[0] if len(produced) == 1 else merge(produced)

    def _apply_slices(self, plan: gate.Plan) -> bytes | None:
        """Integrate a large update a slice at a time (see :data:`gate.SLICE`). A slice's
        structs that depend on a later slice are held by the engine until it comes; by the last
        one the engine must hold nothing back (checked against what the gate planned)."""
        assert plan.slices is not None
        self._order.integrate(plan.items, check=not self._loading)
        produced: list[bytes] = []
        for part in plan.slices:
            self._produced.clear()
            try:
                self._engine_apply(part)
            except _PASS_THROUGH:
                raise
            except BaseException as exc:
                raise self._mark_damaged(_panic("applying an update", exc)) from exc
            finally:
                parts, self._produced = self._produced, []
            produced.extend(u for u in parts if u != EMPTY_UPDATE)
        engine = gate.decode_state_vector(self._call("encoding a state vector", self._doc.get_state))
        if any(engine.get(client, 0) != clock for client, clock in plan.clocks.items()):
            raise self._mark_damaged(EnginePanic("the engine did not integrate every slice of "
                                                 "an update that could be integrated whole"))
        self._clocks.update(plan.clocks)
        self._types |= plan.type_ids
        if not produced:
            return None
        return produced[0] if len(produced) == 1 else _merge_produced(produced)

    def _release(self, waiting: list[_Waiting] | None = None) -> list[Change]:
        """Integrate what was waiting (in ``waiting``, else the document's own list) and no
        longer has to, until nothing more moves."""
        entries = self._waiting if waiting is None else waiting
        counted = waiting is None
        released: list[Change] = []
        moved = True
        while moved and entries:
            moved = False
            for entry in list(entries):
                clocks = self._clocks
                if not any(clocks.get(client, 0) > clock for client, clock in entry.waits_for):
                    continue
                entries.remove(entry)
                if counted:
                    self._waiting_bytes -= len(entry.update)
                try:
                    plan = gate.plan(entry.update, clocks)
                    if plan.ready is not None and counted:
                        self._check_parents(plan)
                except InvalidUpdate:
                    continue  # it can never be integrated; its sender resends what it has
                if plan.ready is not None:
                    ranges = self._ranges(plan)
                    try:
                        produced = self._apply_ready(plan)
                    except InvalidUpdate:
                        continue  # inconsistent origins: it can never be integrated
                    if produced is not None:
                        released.append(Change(produced, entry.origin, ranges))
                    moved = moved or bool(plan.clocks)
                if plan.held is not None:
                    entries.append(_Waiting(plan.held, entry.origin, plan.waits_for))
                    if counted:
                        self._waiting_bytes += len(plan.held)
        return released

    def _ranges(self, plan: gate.Plan) -> gate.Ranges:
        """The clocks integrating ``plan`` adds, before it is integrated."""
        clocks = self._clocks
        return {client: (clocks.get(client, 0), end) for client, end in plan.clocks.items()}

    def _check_parents(self, plan: gate.Plan) -> None:
        """An item may name only a shared type as its parent; the engine refuses any other
        only after integrating what came before it. A parent the document holds but that was
        never seen as a type (one deleted and collected before this document was loaded) is
        settled by a trial on a copy, which costs a full encoding but is rare."""
        suspicious = [ref for ref in plan.parent_refs
                      if ref not in self._types and ref not in plan.type_ids
                      and ref[1] < self._clocks.get(ref[0], 0)]
        if not suspicious:
            return
        trial = pycrdt.Doc()
        try:
            trial.apply_update(self._doc.get_update())
            trial.apply_update(plan.ready)
        except _PASS_THROUGH:
            raise
        except BaseException:
            raise InvalidUpdate(f"parent {suspicious[0][0]}:{suspicious[0][1]} is not a "
                                f"shared type", "reference") from None

    # --- the engine's other calls ---------------------------------------------------------

    def _check_usable(self) -> None:
        if self._damaged is not None:
            raise self._damaged

    def _mark_damaged(self, panic: EnginePanic) -> EnginePanic:
        self._damaged = panic
        return panic

    def _call(self, action: str, call: Callable[..., T], *args: object) -> T:
        """Run an engine call that reads the document; any failure of it is a panic."""
        self._check_usable()
        try:
            return call(*args)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            raise self._mark_damaged(_panic(action, exc)) from exc

    def _verify_clocks(self) -> None:
        """The engine's state vector must be what this document expects; otherwise it holds
        structs it did not integrate, and would encode them for new joiners."""
        engine = gate.decode_state_vector(self._call("encoding a state vector", self._doc.get_state))
        if engine != {client: clock for client, clock in self._clocks.items() if clock}:
            raise self._mark_damaged(EnginePanic("the engine's state vector differs from what "
                                                 "it was given"))

    @property
    def waiting(self) -> int:
        """How many updates (or parts of one) wait for changes this document does not have."""
        return len(self._waiting)

    @property
    def waiting_bytes(self) -> int:
        return self._waiting_bytes

    @property
    def damaged(self) -> bool:
        return self._damaged is not None

    def state_vector(self) -> bytes:
        return self._call("encoding a state vector", self._doc.get_state)

    def clocks(self) -> dict[int, int]:
        """The state vector, decoded."""
        return dict(self._clocks)

    def covers(self, update: bytes) -> bool:
        """True when every struct in ``update`` is already integrated here (deletions are
        not compared: they never advance a state vector). Raises :class:`InvalidUpdate`."""
        info = gate.inspect(update)
        return all(self._clocks.get(client, 0) >= end for client, (_start, end) in info.clocks.items())

    def diff(self, state_vector: bytes) -> bytes:
        """Everything this document has that a peer with ``state_vector`` lacks."""
        gate.check_state_vector(state_vector)
        return self._call("encoding a diff", self._doc.get_update, state_vector)

    def full_state(self) -> bytes:
        return self._call("encoding the document", self._doc.get_update)

    def text(self, field: str = TEXT_FIELD) -> str:
        """The text of a shared text field ("" if the field is absent or of another type)."""
        self._check_usable()
        try:
            return str(self._doc.get(field, type=pycrdt.Text))
        except _PASS_THROUGH:
            raise
        except Exception:
            return ""
        except BaseException as exc:
            raise self._mark_damaged(_panic("reading the text", exc)) from exc

    def edit_text(self, index: int, insert: str = "", delete: int = 0,
                  field: str = TEXT_FIELD) -> bytes | None:
        """A local edit (used by tools and tests); returns the update it produced. ``index``
        and ``delete`` count UTF-8 bytes, as the engine does (see ``documents._offset``)."""
        self._check_usable()
        self._produced.clear()
        try:
            text = self._doc.get(field, type=pycrdt.Text)
            with self._doc.transaction():
                if delete:
                    del text[index:index + delete]
                if insert:
                    text.insert(index, insert)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            raise self._mark_damaged(_panic("editing the text", exc)) from exc
        finally:
            produced, self._produced = self._produced, []
        produced = [u for u in produced if u != EMPTY_UPDATE]
        if not produced:
            return None
        update = produced[0] if len(produced) == 1 else merge(produced)
        for client, (_start, end) in gate.inspect(update).clocks.items():
            self._clocks[client] = max(self._clocks.get(client, 0), end)
        self._order.integrate(gate.structs(update), check=False)  # made here, by the engine
        return update


def _merge_produced(updates: list[bytes]) -> bytes:
    """Merge what the engine itself produced (no gate: the engine's own output)."""
    try:
        return pycrdt.merge_updates(*updates)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        raise EnginePanic(f"the engine failed while merging its own updates: {exc}") from exc


def merge(updates: Iterable[bytes]) -> bytes:
    """Merge updates into one, without a document (each is checked by the gate first)."""
    updates = list(updates)
    if not updates:
        return EMPTY_UPDATE
    for update in updates:
        gate.check_update(update)
    try:
        return pycrdt.merge_updates(*updates)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # no document to damage: the inputs are refused
        raise InvalidUpdate(f"cannot merge: {type(exc).__name__}: {exc}", "engine") from exc


def state_vector_of(update: bytes) -> bytes:
    """The state vector an update would give an empty document (clients from clock 0 only,
    up to the first gap), as the engine computes it."""
    gate.check_update(update)
    try:
        return pycrdt.get_state(update)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        raise InvalidUpdate(f"{type(exc).__name__}: {exc}", "engine") from exc


def document_from(updates: Iterable[bytes]) -> Document:
    """A document with every update applied, in order (refused ones skipped)."""
    doc = Document()
    doc.load(updates)
    return doc


def contains_all(candidate: bytes, parts: Iterable[bytes]) -> bool:
    """True when the document ``candidate`` already holds everything in ``parts``: applying any
    part to it changes nothing. Compaction checks this before it deletes the parts. (A part
    still waiting for a dependency changes nothing either: merging keeps such parts.)"""
    doc = Document(max_waiting_bytes=sys.maxsize)
    if doc.load([candidate]):
        return False
    return all(doc.apply(part) is None for part in parts)


def decode_state_vector(state_vector: bytes) -> dict[int, int]:
    """client id -> clock. Raises InvalidUpdate on malformed input."""
    return gate.decode_state_vector(state_vector)
