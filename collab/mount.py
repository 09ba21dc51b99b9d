"""Where a request sits inside the app, wherever the app is mounted.

A host application may mount collab under a prefix (``Mount("/collab", app=server.app)``), and
uvicorn may be run with ``--root-path``. Either way the ASGI scope carries the prefix in
``root_path`` and the full path (prefix included) in ``path`` and ``raw_path``. Routing inside the
app, and the room names taken from ``/ws/<name>``, ``/poll/<name>`` and ``/api/docs/<name>``, need
the path below the prefix: the room name stays exactly as the client sent it (still
percent-encoded), so the raw path is cut by segments rather than re-encoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote


def _root(scope: Mapping[str, Any]) -> str:
    """The mount point, when the path lies under it ("" otherwise)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return root
    return ""


def app_path(scope: Mapping[str, Any]) -> str:
    """The decoded path below the mount point (``/ws/notes`` for ``/collab/ws/notes``)."""
    root = _root(scope)
    return scope["path"][len(root):] or "/"


def app_raw_path(scope: Mapping[str, Any]) -> bytes:
    """The raw (still percent-encoded) path below the mount point."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    root = _root(scope)
    if not root:
        return raw
    segments = root.count("/")
    parts = raw.split(b"/", segments + 1)
    if len(parts) <= segments or unquote(b"/".join(parts[:segments + 1]).decode("latin-1")) != root:
        return raw  # the raw path does not carry the prefix (a proxy stripped it)
    rest = parts[segments + 1] if len(parts) > segments + 1 else b""
    return b"/" + rest


def below_mount(scope: Mapping[str, Any]) -> dict[str, Any]:
    """The scope as an app mounted at the root would see it: for the endpoints that read the
    path themselves (the WebSocket and the HTTP fallback)."""
    return {**scope, "path": app_path(scope), "raw_path": app_raw_path(scope), "root_path": ""}
