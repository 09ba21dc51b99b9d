"""The thread a store hands its blocking calls to: order, batching, errors, cancellation, stop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collab.store import open_store
from collab.store.base import StoreDamaged
from collab.store.lane import Lane, LaneStopped

WAIT = 10.0


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    lane = Lane("test-lane")
    lane.start(asyncio.get_running_loop())
    yield lane
    lane.stop()


async def test_calls_run_in_order_on_the_lane_thread(lane: Lane) -> None:
    ran: list[tuple[int, str]] = []

    def call(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        return i * i

    calls = [lane.run(lambda i=i: call(i)) for i in range(50)]
    results = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
    assert results == [i * i for i in range(50)]
    assert ran == [(i, "test-lane") for i in range(50)]


async def test_calls_queued_while_it_works_are_settled_together(lane: Lane) -> None:
    release = threading.Event()
    first = lane.run(lambda: release.wait(WAIT))
    await asyncio.sleep(0)
    rest = [lane.run(lambda i=i: i) for i in range(5)]
    seen_done: list[list[bool]] = []
    rest[0].add_done_callback(lambda _f: seen_done.append([f.done() for f in rest]))
    release.set()
    assert await asyncio.wait_for(first, WAIT) is True
    assert await asyncio.wait_for(asyncio.gather(*rest), WAIT) == list(range(5))
    assert seen_done == [[True] * 5]  # one hand-back for the batch, not one per call


async def test_an_error_reaches_its_caller_and_later_calls_still_run(lane: Lane) -> None:
    def broken() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    failing = lane.run(broken)
    after = lane.run(lambda: "after")
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        await asyncio.wait_for(failing, WAIT)
    assert await asyncio.wait_for(after, WAIT) == "after"


async def test_a_cancelled_call_still_runs_and_nothing_is_set_on_it(lane: Lane) -> None:
    release = threading.Event()
    ran = threading.Event()
    blocker = lane.run(lambda: release.wait(WAIT))
    cancelled = lane.run(ran.set)
    cancelled.cancel()
    after = lane.run(lambda: ran.is_set())
    release.set()
    await asyncio.wait_for(blocker, WAIT)
    assert await asyncio.wait_for(after, WAIT) is True  # the commit it may be still happened
    assert cancelled.cancelled()


async def test_stop_runs_what_was_queued_then_refuses_calls() -> None:
    lane = Lane("stopping-lane")
    lane.start(asyncio.get_running_loop())
    ran: list[int] = []
    queued = [lane.run(lambda i=i: ran.append(i)) for i in range(3)]
    lane.stop()
    assert ran == [0, 1, 2]
    assert not any(t.name == "stopping-lane" for t in threading.enumerate())
    await asyncio.wait_for(asyncio.gather(*queued), WAIT)
    with pytest.raises(LaneStopped):
        lane.run(lambda: None)


async def test_a_store_that_fails_to_open_leaves_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    before = {t.ident for t in threading.enumerate()}
    store = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreDamaged, match="not a collab store"):
        await store.open()
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert left == []
