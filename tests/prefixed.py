"""``collab`` behind a proxy that strips a path prefix, for tests: the browser sees the app at
``/collab/…``, the app sees ``/…`` (as behind ``location /collab/ { proxy_pass http://app/; }``).
Anything outside the prefix is a 404. Nothing else changes.

``python -m tests.prefixed --port 9000 --store sqlite:///x.db --prefix /collab``
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.types import Receive, Scope, Send

from collab.app import create_app
from collab.config import Settings


def strip_prefix(app: object, prefix: str) -> object:
    raw_prefix = prefix.encode()

    async def proxied(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw = scope.get("raw_path") or scope["path"].encode()
            if not raw.startswith(raw_prefix + b"/"):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await send({"type": "http.response.start", "status": 404,
                                "headers": [(b"content-type", b"text/plain")]})
                    await send({"type": "http.response.body", "body": b"outside the prefix\n"})
                return
            scope = {**scope, "path": scope["path"][len(prefix):], "raw_path": raw[len(raw_prefix):]}
        await app(scope, receive, send)  # type: ignore[operator]

    return proxied


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--prefix", default="/collab")
    args = parser.parse_args()
    app = create_app(Settings.from_env(store=args.store, port=args.port))
    uvicorn.run(strip_prefix(app, args.prefix), host="127.0.0.1", port=args.port, lifespan="on",
                log_level="warning")


if __name__ == "__main__":
    main()
