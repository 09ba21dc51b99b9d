"""How much memory one message makes the server allocate, per byte of the message.

    python bench/allocation.py

Each case builds one message of about 1 MiB, the worst shapes we know for its kind, and hands
it to the room's decoders in a fresh process (the gate and the engine for updates, the protocol
decoder for presence); the peak resident memory it added, divided by the message's size, is the
multiple. The frames from the reproductions (a 10-byte step 1 and a 38-byte update that made the
engine allocate 127 and 511 MiB) are measured the same way, and so is the CPU it took to read
and integrate each (the time it holds the event loop).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024


def _uint(value: int) -> bytes:
    from collab.gate import _write_uint

    return _write_uint(value)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _uint(len(raw)) + raw


def build(case: str) -> bytes:
    """The message for ``case`` (an update, a state vector or an awareness payload)."""
    if case == "many deleted items, each with a foreign origin":
        count = MIB // 5
        structs = [b"\x81" + _uint(2) + _uint(i % 100) + _uint(1) for i in range(count)]
        anchor = _uint(1) + _uint(2) + _uint(0) + b"\x04" + _uint(1) + _string("text") + _string("x" * 100)
        body = _uint(count) + _uint(1) + _uint(0) + b"".join(structs)
        return _uint(2) + anchor + body + b"\x00"
    if case == "many GC structs":
        count = MIB // 2
        return _uint(1) + _uint(count) + _uint(1) + _uint(0) + b"\x00\x01" * count + b"\x00"
    if case == "many one-character strings":
        count = MIB // 8
        first = b"\x04" + _uint(1) + _string("text") + _string("a")
        rest = [b"\x84" + _uint(1) + _uint(i) + _string("b") for i in range(count)]
        return _uint(1) + _uint(count + 1) + _uint(1) + _uint(0) + first + b"".join(rest) + b"\x00"
    if case == "many small Any values":
        count = MIB - 64
        return (_uint(1) + _uint(1) + _uint(1) + _uint(0) + b"\x08" + _uint(1) + _string("map")
                + _uint(count) + b"\x7e" * count + b"\x00")
    if case == "nested arrays, 64 deep, repeated":
        one = b"\x75\x01" * 63 + b"\x75\x00"
        count = MIB // len(one)
        return (_uint(1) + _uint(1) + _uint(1) + _uint(0) + b"\x08" + _uint(1) + _string("map")
                + _uint(count) + one * count + b"\x00")
    if case == "a deletion of many ranges":
        count = MIB // 4
        ranges = b"".join(_uint(2 * i) + _uint(1) for i in range(count))
        return b"\x00" + _uint(1) + _uint(1) + _uint(count) + ranges
    if case == "10-byte step 1 with a huge count (reproduction)":
        return b"\xff\xff\xff\xff\x0f\x01\x01"
    if case == "38-byte update with a huge value count (reproduction)":
        return (b"\x01\x01\x01\x00\x08\x01\x04text" + b"\xff\xff\xff\xff\x0f" + b"\x75\xff\xff\xff\xff\x0f"
                + b"\x7e" * 12 + b"\x00")
    if case == "presence: 4,096 small states":
        from collab import protocol

        entries = [protocol.AwarenessEntry(i, 1, '{"a":[[],[],[]]}') for i in range(4096)]
        return protocol.encode_awareness_payload(entries)
    if case == "presence: one 64 KiB state of empty arrays":
        from collab import protocol

        state = "[" + ",".join(["[]"] * 21000) + "]"
        return protocol.encode_awareness_payload([protocol.AwarenessEntry(1, 1, state)])
    raise KeyError(case)


CASES = ["many deleted items, each with a foreign origin", "many GC structs", "many one-character strings",
         "many small Any values", "nested arrays, 64 deep, repeated", "a deletion of many ranges",
         "10-byte step 1 with a huge count (reproduction)",
         "38-byte update with a huge value count (reproduction)",
         "presence: 4,096 small states", "presence: one 64 KiB state of empty arrays"]


def measure(case: str, path: Path) -> dict[str, object]:
    """In this (fresh) process: decode the message in ``path`` as the room would; the peak
    memory that added."""
    from collab import crdt, gate, protocol

    message = path.read_bytes()
    doc = crdt.Document()
    doc.integrate(b"\x00\x00")
    resident = _resident()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.process_time()
    outcome = "accepted"
    try:
        if case.startswith("presence"):
            protocol.decode_awareness_payload(message)
        elif "step 1" in case:
            doc.diff(message)
        else:
            applied = doc.integrate(message)
            if applied.waiting:
                outcome = "waits"
    except (gate.InvalidUpdate, protocol.ProtocolError) as exc:
        outcome = f"refused ({exc})"[:60]
    seconds = time.process_time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    added = max(peak - before, _resident() - resident)
    return {"case": case, "bytes": len(message), "outcome": outcome, "added_bytes": added,
            "multiple": round(added / len(message), 1), "cpu_seconds": round(seconds, 3)}


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--case":
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, case in enumerate(CASES):
            path = Path(tmp) / f"{index}.bin"
            path.write_bytes(build(case))  # built here, so that building costs the measured nothing
            done = subprocess.run([sys.executable, __file__, "--case", case, str(path)],
                                  capture_output=True, text=True, check=True, timeout=300)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| message | bytes | outcome | memory added | multiple of the message | CPU to take it |")
    print("|---|---:|---|---:|---:|---:|")
    for row in rows:
        added = int(row["added_bytes"])  # type: ignore[call-overload]
        print(f"| {row['case']} | {row['bytes']:,} | {row['outcome']} | {added / MIB:.1f} MiB | "
              f"{row['multiple']} | {row['cpu_seconds']} s |")


if __name__ == "__main__":
    main()
