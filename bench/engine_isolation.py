"""What bounding an engine call with a watchdog would cost per update.

    python bench/engine_isolation.py

A Rust call that never returns holds the GIL, so no thread of the server can stop it: the only
bound is a process that can be killed. This measures the cheapest such design — each document's
engine in a long-lived worker process, every update sent to it over a pipe and its produced
update read back, with a timeout after which the worker would be killed and the document
rebuilt — against applying the same updates in-process, on one core, for typing edits (one
character each, into a 20,000-character document). Prints the CPU microseconds per update of
each, for both processes together.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gate_cost import typing_updates  # noqa: E402

from collab import crdt  # noqa: E402  (the gated path, for comparison)

WATCHDOG_SECONDS = 1.0


def _worker(conn: Connection, base: bytes) -> None:
    import pycrdt

    doc = pycrdt.Doc()
    doc.apply_update(base)
    produced: list[bytes] = []
    doc.observe(lambda event: produced.append(event.update))
    while True:
        try:
            update = conn.recv_bytes()
        except EOFError:
            return
        produced.clear()
        doc.apply_update(update)
        conn.send_bytes(produced[0] if produced else b"")


def main() -> None:
    os.sched_setaffinity(0, {0})
    count = 20_000
    base, updates = typing_updates(count)

    import pycrdt

    doc = pycrdt.Doc()  # the same work as the worker's, here
    doc.apply_update(base)
    produced: list[bytes] = []
    doc.observe(lambda event: produced.append(event.update))
    started = time.process_time()
    for update in updates:
        produced.clear()
        doc.apply_update(update)
    in_process = (time.process_time() - started) / count * 1e6
    gated = crdt.document_from([base])
    started = time.process_time()
    for update in updates:
        gated.apply(update)
    gated_in_process = (time.process_time() - started) / count * 1e6

    parent, child = multiprocessing.Pipe()
    worker = multiprocessing.get_context("fork").Process(target=_worker, args=(child, base), daemon=True)
    worker.start()
    import psutil

    worker_cpu = psutil.Process(worker.pid)
    before = worker_cpu.cpu_times()
    started = time.process_time()
    for update in updates:
        parent.send_bytes(update)
        if not parent.poll(WATCHDOG_SECONDS):
            raise SystemExit("the worker hung")
        parent.recv_bytes()
    mine = time.process_time() - started
    after = worker_cpu.cpu_times()
    theirs = (after.user + after.system) - (before.user + before.system)
    parent.close()
    worker.join(5)
    isolated = (mine + theirs) / count * 1e6
    print(f"in-process apply:           {in_process:7.1f} us of CPU per update "
          f"({gated_in_process:.1f} through the gate, as the server applies it)")
    print(f"worker process + watchdog:  {isolated:7.1f} us of CPU per update "
          f"({mine / count * 1e6:.1f} here, {theirs / count * 1e6:.1f} in the worker)")
    print(f"isolation adds:             {isolated - in_process:7.1f} us per update")


if __name__ == "__main__":
    main()
