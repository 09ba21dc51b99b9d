"""The single-process bus: one instance holds every room, so there is nobody to tell."""

from __future__ import annotations

import asyncio
from typing import Any

from collab.bus.base import Bus, Kind, OnGap, OnMessage, OnUnconfirmed


class LocalBus(Bus):
    async def subscribe(self, room: str, on_message: OnMessage, on_gap: OnGap,
                        on_unconfirmed: OnUnconfirmed | None = None) -> None:
        pass

    async def unsubscribe(self, room: str) -> None:
        pass

    def publish(self, room: str, kind: Kind, payload: bytes,
                durable: asyncio.Future[Any] | None = None) -> None:
        pass
