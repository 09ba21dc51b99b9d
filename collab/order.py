"""The order of a document's items, kept beside the engine so that the gate can check origins.

An item names its left and right neighbours at the time it was made (origin, right origin; none
means the start or the end of its sequence). YATA, the integration algorithm of Yjs and Yrs,
places an item by walking from its origin towards its right origin among the items found there,
and converges only because every item found between the two was unknown to the item's maker
(concurrent): an honest maker's origin and right origin were next to each other in its copy.
An item that says otherwise (a right origin to the left of the origin, in another sequence, or
with items between them that its maker must have known) is placed by a walk whose end depends
on what else the replica holds, and on the order in which the engine integrates an update, so
two replicas, or a fresh joiner and the server, order the same items differently for good.

So every item is checked here before the engine sees it: its right origin must come after its
origin in one sequence, and none of the items between them may be in the item's causal past
(what its origin, right origin, parent and its client's earlier items depend on, transitively).
The engine does not expose the order of items by id, so this module keeps its own: runs of
items (split where an item is referred to), placed by the same conflict rule, with order labels
so that "is the right origin after the origin" is one comparison, and an integration number per
run, so that the search of the causal past only visits what was integrated after the oldest
item between the two. An item that passes could have been made by an honest client that held
exactly its causal past, so the document stays one that honest clients could have made.

Pure and sans-I/O. :meth:`Order.integrate` either takes a whole update or refuses it with
:class:`~collab.gate.InvalidUpdate` (reason ``origins``) and changes nothing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence

from collab.gate import GC_STRUCT, SKIP_STRUCT, InvalidUpdate, Struct

LABELS = 1 << 62
"""Order labels of a sequence are below this (0 stands for its start)."""

STEP = 1 << 32
"""The gap left after an item appended to a run of insertions (typing goes left to right)."""

DENSITY = 1.5
"""A label range of 2**i may hold at most 2**i / DENSITY**i items before it is relabelled
(the order-maintenance scheme of Bender et al.: amortised O(log n) relabels per insertion)."""

CHECK_BUDGET = 100_000
CHECK_PER_STRUCT = 1_000
CHECK_LIMIT = 10_000_000
"""Runs one update may make the check visit (between origins, and in causal pasts): the first
plus the second per struct, at most the third (about ten seconds). Honest edits visit none or a
few; a client back from a long offline session with many scattered edits visits more; past the
budget an update is refused rather than checked for longer."""

ID = tuple[int, int]
Journal = list[tuple[str, object, int]]
"""What an update changed so far, to undo it when a later struct is refused: ("clock",
client, previous clock), ("grow", run, previous length), ("add", run, 0), ("split", run, 0)."""


class Run:
    """Consecutive clocks of one client, next to each other in one sequence (or garbage
    collected): what Yjs holds as one item after merging."""

    __slots__ = ("client", "clock", "gc", "label", "left", "length", "origin", "parent",
                 "parent_id", "right", "right_origin", "seq")

    def __init__(self, client: int, clock: int, length: int, origin: ID | None,
                 right_origin: ID | None, parent: Hashable, parent_id: ID | None, seq: int,
                 gc: bool = False) -> None:
        self.client = client
        self.clock = clock
        self.length = length
        self.origin = origin
        """The origin of the run's first clock."""
        self.right_origin = right_origin
        self.parent = parent
        """The sequence: (root type name or id of the item holding the type, map key or None)."""
        self.parent_id = parent_id
        """The parent item its first clock named (a dependency), if it named one."""
        self.seq = seq
        """When it was integrated here (its dependencies always were before)."""
        self.gc = gc
        self.left: Run | None = None
        self.right: Run | None = None
        self.label = 0

    @property
    def end(self) -> int:
        return self.clock + self.length


class _Sequence:
    __slots__ = ("start",)

    def __init__(self) -> None:
        self.start: Run | None = None


class Order:
    """The items of one document in document order (see the module docstring)."""

    __slots__ = ("_budget", "_clocks", "_runs", "_seq", "_sequences", "_starts")

    def __init__(self) -> None:
        self._runs: dict[int, list[Run]] = {}
        self._starts: dict[int, list[int]] = {}
        self._clocks: dict[int, int] = {}
        self._sequences: dict[Hashable, _Sequence] = {}
        self._seq = 0
        self._budget = CHECK_BUDGET

    # --- the public face --------------------------------------------------------------------

    def integrate(self, structs: Sequence[Struct], *, check: bool = True) -> None:
        """Take the structs of an update the engine is about to integrate (all of whose
        dependencies are here or in the update). Raises :class:`InvalidUpdate` when an item's
        origins are inconsistent (see the module docstring), having changed nothing. Without
        ``check`` (what the store holds was checked when it arrived) the items are only placed."""
        ordered: Iterable[Struct]
        if len(structs) == 1:
            struct = structs[0]
            if self._extends_run(struct):
                return
            # what the dependency order makes of one struct: itself, or nothing when it needs
            # another client's clock that is not here (no other struct could supply it)
            ordered = () if self._missing(struct) is not None else structs
        else:
            ordered = self._in_dependency_order(structs)
        self._integrate_all(ordered, len(structs), check)

    def _integrate_all(self, ordered: Iterable[Struct], count: int, check: bool) -> None:
        """Integrate ``count`` structs in dependency ``ordered``, all or none."""
        journal: Journal = []
        self._budget = min(CHECK_LIMIT, CHECK_BUDGET + CHECK_PER_STRUCT * count)
        try:
            for struct in ordered:
                self._integrate(struct, journal, check)
        except InvalidUpdate:
            self._undo(journal)
            raise

    def _extends_run(self, struct: Struct) -> bool:
        """Typing: an item right after its client's last one, between that one and what is
        still its right neighbour, grows that run. Decided in a few comparisons, with the
        result the general path reaches (no split, nothing between the origins to check,
        nothing concurrent to resolve); anything else returns False and takes that path."""
        client, clock, length, kind, origin, right_origin, _parent, _parent_id, _key = struct
        if (origin is None or origin[1] != clock - 1 or origin[0] != client
                or kind in (GC_STRUCT, SKIP_STRUCT) or self._clocks.get(client, 0) != clock):
            return False
        runs = self._runs.get(client)
        if not runs:
            return False
        last = runs[-1]
        if last.gc or last.clock + last.length != clock or last.right_origin != right_origin:
            return False
        right = last.right
        if right_origin is None:
            if right is not None:
                return False
        elif right is None or right.clock != right_origin[1] or right.client != right_origin[0]:
            return False
        last.length += length
        self._clocks[client] = clock + length
        self._seq += 1
        return True

    def items(self, parent: Hashable, key: str | None = None) -> Iterator[ID]:
        """Every item id of a sequence (or of a map key's values), in order (for tests)."""
        sequence = self._sequences.get((parent, key))
        run = sequence.start if sequence is not None else None
        while run is not None:
            for clock in range(run.clock, run.end):
                yield run.client, clock
            run = run.right

    # --- dependency order -------------------------------------------------------------------

    def _clock(self, client: int) -> int:
        return self._clocks.get(client, 0)

    def _missing(self, struct: Struct) -> ID | None:
        for ref in (struct.origin, struct.right_origin, struct.parent_id):
            if ref is not None and ref[0] != struct.client and self._clock(ref[0]) <= ref[1]:
                return ref
        return None

    def _in_dependency_order(self, structs: Sequence[Struct]) -> Iterator[Struct]:
        """The structs in an order in which each comes after what it refers to (as Yjs
        integrates an update: a struct that needs another client's waits on a stack until that
        client's structs up to it are in). Structs that can never be reached are left out: the
        gate hands the engine none."""
        queues: dict[int, deque[Struct]] = {}
        for struct in structs:
            queues.setdefault(struct.client, deque()).append(struct)
        for client in list(queues):
            queue = queues[client]
            while queue:
                stack = [queue.popleft()]
                while stack:
                    top = stack[-1]
                    missing = self._missing(top)
                    if missing is None:
                        stack.pop()
                        yield top
                        continue
                    supplier = queues.get(missing[0])
                    if not supplier or supplier[0].clock > missing[1]:
                        stack.clear()  # unreachable: not given to the engine either
                        break
                    stack.append(supplier.popleft())

    # --- integration ------------------------------------------------------------------------

    def _integrate(self, struct: Struct, journal: Journal, check: bool) -> None:
        client, clock, length = struct.client, struct.clock, struct.length
        known = self._clocks.get(client, 0)
        if clock + length <= known or struct.kind == SKIP_STRUCT:
            return
        origin, right_origin = struct.origin, struct.right_origin
        if clock < known:  # partly known: the rest follows what is known
            length -= known - clock
            clock = known
            origin = (client, clock - 1)
        journal.append(("clock", client, known))
        self._clocks[client] = clock + length
        self._seq += 1
        if struct.kind == GC_STRUCT:
            self._add(Run(client, clock, length, None, None, None, None, self._seq, gc=True), journal)
            return
        left = self._clean_end(origin, journal) if origin is not None else None
        right = self._clean_start(right_origin, journal) if right_origin is not None else None
        if left is not None and origin is not None and origin[1] >= left.end:
            left = self._find(*origin)  # the second split cut the run the first returned
        parent_id = struct.parent_id if origin is None and right_origin is None else None
        if (origin is not None and left is None) or (right_origin is not None and right is None):
            gc = True  # refers to what this order does not hold: treated as the engine would a GC
        else:
            gc = (left is not None and left.gc) or (right is not None and right.gc)
        parent: Hashable = None
        if not gc:
            if left is not None:
                parent = left.parent
            elif right is not None:
                parent = right.parent
            else:
                parent = (struct.parent, struct.key)
                if parent_id is not None:
                    holder = self._find(*parent_id)
                    gc = holder is None or holder.gc
        run = Run(client, clock, length, origin, right_origin, parent, parent_id, self._seq, gc)
        if gc:
            self._add(run, journal)
            return
        if check:
            self._check(run, left, right)
        placed = self._resolve(run, left, right)
        if (placed is not None and placed is left and origin == (client, clock - 1)
                and left.client == client and left.end == clock
                and left.right_origin == right_origin):
            journal.append(("grow", left, left.length))  # typing: the run grows, nothing moves
            left.length += length
            return
        self._add(run, journal)
        self._link(run, placed)

    def _check(self, run: Run, left: Run | None, right: Run | None) -> None:
        """Refuse ``run`` unless its right origin comes after its origin in one sequence and no
        item between them is in its causal past."""
        if right is not None and left is not None and (
                left.parent != right.parent or left is right or left.label >= right.label):
            raise self._refusal(run, "its right origin is not to the right of its origin in one "
                                     "sequence")
        sequence = self._sequences.get(run.parent)
        between = []
        o = left.right if left is not None else (sequence.start if sequence is not None else None)
        while o is not right:
            if o is None:
                raise self._refusal(run, "its right origin is not in its origin's sequence")
            between.append(o)
            o = o.right
            self._spend(run)
        if not between:
            return
        inside = {id(r) for r in between}
        oldest = min(r.seq for r in between)
        stack = [run.origin, run.right_origin, run.parent_id,
                 (run.client, run.clock - 1) if run.clock else None]
        seen: set[int] = set()
        while stack:
            ref = stack.pop()
            if ref is None:
                continue
            found = self._find(*ref)
            if found is None or id(found) in seen:
                continue
            seen.add(id(found))
            self._spend(run)
            if id(found) in inside:
                raise self._refusal(run, f"item {found.client}:{found.clock} lies between its "
                                         "origins though its maker knew it")
            if found.seq < oldest or found.gc:
                continue  # integrated before everything between: nothing it needs lies there
            stack.extend((found.origin, found.right_origin, found.parent_id,
                          (found.client, found.clock - 1) if found.clock else None))

    def _spend(self, run: Run) -> None:
        self._budget -= 1
        if self._budget < 0:
            raise self._refusal(run, "checking its origins takes too long")

    @staticmethod
    def _refusal(run: Run, why: str) -> InvalidUpdate:
        return InvalidUpdate(f"item {run.client}:{run.clock}: {why}", "origins")

    def _resolve(self, run: Run, left: Run | None, right: Run | None) -> Run | None:
        """Yjs's conflict rule: where between its origin and right origin the item goes, among
        items inserted there concurrently (``Item.integrate``)."""
        sequence = self._sequences.get(run.parent)
        start = sequence.start if sequence is not None else None
        if left is not None:
            if left.right is right:
                return left
            o = left.right
        else:
            if right is None and start is None:
                return None
            if right is not None and right.left is None:
                return None
            o = start
        conflicting: set[int] = set()
        before_origin: set[int] = set()
        while o is not None and o is not right:
            before_origin.add(id(o))
            conflicting.add(id(o))
            if run.origin == o.origin:
                if o.client < run.client:
                    left = o
                    conflicting.clear()
                elif run.right_origin == o.right_origin:
                    break
            else:
                holder = self._find(*o.origin) if o.origin is not None else None
                if holder is not None and id(holder) in before_origin:
                    if id(holder) not in conflicting:
                        left = o
                        conflicting.clear()
                else:
                    break
            o = o.right
        return left

    # --- runs -------------------------------------------------------------------------------

    def _find(self, client: int, clock: int) -> Run | None:
        starts = self._starts.get(client)
        if not starts:
            return None
        index = bisect_right(starts, clock) - 1
        if index < 0:
            return None
        run = self._runs[client][index]
        return run if clock < run.end else None

    def _clean_end(self, ref: ID, journal: Journal) -> Run | None:
        """Make ``ref`` the last clock of its run; returns that run (None: not held)."""
        run = self._find(*ref)
        if run is not None and ref[1] + 1 < run.end:
            self._split(run, ref[1] + 1, journal)
        return run

    def _clean_start(self, ref: ID, journal: Journal) -> Run | None:
        """Make ``ref`` the first clock of its run; returns that run (None: not held)."""
        run = self._find(*ref)
        if run is not None and ref[1] > run.clock:
            return self._split(run, ref[1], journal)
        return run

    def _split(self, run: Run, clock: int, journal: Journal) -> Run:
        """Cut ``run`` before ``clock``; returns the right part (a split changes no order)."""
        tail = Run(run.client, clock, run.end - clock, (run.client, clock - 1), run.right_origin,
                   run.parent, None, run.seq, run.gc)
        run.length = clock - run.clock
        self._index(tail)
        if not run.gc:
            self._link(tail, run)
        journal.append(("split", tail, 0))
        return tail

    def _index(self, run: Run) -> None:
        starts = self._starts.setdefault(run.client, [])
        runs = self._runs.setdefault(run.client, [])
        index = bisect_right(starts, run.clock)
        starts.insert(index, run.clock)
        runs.insert(index, run)

    def _unindex(self, run: Run) -> None:
        starts, runs = self._starts[run.client], self._runs[run.client]
        index = bisect_right(starts, run.clock) - 1
        del starts[index], runs[index]

    def _add(self, run: Run, journal: Journal) -> None:
        self._index(run)
        journal.append(("add", run, 0))

    def _undo(self, journal: Journal) -> None:
        for action, subject, value in reversed(journal):
            if action == "clock":
                assert isinstance(subject, int)
                self._clocks[subject] = value
                continue
            assert isinstance(subject, Run)
            if action == "grow":
                subject.length = value
                continue
            self._unindex(subject)
            self._unlink(subject)
            if action == "split":
                head = self._find(subject.client, subject.clock - 1)
                assert head is not None
                head.length += subject.length

    # --- the linked list and its labels -----------------------------------------------------

    def _link(self, run: Run, left: Run | None) -> None:
        """Put ``run`` right after ``left`` (at the start when None) and label it."""
        sequence = self._sequences.get(run.parent)
        if sequence is None:
            sequence = self._sequences[run.parent] = _Sequence()
        if left is None:
            run.right = sequence.start
            sequence.start = run
        else:
            run.right = left.right
            left.right = run
        run.left = left
        if run.right is not None:
            run.right.left = run
        self._label(run)

    def _unlink(self, run: Run) -> None:
        if run.gc:
            return
        if run.left is not None:
            run.left.right = run.right
        else:
            sequence = self._sequences.get(run.parent)
            if sequence is not None and sequence.start is run:
                sequence.start = run.right
        if run.right is not None:
            run.right.left = run.left
        run.left = run.right = None

    def _label(self, run: Run) -> None:
        low = run.left.label if run.left is not None else 0
        high = run.right.label if run.right is not None else LABELS
        if high - low >= 2:
            run.label = low + min((high - low) // 2, STEP)
            return
        self._relabel(run, low)

    def _relabel(self, run: Run, near: int) -> None:
        """Spread the labels of the smallest aligned range around ``near`` that is sparse
        enough (counting ``run``, which has no label yet) evenly over that range."""
        size = 2
        while True:
            low = near - near % size
            high = min(low + size, LABELS)
            count = 1
            left, right = run.left, run.right
            while left is not None and left.label >= low:
                count += 1
                left = left.left
            while right is not None and right.label < high:
                count += 1
                right = right.right
            if size >= LABELS or count * DENSITY ** (size.bit_length() - 1) < size:
                break
            size *= 2
        first = max(low, 1)
        gap = (high - first) // (count + 1)
        node = left.right if left is not None else self._sequences[run.parent].start
        label = first + gap
        while node is not right:
            assert node is not None
            node.label = label
            label += gap
            node = node.right
