"""Rate limits shared by every transport, sans-I/O: the caller passes the time and does the
waiting (a WebSocket stops reading, an HTTP fallback delays its answer)."""

from __future__ import annotations


class TokenBucket:
    """``rate`` messages per second on average, ``burst`` at once. A message that finds the
    bucket empty is not refused but delayed (:meth:`take` says how long), so a fast client is
    slowed to the rate. One held to the rate for ``patience`` seconds without pausing long
    enough to win back half its burst is flooding (:meth:`flooding`): its transport closes it.
    (Half the burst, not one token: a server busy elsewhere reads late, which refills a token
    or two even while the client floods.)"""

    __slots__ = ("burst", "empty_since", "patience", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, patience: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.patience = patience
        self.tokens = float(burst)
        self.stamp = now
        self.empty_since: float | None = None

    def take(self, now: float) -> float:
        """Spend one token; returns how many seconds to wait before handling the message."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        if self.tokens >= self.burst / 2:
            self.empty_since = None
        if self.tokens >= 0.0:
            return 0.0
        if self.empty_since is None:
            self.empty_since = now
        return -self.tokens / self.rate

    def flooding(self, now: float) -> bool:
        """The client has been held to the rate for longer than ``patience``."""
        return self.empty_since is not None and now - self.empty_since > self.patience
