"""Drive stock y-websocket clients (Node subprocesses running ``tests/js/client.mjs``).

Each client speaks JSON lines: commands on stdin, replies and events on stdout. Every wait here
is bounded; every process is killed by PID when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import require_service

JS_DIR = Path(__file__).resolve().parent / "js"
CLIENT_SCRIPT = JS_DIR / "client.mjs"
MAX_LINE = 256 * 1024 * 1024
"""Longest reply line accepted (a reply may carry a whole document's text)."""
REPLY_MARGIN = 5.0
"""Seconds the Python side waits beyond a timeout the Node side enforces itself."""


def need_node() -> str:
    """The node binary, or skip (fail under COLLAB_REQUIRE_SERVICES=1) with the reason."""
    node = shutil.which("node")
    if node is None:
        require_service("Node.js", "the node binary is not on PATH")
    if not (JS_DIR / "node_modules" / "y-websocket").is_dir():
        require_service("npm test clients",
                        "tests/js/node_modules is missing: run `npm ci --prefix tests/js`")
    assert node is not None
    return node


class JsClientError(AssertionError):
    """The client refused a command, timed out, or died."""


class JsClient:
    """One stock ``WebsocketProvider`` in its own Node process."""

    def __init__(self, process: asyncio.subprocess.Process, label: str) -> None:
        self.process = process
        self.label = label
        self.events: list[dict[str, Any]] = []
        self.client_id: int = 0
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._event_added = asyncio.Event()
        self._stderr: list[str] = []
        self._reader = asyncio.ensure_future(self._read_stdout())
        self._err_reader = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def start(cls, server_url: str, room: str, label: str = "js",
                    params: dict[str, str] | None = None) -> JsClient:
        """``params``: extra URL parameters for the provider (its ``params`` option)."""
        node = need_node()
        process = await asyncio.create_subprocess_exec(
            node, str(CLIENT_SCRIPT), server_url, room, json.dumps(params or {}), cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )
        client = cls(process, label)
        client.client_id = (await client.call("info"))["clientId"]
        return client

    # --- I/O ------------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        problem = "exited"
        try:
            async for raw in self.process.stdout:
                self._dispatch(raw)
        except ValueError as exc:  # a line over MAX_LINE
            problem = f"sent an unreadable line ({exc})"
        finally:
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(JsClientError(f"{self.label} {problem}: {self.stderr()}"))

    def _dispatch(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            self._stderr.append(f"(stdout, not JSON) {raw[:200]!r}")
            return
        future = self._replies.pop(message.get("id"), None) if "id" in message else None
        if future is not None and not future.done():
            future.set_result(message)
        elif "event" in message:
            self.events.append(message)
            self._event_added.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    def stderr(self) -> str:
        return "\n".join(self._stderr[-20:]) or "(no stderr)"

    async def call(self, cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        """Send one command and return its reply; raises JsClientError on failure."""
        if self._reader.done():
            raise JsClientError(f"{self.label} has exited ({self.process.returncode}); cannot {cmd}: "
                                f"{self.stderr()}")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        assert self.process.stdin is not None
        payload = {"id": request_id, "cmd": cmd, **args}
        if "timeout" not in args and cmd.startswith("wait_"):
            payload["timeout"] = timeout
        self.process.stdin.write((json.dumps(payload) + "\n").encode())
        try:
            await self.process.stdin.drain()
            reply = await asyncio.wait_for(future, timeout + REPLY_MARGIN)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            raise JsClientError(f"{self.label}: no reply to {cmd}: {exc!r}; {self.stderr()}") from exc
        finally:
            self._replies.pop(request_id, None)
        if not reply.get("ok"):
            raise JsClientError(f"{self.label}: {cmd} failed: {reply.get('error')}")
        return reply

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                         start: int = 0) -> dict[str, Any]:
        """The first event from index ``start`` on that satisfies ``predicate``."""
        async def scan() -> dict[str, Any]:
            index = start
            while True:
                while index < len(self.events):
                    if predicate(self.events[index]):
                        return self.events[index]
                    index += 1
                self._event_added.clear()
                await self._event_added.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError as exc:
            raise JsClientError(f"{self.label}: no matching event in {timeout} s; events: "
                                f"{self.events[start:][-10:]}") from exc

    # --- commands -------------------------------------------------------------------------

    async def text(self) -> str:
        return str((await self.call("text"))["text"])

    async def insert(self, index: int, text: str) -> int:
        """Insert locally (the provider sends it); returns the new length in UTF-16 units."""
        return int((await self.call("insert", index=index, text=text))["length"])

    async def append(self, text: str) -> int:
        return int((await self.call("append", text=text))["length"])

    async def wait_synced(self, timeout: float = 10.0) -> str:
        return str((await self.call("wait_synced", timeout=timeout))["text"])

    async def wait_text(self, *contains: str, equals: str | None = None, timeout: float = 10.0) -> str:
        args: dict[str, Any] = {"contains": list(contains)}
        if equals is not None:
            args["equals"] = equals
        return str((await self.call("wait_text", timeout=timeout, **args))["text"])

    async def set_awareness(self, state: Any) -> None:
        await self.call("set_awareness", state=state)

    async def awareness(self) -> dict[int, Any]:
        return {int(k): v for k, v in (await self.call("awareness"))["states"].items()}

    async def wait_awareness(self, present: Sequence[int] = (), absent: Sequence[int] = (),
                             timeout: float = 10.0) -> dict[int, Any]:
        reply = await self.call("wait_awareness", timeout=timeout, present=list(present), absent=list(absent))
        return {int(k): v for k, v in reply["states"].items()}

    async def wait_saved(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the server has acknowledged every edit sent on this connection as stored."""
        return await self.call("wait_saved", timeout=timeout)

    async def disconnect(self) -> None:
        await self.call("disconnect")

    async def connect(self) -> None:
        await self.call("connect")

    # --- ending ---------------------------------------------------------------------------

    async def exit(self, timeout: float = 5.0) -> None:
        """Leave politely (the provider says goodbye) and wait for the process to end."""
        with contextlib.suppress(JsClientError):
            await self.call("exit", timeout=timeout)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
        await self._drain_readers()

    async def kill(self) -> None:
        """SIGKILL: the socket dies without a goodbye, as when a laptop lid closes."""
        if self.process.returncode is None:
            self.process.kill()
        await asyncio.wait_for(self.process.wait(), 10)
        await self._drain_readers()

    async def _drain_readers(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(self._reader, self._err_reader, return_exceptions=True), 5)


class JsClients:
    """Start clients for one test; every one still running is killed at the end."""

    def __init__(self) -> None:
        self.clients: list[JsClient] = []

    async def start(self, server_url: str, room: str, label: str | None = None,
                    params: dict[str, str] | None = None) -> JsClient:
        client = await JsClient.start(server_url, room, label or f"js{len(self.clients)}", params)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.kill()


@contextlib.asynccontextmanager
async def js_clients() -> AsyncIterator[JsClients]:
    clients = JsClients()
    try:
        yield clients
    finally:
        await clients.close()
