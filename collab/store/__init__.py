"""Durable document storage: pick a store by URL."""

from __future__ import annotations

from typing import Any

from collab.store.base import Damage, Store, StoreDamaged, StoredDocument

__all__ = ["Damage", "Store", "StoreDamaged", "StoredDocument", "UnsupportedStore", "open_store"]


class UnsupportedStore(ValueError):
    """A store URL collab does not understand."""


def open_store(url: str, **options: Any) -> Store:
    """Make (not yet open) the store for ``url``: ``sqlite:///PATH``, ``memory://`` or
    ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        from collab.store.sqlite import SQLiteStore

        path = url[len("sqlite:///"):]
        if not path:
            raise UnsupportedStore("sqlite:/// needs a file path, e.g. sqlite:///./data/collab.db")
        return SQLiteStore(path, **options)
    if url in ("memory://", "memory:"):
        from collab.store.memory import MemoryStore

        return MemoryStore(**options)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from collab.store.postgres import PostgresStore  # type: ignore[import-not-found]
        except ImportError as exc:
            raise UnsupportedStore(f"PostgreSQL store unavailable: {exc}") from exc
        return PostgresStore(url, **options)
    raise UnsupportedStore(
        f"unsupported store URL {url!r}: use sqlite:///PATH, memory:// or postgresql://…"
    )
