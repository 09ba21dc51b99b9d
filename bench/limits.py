"""What the bounds cost and what they save, each against a baseline measured in the same run.

    python bench/limits.py                # about two minutes
    python bench/limits.py --quick        # shorter, for trying changes

1. The request guard (deadline and size bound on every request, in front of uvicorn): time per
   HTTP request and per WebSocket handshake with the guard, against uvicorn's own httptools
   protocol serving the same app.
2. A reader that stops reading while two editors push 20 KB updates: the server's memory growth
   with the default send buffer (1 MiB), against the 64 MiB that was the default before.

Every server runs on loopback, pinned to CPU 0 when taskset is there; the clients run here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402

from collab import protocol  # noqa: E402
from tests.servers import ServerProcess, free_port  # noqa: E402
from tests.test_limits import Editor, rss_bytes  # noqa: E402

SERVER = """
import sys, uvicorn
from collab.app import create_app
from collab.config import Settings
port, guarded = int(sys.argv[1]), sys.argv[2] == "guarded"
app = create_app(Settings(store="memory://", port=port))
http = app.state.collab.guard.protocol if guarded else "httptools"
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http=http,
            ws="websockets-sansio", ws_per_message_deflate=False, lifespan="on")
"""


def pinned(command: list[str]) -> list[str]:
    return ["taskset", "-c", "0", *command] if shutil.which("taskset") else command


class AppServer(ServerProcess):
    """The app under uvicorn, with the guard or with uvicorn's own HTTP protocol: nothing else
    differs."""

    def __init__(self, guarded: bool) -> None:
        super().__init__("memory://")
        self.guarded = guarded

    def start(self, timeout: float = 20.0) -> ServerProcess:
        mode = "guarded" if self.guarded else "plain"
        self.process = subprocess.Popen(pinned([sys.executable, "-c", SERVER, str(self.port), mode]),
                                        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self


class GuardedServer(ServerProcess):
    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {**os.environ, "COLLAB_LOG_LEVEL": "warning"}
        self.process = subprocess.Popen(
            pinned([sys.executable, "-m", "collab", "serve", "--host", "127.0.0.1", "--port",
                    str(self.port), "--store", self.store, *self.args]),
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self


async def http_requests(port: int, count: int) -> float:
    """Seconds per request, each on a new connection (the guard's work is per connection)."""
    request = f"GET /liveness_check HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    start = time.perf_counter()
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request.encode())
        await reader.read()
        writer.close()
    return (time.perf_counter() - start) / count


async def handshakes(port: int, count: int) -> float:
    """Seconds per WebSocket handshake and first frame."""
    start = time.perf_counter()
    for _ in range(count):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/bench") as ws:
            await ws.recv()
    return (time.perf_counter() - start) / count


def guard_cost(count: int, repeats: int) -> list[str]:
    rows = {"HTTP request": ([], []), "WebSocket handshake": ([], [])}
    for repeat in range(repeats):
        for guarded in (repeat % 2 == 1, repeat % 2 == 0):  # alternate which goes first
            server = AppServer(guarded).start()
            try:
                asyncio.run(http_requests(server.port, 50))  # warm up
                rows["HTTP request"][guarded].append(asyncio.run(http_requests(server.port, count)))
                rows["WebSocket handshake"][guarded].append(asyncio.run(handshakes(server.port, count)))
            finally:
                server.stop()
    lines = ["| per new connection | uvicorn httptools | with the guard | ratio |", "|---|---|---|---|"]
    for label, (plain, guarded) in rows.items():
        p, g = statistics.median(plain), statistics.median(guarded)
        lines.append(f"| {label} | {p * 1e6:.0f} µs | {g * 1e6:.0f} µs | {g / p:.2f} |")
    return lines


async def stalled_growth(buffer: int, duration: float, rate: int) -> tuple[float, int]:
    data = Path(tempfile.mkdtemp(prefix="collab-bench-"))
    server = GuardedServer(f"sqlite:///{data / 'stall.db'}", port=free_port(),
                           args=["--durable-acks", "false", "--compact-threshold", "1000000",
                                 "--max-send-buffer", str(buffer)]).start()
    try:
        alice, bob = Editor("a", "b"), Editor("b", "a")
        for editor in (alice, bob):
            await editor.connect(server)
        readers = [asyncio.create_task(e.read()) for e in (alice, bob)]
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stalled = await websockets.connect(f"{server.ws_url}/doc", sock=sock, max_size=None,
                                           max_queue=1)
        await stalled.send(protocol.encode_sync_step1(b"\x00"))
        await asyncio.gather(alice.push(20, 50), bob.push(20, 50))
        before = peak = rss_bytes(server)

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_bytes(server))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        count = int(duration * rate)
        await asyncio.gather(alice.push(count, rate), bob.push(count, rate))
        sampler.cancel()
        for editor in (alice, bob):
            assert editor.ws is not None
            await editor.ws.close()
        stalled.transport.abort()
        await asyncio.gather(*readers, return_exceptions=True)
        return (peak - before) / 2**20, 2 * count * 20_000
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def slow_reader(duration: float, repeats: int) -> list[str]:
    results: dict[int, list[float]] = {1 << 20: [], 64 << 20: []}
    traffic = 0
    for repeat in range(repeats):
        for buffer in sorted(results, reverse=repeat % 2 == 1):
            growth, traffic = asyncio.run(stalled_growth(buffer, duration, 100))
            results[buffer].append(growth)
    new, old = statistics.median(results[1 << 20]), statistics.median(results[64 << 20])
    return [f"Two editors, 20 KB updates at 100/s each for {duration:g} s ({traffic / 2**20:.0f} MiB "
            "sent), one reader that stopped reading:", "",
            "| send buffer | server memory growth (median of runs) |", "|---|---|",
            f"| 64 MiB (before) | {old:.1f} MiB |", f"| 1 MiB (now) | {new:.1f} MiB |",
            f"| ratio | {new / old:.2f} |" if old > 0 else "| ratio | - |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count, repeats, duration = (200, 1, 5.0) if args.quick else (500, 3, 15.0)
    print("\n".join(guard_cost(count, repeats)), flush=True)
    print()
    print("\n".join(slow_reader(duration, repeats)))


if __name__ == "__main__":
    main()
