"""Fan-out between instances: pick a bus by URL (none means a single instance)."""

from __future__ import annotations

from collab.bus.base import Bus, BusMessage, Kind
from collab.bus.local import LocalBus

__all__ = ["Bus", "BusMessage", "Kind", "LocalBus", "open_bus"]


def open_bus(url: str | None, instance_id: str, *, answer_timeout: float = 3.0) -> Bus:
    """Make (not yet open) the bus for ``url``: None for one process, ``redis://…`` for many.
    ``answer_timeout``: how long Redis may leave a command unanswered before the bus counts
    as unhealthy."""
    if not url:
        return LocalBus()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from collab.bus.redis import RedisBus  # type: ignore[import-not-found]

        return RedisBus(url, instance_id=instance_id, answer_timeout=answer_timeout)
    raise ValueError(f"unsupported bus URL {url!r}: use redis://HOST:PORT")
