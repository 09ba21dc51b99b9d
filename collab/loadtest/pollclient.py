"""A client of collab's HTTP fallback with the load tester's WebSocket interface.

``send`` takes y-websocket messages: a sync step 1 sets the state vector that every poll
carries (and starts polling), anything else is sent by a separate request, batched with what
is queued behind a request in flight. Every message of every answer goes to
``on_message(data, t)``. A failed request is sent again (updates are idempotent); a refusal
ends the connection through ``on_close(code, reason)`` with the close code that means the
same as the HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

from collab import codes, protocol
from collab.loadtest.http import HttpClient, HttpError, Response
from collab.transport.pollwire import VERSION_HEADER, decode_body, encode_body

OnMessage = Callable[[bytes, float], None]
OnClose = Callable[[int, str], None]

_STEP1 = bytes([protocol.MSG_SYNC, protocol.SYNC_STEP1])
RETRY_FIRST = 0.05
RETRY_CAP = 1.0
MAX_FAILURES = 20
"""Consecutive failed requests after which the connection counts as lost."""


def close_code(status: int) -> int:
    """The close code of the outcome whose HTTP status is ``status``."""
    for outcome in codes.TABLE:
        if outcome.http == status and outcome.close is not None:
            return outcome.close
    return 1006


class PollConnection:
    def __init__(self, url: str, *, timeout: float = 60.0,
                 state_vector: Callable[[], bytes] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, not {url!r}")
        self.path = parts.path
        self.params = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.params["client"] = secrets.token_urlsafe(12)
        self.headers = dict(headers or {})
        """Sent with every request (a cookie or an Authorization header)."""
        self.http = HttpClient(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        self.sends = HttpClient(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        self.on_message: OnMessage = lambda data, t: None
        self.on_close: OnClose = lambda code, reason: None
        self.version: str | None = None
        self.polls = 0
        self._state_vector = b"\x00"
        self._state_vector_of = state_vector
        self._outbox: list[bytes] = []
        self._poller: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def client(self) -> str:
        return self.params["client"]

    @property
    def requests(self) -> int:
        return self.http.requests + self.sends.requests

    def _target(self, **extra: str) -> str:
        return self.path + "?" + urlencode({**self.params, **extra})

    def send(self, data: bytes) -> None:
        if self._closed:
            return
        if data[:2] == _STEP1:
            self._state_vector = protocol.read_var_bytes(data, 2)[0]
            if self._poller is None:
                self._poller = asyncio.get_running_loop().create_task(self._poll())
            return
        self._outbox.append(data)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _poll(self) -> None:
        failures = 0
        while not self._closed:
            params = {"wait": "1"}
            if self.version is not None:
                params["version"] = self.version
            vector = self._state_vector_of() if self._state_vector_of else self._state_vector
            try:
                response = await self.http.post(self._target(**params),
                                                encode_body([protocol.encode_sync_step1(vector)]),
                                                self.headers)
            except HttpError as exc:
                failures += 1
                if not await self._retry(failures, str(exc)):
                    return
                continue
            if response.status != 200:
                failures += 1
                if not self._retryable(response) or not await self._retry(failures, _reason(response)):
                    self._finish(close_code(response.status), _reason(response))
                    return
                continue
            failures = 0
            self.polls += 1
            self.version = response.headers.get(VERSION_HEADER, self.version)
            self._deliver(response)

    async def _send(self) -> None:
        failures = 0
        try:
            while self._outbox and not self._closed:
                batch, self._outbox = self._outbox, []
                try:
                    response = await self.sends.post(self._target(), encode_body(batch), self.headers)
                except HttpError as exc:
                    response, reason = None, str(exc)
                else:
                    reason = _reason(response)
                if response is not None and response.status == 200:
                    failures = 0
                    self._deliver(response)
                    continue
                if response is not None and _read_only(response):
                    continue  # a read-only client's changes go nowhere, as over a WebSocket
                self._outbox[:0] = batch  # sent again: a duplicate is harmless
                failures += 1
                if response is not None and not self._retryable(response):
                    self._finish(close_code(response.status), reason)
                    return
                if not await self._retry(failures, reason):
                    return
        finally:
            self._sender = None

    @staticmethod
    def _retryable(response: Response) -> bool:
        return response.status >= 500 or response.status == 429

    async def _retry(self, failures: int, reason: str) -> bool:
        if failures >= MAX_FAILURES:
            self._finish(1006, reason)
            return False
        await asyncio.sleep(min(RETRY_CAP, RETRY_FIRST * 2 ** (failures - 1)))
        return not self._closed

    def _deliver(self, response: Response) -> None:
        now = time.perf_counter()
        try:
            frames = decode_body(response.body)
        except protocol.ProtocolError as exc:
            self._finish(1002, f"bad answer: {exc}")
            return
        for frame in frames:
            if self._closed:
                return
            self.on_message(frame, now)

    def _finish(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.on_close(code, reason)
        for task in (self._poller, self._sender):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self.http.close()
        self.sends.close()

    def abandon(self) -> None:
        """Stop without a word, as a client whose network went away."""
        self._finish(1006, "abandoned")

    def close(self, code: int = 1000) -> None:
        """Stop polling; the server is told the client left (its presence goes at once), with
        whatever is still queued (a presence removal, say)."""
        if self._closed:
            return
        bye = asyncio.get_running_loop().create_task(self._goodbye(encode_body(self._outbox)))
        _background.add(bye)
        bye.add_done_callback(_background.discard)
        self._finish(code, "")

    async def _goodbye(self, body: bytes) -> None:
        client = HttpClient(self.http.host, self.http.port, timeout=5.0)
        with contextlib.suppress(HttpError):
            await client.post(self._target(bye="1"), body, self.headers)
        client.close()


_background: set[asyncio.Task[None]] = set()


def _read_only(response: Response) -> bool:
    return response.status == 403 and response.body.strip() == codes.READ_ONLY_REASON.encode()


def _reason(response: Response) -> str:
    return f"HTTP {response.status}: {response.body.decode('utf-8', 'replace').strip()}"


async def connect(url: str, *, timeout: float = 10.0) -> PollConnection:
    """A poll connection to ``http://host:port/poll/<room>``; it starts polling at its first
    sync step 1."""
    return PollConnection(url, timeout=max(timeout, 60.0))
