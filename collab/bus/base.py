"""Fan-out between instances holding the same room.

A bus may drop, delay or reorder messages: CRDT updates commute and are idempotent, and a room
that may have missed messages (``on_gap``) catches up from the store. An instance never hears
its own messages back and never re-publishes what it received.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from collab.metrics import Histogram, counter


class Kind(str, Enum):
    UPDATE = "u"
    """A document update, as produced by the engine of the publishing instance."""
    AWARENESS = "a"
    """An awareness payload (y-protocols encoding), already validated by the publisher."""
    DELETED = "d"
    """The document was deleted (no payload): close its clients and forget it."""
    GOODBYE = "g"
    """A client without a connection said it is leaving (payload: its client key): every
    instance removes the presence that client brought to it."""


@dataclass(frozen=True, slots=True)
class BusMessage:
    room: str
    kind: Kind
    payload: bytes


OnMessage = Callable[[BusMessage], None]
OnGap = Callable[[], None]
OnUnconfirmed = Callable[[bytes], None]
"""Store this update: its publisher never confirmed storing it (it may have died)."""


@dataclass(slots=True)
class BusStats:
    """What the bus did since start, for /metrics (all zero for the local bus)."""

    published: int = counter("frames handed to Redis")
    dropped: int = counter("frames dropped (Redis unreachable or the send queue full); rooms catch up")
    received: int = counter("frames received from other instances")
    own: int = counter("own frames heard back and ignored")
    gaps: int = counter("skipped sequence numbers seen (a room catches up from the store)")
    reconnects: int = counter("subscriber reconnections to Redis")
    malformed: int = counter("frames that were not collab bus frames")
    handed_over: int = counter("relayed updates stored here because their publisher never confirmed")
    lag_seconds: Histogram = field(default_factory=lambda: Histogram(
        "time from publishing a frame to Redis taking it"))


class Bus(ABC):
    stats: BusStats

    def __init__(self) -> None:
        self.stats = BusStats()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect. A bus that cannot connect yet keeps trying in the background."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and drop every subscription."""

    @abstractmethod
    async def subscribe(self, room: str, on_message: OnMessage, on_gap: OnGap,
                        on_unconfirmed: OnUnconfirmed | None = None) -> None:
        """Deliver other instances' messages for ``room``; call ``on_gap`` whenever messages
        may have been lost (a reconnection, a detected gap)."""

    @abstractmethod
    async def unsubscribe(self, room: str) -> None: ...

    @abstractmethod
    def publish(self, room: str, kind: Kind, payload: bytes,
                durable: asyncio.Future[Any] | None = None) -> None:
        """Queue a message for the other instances; never blocks, never raises."""

    @property
    def healthy(self) -> bool:
        return True

    def gauges(self) -> dict[str, float]:
        """Current values for /metrics (subscriptions, queued frames); none for a local bus."""
        return {}
