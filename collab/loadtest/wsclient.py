"""A minimal, fast RFC 6455 WebSocket client for the load tester.

The load tester has to receive tens of thousands of small messages per second on one core. A
general client library spends most of that on futures and awaits per message; here the frame
codec is a plain object fed bytes (sans-I/O), and the asyncio shell hands every complete message
to a synchronous callback straight from ``data_received``. Optional permessage-deflate (RFC 7692)
so the cost of compression can be measured against a server that offers it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships the C speedups on every platform we use

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        repeated = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
MAX_MESSAGE = 256 * 1024 * 1024


class WebSocketError(Exception):
    """The handshake failed or the peer broke the protocol."""


class Deflate:
    """permessage-deflate state for one connection (the parameters the server accepted)."""

    def __init__(self, client_no_context_takeover: bool = False, server_no_context_takeover: bool = False,
                 client_max_window_bits: int = 15) -> None:
        self.client_no_context_takeover = client_no_context_takeover
        self.server_no_context_takeover = server_no_context_takeover
        self.client_max_window_bits = client_max_window_bits
        self._comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -client_max_window_bits)
        self._decomp = zlib.decompressobj(-15)

    def compress(self, data: bytes) -> bytes:
        if self.client_no_context_takeover:
            self._comp = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.client_max_window_bits)
        out = self._comp.compress(data) + self._comp.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_DEFLATE_TAIL) else out

    def decompress(self, data: bytes) -> bytes:
        if self.server_no_context_takeover:
            self._decomp = zlib.decompressobj(-15)
        return self._decomp.decompress(data + _DEFLATE_TAIL, MAX_MESSAGE)

    @classmethod
    def from_header(cls, value: str) -> Deflate:
        params: dict[str, str] = {}
        for part in value.split(";")[1:]:
            key, _, val = part.strip().partition("=")
            params[key.strip()] = val.strip().strip('"')
        bits = int(params.get("client_max_window_bits") or 15)
        return cls("client_no_context_takeover" in params, "server_no_context_takeover" in params, bits)


def encode_frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    mask = os.urandom(4)
    return header + mask + apply_mask(payload, mask)


class FrameParser:
    """Feed it bytes, get back complete messages and control frames as (opcode, payload)."""

    def __init__(self, deflate: Deflate | None = None) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._opcode = 0
        self._compressed = False
        self.deflate = deflate

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                hdr = 10
            if n > MAX_MESSAGE:
                raise WebSocketError(f"frame of {n} bytes")
            masked = b1 & 0x80
            if masked:
                hdr += 4
            if end - pos < hdr + n:
                break
            payload = bytes(buf[pos + hdr:pos + hdr + n])
            if masked:
                payload = apply_mask(payload, bytes(buf[pos + hdr - 4:pos + hdr]))
            pos += hdr + n
            message = self._frame(b0, payload)
            if message is not None:
                out.append(message)
        if pos:
            del buf[:pos]
        return out

    def _frame(self, b0: int, payload: bytes) -> tuple[int, bytes] | None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode >= 0x8:
            return opcode, payload
        if opcode != OP_CONT:
            self._opcode = opcode
            self._compressed = bool(b0 & 0x40)
            if fin:
                return opcode, self._inflate(payload)
            self._parts = [payload]
            return None
        self._parts.append(payload)
        if not fin:
            return None
        data, self._parts = b"".join(self._parts), []
        return self._opcode, self._inflate(data)

    def _inflate(self, payload: bytes) -> bytes:
        if not self._compressed:
            return payload
        if self.deflate is None:
            raise WebSocketError("compressed frame without permessage-deflate")
        return self.deflate.decompress(payload)


def handshake_request(host: str, path: str, key: str, *, deflate: bool) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def check_handshake_response(head: bytes, key: str) -> Deflate | None:
    """Validate the 101 response; returns the negotiated deflate state, if any."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise WebSocketError(f"handshake refused: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise WebSocketError("bad Sec-WebSocket-Accept")
    ext = headers.get("sec-websocket-extensions", "")
    return Deflate.from_header(ext) if ext.startswith("permessage-deflate") else None


OnMessage = Callable[[bytes, float], None]
OnClose = Callable[[int, str], None]


class WebSocket(asyncio.Protocol):
    """The asyncio shell: handshake, then every binary message goes to ``on_message(data, t)``,
    where ``t`` is ``time.perf_counter()`` when the bytes arrived."""

    def __init__(self, host: str, path: str, *, deflate: bool = False) -> None:
        self._host, self._path, self._offer_deflate = host, path, deflate
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._head = bytearray()
        self._parser: FrameParser | None = None
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self.on_message: OnMessage = lambda data, t: None
        self.on_close: OnClose = lambda code, reason: None
        self.deflate: Deflate | None = None
        self.bytes_received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        request = handshake_request(self._host, self._path, self._key, deflate=self._offer_deflate)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.bytes_received += len(data)
        if self._parser is None:
            data = self._handshake(data)
            if self._parser is None or not data:
                return
        try:
            messages = self._parser.feed(data)
        except (WebSocketError, zlib.error) as exc:
            self._fail(1002, str(exc))
            return
        for opcode, payload in messages:
            if opcode in (OP_BINARY, OP_TEXT):
                self.on_message(payload, now)
            elif opcode == OP_PING:
                self._write(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self._fail(code, payload[2:].decode("utf-8", "replace"), echo=payload[:2])
                return

    def _handshake(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > 65536:
                self._fail(1002, "handshake response too long")
            return b""
        try:
            self.deflate = check_handshake_response(bytes(self._head[:end]), self._key)
        except WebSocketError as exc:
            self._fail(1006, str(exc))
            return b""
        rest = bytes(self._head[end + 4:])
        self._head.clear()
        self._parser = FrameParser(self.deflate)
        if not self.opened.done():
            self.opened.set_result(None)
        return rest

    def _write(self, opcode: int, payload: bytes, rsv1: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload, rsv1=rsv1))

    def send(self, data: bytes) -> None:
        """Queue one binary message (never blocks; the OS buffer or the transport absorbs it)."""
        if self.deflate is not None:
            self._write(OP_BINARY, self.deflate.compress(data), rsv1=True)
        else:
            self._write(OP_BINARY, data)

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def close(self, code: int = 1000) -> None:
        self._write(OP_CLOSE, struct.pack("!H", code))
        self._finish(code, "")

    def _fail(self, code: int, reason: str, echo: bytes | None = None) -> None:
        if echo is not None:
            self._write(OP_CLOSE, echo)
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(WebSocketError(f"closed during handshake: {code} {reason}"))
        if not self.closed.done():
            self.closed.set_result((code, reason))
            self.on_close(code, reason)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(1006, str(exc) if exc else "connection lost")


async def connect(url: str, *, deflate: bool = False, timeout: float = 10.0) -> WebSocket:
    """Open a WebSocket to ``ws://host:port/path`` and complete the handshake."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise WebSocketError(f"only ws:// URLs are supported, not {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    loop = asyncio.get_running_loop()

    async def open_() -> WebSocket:
        _, protocol = await loop.create_connection(
            lambda: WebSocket(f"{host}:{port}", path, deflate=deflate), host, port)
        await protocol.opened
        return protocol

    return await asyncio.wait_for(open_(), timeout)
