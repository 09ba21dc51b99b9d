"""In-memory store for tests and throwaway servers: the same semantics, nothing durable."""

from __future__ import annotations

import itertools
import time
from typing import Any

from collab.store.base import DocumentInfo, LogSlice, Store, VersionInfo


class MemoryStore(Store):
    def __init__(self, **options: Any) -> None:
        options.setdefault("commit_window", 0)
        super().__init__(**options)
        self._log: dict[str, list[tuple[int, bytes]]] = {}
        self._snapshots: dict[str, tuple[bytes, int, int]] = {}  # data, position, version
        self._positions = itertools.count(1)
        self._changed: dict[str, float] = {}
        self._deleted: set[str] = set()
        self._versions: dict[str, list[tuple[VersionInfo, bytes]]] = {}
        self._version_ids = itertools.count(1)

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
            self._changed[name] = time.time()
        return positions

    async def _read_log(self, name: str) -> LogSlice:
        data, position, version = self._snapshots.get(name, (None, 0, 0))
        entries = list(self._log.get(name, []))
        return LogSlice(data, version, [p for p, _ in entries], [u for _, u in entries], position,
                        deleted=name in self._deleted)

    async def _swap_snapshot(self, name: str, expected_version: int, snapshot: bytes,
                             positions: list[int]) -> bool:
        _data, position, version = self._snapshots.get(name, (b"", 0, 0))
        if version != expected_version:
            return False
        folded = set(positions)
        self._snapshots[name] = (snapshot, max([position, *positions]), version + 1)
        self._log[name] = [(p, u) for p, u in self._log.get(name, []) if p not in folded]
        return True

    async def _set_deleted(self, name: str, deleted: bool) -> bool:
        was_deleted = name in self._deleted
        dropped = bool(self._log.pop(name, None)) | (self._snapshots.pop(name, None) is not None)
        self._changed[name] = time.time()
        if deleted:
            self._deleted.add(name)
            return dropped and not was_deleted
        self._deleted.discard(name)
        return was_deleted

    async def _list(self, after: str | None, limit: int) -> list[DocumentInfo]:
        names = sorted(n for n in set(self._log) | set(self._snapshots)
                       if n not in self._deleted and (after is None or n > after))
        return [DocumentInfo(n, self._size(n), self._changed.get(n)) for n in names[:limit]]

    def _size(self, name: str) -> int:
        snapshot = self._snapshots.get(name)
        return (len(snapshot[0]) if snapshot else 0) + sum(len(u) for _, u in self._log.get(name, []))

    async def _add_version(self, name: str, created_at: float, kind: str, label: str,
                           authors: list[str], state: bytes) -> int:
        version_id = next(self._version_ids)
        info = VersionInfo(version_id, created_at, kind, label, tuple(authors), len(state))
        self._versions.setdefault(name, []).append((info, state))
        return version_id

    async def _list_versions(self, name: str, before: int | None, limit: int) -> list[VersionInfo]:
        infos = [info for info, _ in reversed(self._versions.get(name, []))
                 if before is None or info.id < before]
        return infos[:limit]

    async def _read_version(self, name: str, version_id: int) -> tuple[VersionInfo, bytes] | None:
        return next((kept for kept in self._versions.get(name, []) if kept[0].id == version_id), None)

    async def _prune_versions(self, name: str, older_than: float, keep: int) -> int:
        kept = self._versions.get(name, [])
        newest = {info.id for info, _ in kept[-keep:]} if keep > 0 else set()
        left = [(info, state) for info, state in kept
                if info.kind != "auto" or info.created_at >= older_than or info.id in newest]
        self._versions[name] = left
        return len(kept) - len(left)

    async def _drop_versions(self, name: str) -> None:
        self._versions.pop(name, None)
