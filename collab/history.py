"""What a room broadcast lately, numbered: so that a client that is away between two requests
(the HTTP fallback) can be given exactly what it missed, and "nothing new" is one comparison.

Pure and bounded: the oldest frames go once more than ``max_frames`` or ``max_bytes`` are kept,
and a position older than what is kept is answered with None (the caller then falls back to
a state-vector diff, which is always correct).
"""

from __future__ import annotations

from collections import deque


class History:
    """Frames in broadcast order, each with the sequence number it was given and the client it
    came from (so that a client is not sent its own changes back)."""

    __slots__ = ("_bytes", "_frames", "max_bytes", "max_frames", "seq")

    def __init__(self, *, max_frames: int = 512, max_bytes: int = 512 * 1024) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.seq = 0
        """The number of the newest frame (0 before the first)."""
        self._frames: deque[tuple[int, bytes, str | None]] = deque()
        self._bytes = 0

    def append(self, frame: bytes, origin: str | None = None) -> int:
        self.seq += 1
        self._frames.append((self.seq, frame, origin))
        self._bytes += len(frame)
        while self._frames and (len(self._frames) > self.max_frames or self._bytes > self.max_bytes):
            _seq, dropped, _origin = self._frames.popleft()
            self._bytes -= len(dropped)
        return self.seq

    def skip(self) -> int:
        """Number a frame without keeping it (nobody will ask): positions before it can no
        longer be answered."""
        self.seq += 1
        if self._frames:
            self._frames.clear()
            self._bytes = 0
        return self.seq

    @property
    def oldest(self) -> int:
        """The lowest position :meth:`since` can still answer."""
        return self._frames[0][0] - 1 if self._frames else self.seq

    def since(self, seq: int, *, exclude: str | None = None) -> list[bytes] | None:
        """The frames after position ``seq`` not from ``exclude``, or None when ``seq`` is no
        position of this history (too old to be kept, or ahead of it)."""
        if not self.oldest <= seq <= self.seq:
            return None
        frames = []
        for number, frame, origin in reversed(self._frames):
            if number <= seq:
                break
            if origin is None or origin != exclude:
                frames.append(frame)
        frames.reverse()
        return frames
