"""A small HTTP/1.1 client for the load tester and the tests: keep-alive connections, one
request at a time on each, responses parsed by httptools (the C parser uvicorn uses).

Enough for the HTTP fallback: POST with a body, a response with a Content-Length or until the
connection closes. A connection the server (or a balancer) closes after a response is
replaced by a new one on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httptools


class HttpError(ConnectionError):
    """The request got no complete response (connection refused, reset, or closed early)."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes = b""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.done: asyncio.Future[Response] | None = None
        self.body: list[bytes] = []
        self.closed = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"bad response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is not None and not self.done.done() and self.response is not None:
            # A response without a length ends with the connection.
            with contextlib.suppress(httptools.HttpParserError):
                self.parser.feed_data(b"")
        self._fail(HttpError(str(exc) if exc else "connection closed before the response"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.response = Response(0)
        self.body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        assert response is not None
        response.body = b"".join(self.body)
        self.body = []
        if self.done is not None and not self.done.done():
            self.done.set_result(response)

    def _fail(self, exc: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """Requests to one ``host:port``, on keep-alive connections that are reused while open."""

    def __init__(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self.requests = 0

    async def post(self, target: str, body: bytes = b"", headers: dict[str, str] | None = None,
                   *, timeout: float | None = None) -> Response:
        """POST ``body`` to ``target`` (path and query); raises :class:`HttpError`."""
        connection = await self._connection()
        head = [f"POST {target} HTTP/1.1", f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}", "Content-Type: application/octet-stream"]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        connection.done = asyncio.get_running_loop().create_future()
        self._busy.add(connection)
        self.requests += 1
        assert connection.transport is not None
        connection.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        try:
            response = await asyncio.wait_for(asyncio.shield(connection.done),
                                              self.timeout if timeout is None else timeout)
        except asyncio.TimeoutError:
            connection.close()
            raise HttpError("no response in time") from None
        except BaseException:
            connection.close()
            raise
        finally:
            self._busy.discard(connection)
            connection.done = None
        if connection.keep_alive and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        try:
            _transport, connection = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(_Connection, self.host, self.port),
                self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {reason}") from None
        return connection

    def close(self) -> None:
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
