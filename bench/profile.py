"""Profile collab under the benchmark's fixed load with py-spy, and say where its CPU goes.

    python bench/profile.py                     # 2,000 edits/s, 50 rooms x 5 clients, 15 s sampled
    python bench/profile.py --rate 500 --seconds 30
    python bench/profile.py --load presence     # 200 clients moving their cursors twice a second
    python bench/profile.py --summarize bench/results/profile-....txt

collab serve (SQLite store, default settings) runs pinned to CPU 0, the Node.js load generator
and py-spy to CPU 1. py-spy samples every thread of the server, native frames included (so the
system calls under a send show), and the samples are sorted into the parts of the server by the
innermost frame that belongs to one. Raw samples go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import LOAD_CPU, LOADGEN, SERVERS, Running

ROOT = Path(__file__).resolve().parent.parent

# (part, pattern on one frame "function (file:line)"), checked from the innermost frame outwards;
# the first frame that matches any rule names the part.
RULES: list[tuple[str, re.Pattern[str]]] = [
    ("socket writes (send/write system calls; on loopback they also run the receiver's TCP)",
     re.compile(r"^(__libc_write|__libc_send|__send|send|sendmsg|__sendmsg|writev|__writev|write|__write)"
                r" \(libc")),
    ("socket reads (recv/read system calls)", re.compile(r"^(__libc_recv|recv|__recv|read|__libc_read|__read)"
                                                          r" \(libc")),
    ("store: SQLite group commit", re.compile(r"sqlite3|collab/store/")),
    ("update gate (collab/gate.py: checking each update before the engine sees it)",
     re.compile(r"collab/gate\.py")),
    ("CRDT engine (pycrdt / Yrs)", re.compile(r"pycrdt|collab/crdt\.py|_pycrdt")),
    ("WebSocket frames (websockets sans-I/O: parse, mask, serialize)", re.compile(r"\(websockets/")),
    ("uvicorn's per-message path (ASGI receive/send events, queue, task wake-ups)",
     re.compile(r"\(uvicorn/")),
    ("y-protocols codec (collab/protocol.py, lib0)", re.compile(r"collab/(protocol|lib0)\.py")),
    ("room rules, presence, rooms, admission (collab/room*.py, admission)",
     re.compile(r"collab/(room|rooms|presence|admission)\.py")),
    ("collab transport (collab/transport/)", re.compile(r"collab/transport/")),
]
EVENT_LOOP = "event loop and tasks (uvloop, asyncio: polling, callbacks, task steps)"
GENERIC = re.compile(r"loop\.c|uv_|uv__|asyncio|_asynciomodule|task_step|concurrent/futures|threading\.py")
"""Generic machinery (the event loop, asyncio's queues and events, thread hand-offs) counts for the
part that called it synchronously; only what the loop runs by itself counts as the event loop."""
LOOP_BOUNDARY = re.compile(r"task_step|Handle__run|uv__io_poll|uv__run|uv_run|run_forever|Loop__on_idle")
OTHER = "other (interpreter, allocator, kernel entry, unattributed)"
WAITING = re.compile(r"pthread_cond_(timed)?wait|PyThread_acquire_lock|sem_(timed)?wait|futex|epoll_p?wait|"
                     r"_queue_SimpleQueue_get|select \(libc")
"""A thread that waits (idle pool workers, a GIL or lock wait, the loop's poll) uses no CPU; py-spy's
native mode cannot tell, so such samples are set apart by their innermost frames."""

# Inclusive shares: the samples with this frame anywhere on the stack.
INCLUSIVE: list[tuple[str, re.Pattern[str]]] = [
    ("a client message handled by the room (Room.receive and below)", re.compile(r"^Room\.receive ")),
    ("broadcast to the other members (Room._broadcast / peer sends and below)",
     re.compile(r"^(Room\._broadcast|Room\.broadcast|WebSocketPeer\.send) ")),
    ("uvicorn receiving bytes (data_received and below)", re.compile(r"data_received \(uvicorn")),
    ("an ASGI send (uvicorn's send and below)", re.compile(r"\.asgi_send |\.send \(uvicorn")),
    ("the store (collab/store/ anywhere: appends, commits on its thread, compaction)",
     re.compile(r"collab/store/")),
]


def frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    return stack.split(";"), int(count)


def part_of(stack: list[str]) -> str:
    generic = False
    for frame in reversed(stack):
        for part, pattern in RULES:
            if pattern.search(frame):
                return part
        if GENERIC.search(frame):
            if LOOP_BOUNDARY.search(frame):
                return EVENT_LOOP
            generic = True
    return EVENT_LOOP if generic else OTHER


def waiting(stack: list[str]) -> bool:
    return any(WAITING.search(frame) for frame in stack[-4:])


def summarize(raw: Path, top: int = 15) -> str:
    parts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = waits = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = frames(line)
        if waiting(stack):
            waits += count
            continue
        total += count
        threads["event loop (main thread)" if any(f.startswith("_run_module_as_main") for f in stack[:3])
                else "other threads (store writer, compaction, executor)"] += count
        parts[part_of(stack)] += count
        leaves[re.sub(r":\d+\)$", ")", stack[-1])] += count
        for label, pattern in INCLUSIVE:
            if any(pattern.search(f) for f in stack):
                inclusive[label] += count
    if not total:
        return "no samples\n"
    pct = lambda n: f"{100 * n / total:.1f} %"  # noqa: E731
    lines = [f"{total:,} samples on CPU ({waits:,} more of threads waiting, left out)", "",
             "| where the CPU goes (innermost frame that belongs to a part) | share |", "| --- | ---: |"]
    lines += [f"| {part} | {pct(n)} |" for part, n in parts.most_common()]
    lines += ["", "| thread | share |", "| --- | ---: |"]
    lines += [f"| {thread} | {pct(n)} |" for thread, n in threads.most_common()]
    lines += ["", "| inclusive (the frame anywhere on the stack) | share |", "| --- | ---: |"]
    lines += [f"| {label} | {pct(inclusive[label])} |" for label, _ in INCLUSIVE]
    lines += ["", f"| top {top} innermost frames | share |", "| --- | ---: |"]
    lines += [f"| `{leaf}` | {pct(n)} |" for leaf, n in leaves.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=["fixed", "presence"], default="fixed",
                        help="the fixed load (default) or the presence storm")
    parser.add_argument("--rate", type=float,
                        help="edits per second in all (default 2000); with --load presence, cursor "
                             "moves per second per client (default 2)")
    parser.add_argument("--presence-clients", type=int, default=200)
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15, help="seconds sampled (default 15)")
    parser.add_argument("--sample-rate", type=int, default=100, help="samples per second (default 100)")
    parser.add_argument("--python-only", action="store_true", help="no native frames (lighter sampling)")
    parser.add_argument("--summarize", metavar="RAW", help="only summarize an earlier profile")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(Path(args.summarize)), end="")
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists() or shutil.which("taskset") is None or shutil.which("node") is None:
        print("profile: needs py-spy (pip install -e '.[bench]'), taskset and Node.js", file=sys.stderr)
        return 2
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = results / f"profile-{stamp}.txt"
    warmup = 5.0
    with tempfile.TemporaryDirectory(prefix="collab-profile-") as tmp:
        running = Running(SERVERS["collab"], Path(tmp), results / "collab.log").start()
        try:
            generator = ["taskset", "-c", str(LOAD_CPU), "node", str(LOADGEN), "--url", running.url,
                         "--duration", str(args.seconds + 2), "--server-pid", str(running.pid),
                         "--clock-ticks", str(os.sysconf("SC_CLK_TCK"))]
            if args.load == "presence":
                generator[5:5] = ["presence", "--clients", str(args.presence_clients),
                                  "--rate", str(args.rate or 2.0)]
                warmup = 3.0  # connecting 200 clients; the presence window starts after them
            else:
                per_writer = (args.rate or 2000.0) / args.rooms
                generator[5:5] = ["fanout", "--rooms", str(args.rooms), "--clients", str(args.clients),
                                  "--rate", str(per_writer), "--warmup", str(warmup)]
            load = subprocess.Popen(generator, stdout=subprocess.PIPE, text=True)
            time.sleep(warmup + 3)  # connected, warmed up and measuring
            record = ["taskset", "-c", str(LOAD_CPU), py_spy, "record", "-p", str(running.pid), "-r",
                      str(args.sample_rate), "-d", str(int(args.seconds)), "-f", "raw", "-o", str(raw)]
            if not args.python_only:
                record.append("--native")
            subprocess.run(record, check=True, capture_output=True, timeout=args.seconds + 60)
            out, _ = load.communicate(timeout=300)
        finally:
            running.stop()
    report = json.loads(out.strip().splitlines()[-1])
    what = "moves" if args.load == "presence" else "edits"
    print(f"load: {report['edit_rate']:,.0f} {what}/s, {report['delivery_rate']:,.0f} deliveries/s; "
          f"server {report['server_cpu_percent']} % of a core, {report['server_cpu_us_per_message']} µs "
          f"per message sent (slowed by the profiler); generator {report['generator_cpu_percent']} %; "
          f"lost {report['lost']}")
    print(f"raw samples: {raw.relative_to(ROOT)}\n")
    print(summarize(raw), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
