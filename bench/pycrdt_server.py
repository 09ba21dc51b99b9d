"""Serve pycrdt-websocket (the Jupyter project's y-websocket server) on uvicorn, for the benchmark.

Usage: python bench/pycrdt_server.py --port 1235 [--host 127.0.0.1] [--ws-per-message-deflate]
Rooms are named by the URL path, as with the reference server; documents live in memory.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer


class App:
    """ASGIServer plus a lifespan that starts and stops the WebsocketServer."""

    def __init__(self) -> None:
        self.websocket_server = WebsocketServer(auto_clean_rooms=True)
        self.asgi = ASGIServer(self.websocket_server)
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._task = asyncio.create_task(self.websocket_server.start())
                    await self.websocket_server.started.wait()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.websocket_server.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"okay"})
        else:
            await self.asgi(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1235)
    parser.add_argument("--ws-per-message-deflate", action="store_true")
    args = parser.parse_args()
    uvicorn.run(App(), host=args.host, port=args.port, log_level="warning", lifespan="on",
                ws_per_message_deflate=args.ws_per_message_deflate)


if __name__ == "__main__":
    main()
