"""A thread of its own for blocking calls, with one hand-off and one wake-up per batch.

``loop.run_in_executor`` costs, per call, a thread-pool work item and future, a condition, an
asyncio future chained to it, and a wake-up of the loop. A store's writer makes a call per group
commit and its reader one per load, so at a low rate that machinery is a good part of what a
commit costs the loop. Here a call is a pair on a C queue; the thread runs what is queued, in
order, and hands every result back in one call to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

Call = tuple[Callable[[], Any], "asyncio.Future[Any]"]
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]

_STOP = None

MAX_BATCH = 1000
"""Calls settled in one hand-back at most: the loop's turn that settles them stays short."""


class LaneStopped(RuntimeError):
    """A call on a lane that was stopped (or never started)."""


class Lane:
    """Runs calls one at a time, in the order given, on one thread, for one event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """``fn()`` on the thread, after every call made before; its result or its error. A
        future cancelled meanwhile is left alone (``fn`` still runs: it may be a commit)."""
        if self._loop is None or self._thread is None:
            raise LaneStopped(f"{self.name} is not running")
        future: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((fn, future))
        return future

    def stop(self) -> None:
        """Let the calls queued so far run, then end the thread (waits for it)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._calls.put(_STOP)
        thread.join()

    def _serve(self) -> None:
        while True:
            first = self._calls.get()
            if first is _STOP:
                return
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < MAX_BATCH:
                    batch.append(self._calls.get_nowait())
            stopping = batch[-1] is _STOP
            outcomes = [_outcome(call) for call in batch if call is not _STOP]
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                self._loop.call_soon_threadsafe(_settle, outcomes)
            if stopping:
                return


def _outcome(call: Call) -> Outcome:
    fn, future = call
    try:
        return future, fn(), None
    except BaseException as exc:  # every waiter hears of its call, whatever it raised
        return future, None, exc


def _settle(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():  # cancelled while it waited
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
