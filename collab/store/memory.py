"""In-memory store for tests and throwaway servers: the same semantics, nothing durable."""

from __future__ import annotations

import itertools
from typing import Any

from collab.store.base import LogSlice, Store


class MemoryStore(Store):
    def __init__(self, **options: Any) -> None:
        options.setdefault("commit_window", 0)
        super().__init__(**options)
        self._log: dict[str, list[tuple[int, bytes]]] = {}
        self._snapshots: dict[str, tuple[bytes, int, int]] = {}  # data, position, version
        self._positions = itertools.count(1)

    async def _open(self) -> None:
        pass

    async def _close(self) -> None:
        pass

    async def _write_batch(self, batch: list[tuple[str, bytes]]) -> list[int]:
        positions = []
        for name, update in batch:
            position = next(self._positions)
            self._log.setdefault(name, []).append((position, update))
            positions.append(position)
        return positions

    async def _read_log(self, name: str) -> LogSlice:
        data, position, version = self._snapshots.get(name, (None, 0, 0))
        entries = list(self._log.get(name, []))
        return LogSlice(data, version, [p for p, _ in entries], [u for _, u in entries], position)

    async def _swap_snapshot(self, name: str, expected_version: int, snapshot: bytes,
                             positions: list[int]) -> bool:
        _data, position, version = self._snapshots.get(name, (b"", 0, 0))
        if version != expected_version:
            return False
        folded = set(positions)
        self._snapshots[name] = (snapshot, max([position, *positions]), version + 1)
        self._log[name] = [(p, u) for p, u in self._log.get(name, []) if p not in folded]
        return True

    async def names(self) -> list[str]:
        return sorted(set(self._log) | set(self._snapshots))
