"""Counters and latency percentiles for one measurement window (sans-I/O)."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field

SATURATED_CPU = 0.9
"""Above this share of one core the load tester itself may be what limits the numbers."""


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[rank]


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds."""
    values = sorted(latencies_s)
    ms = 1000.0
    return {
        "p50": round(percentile(values, 50) * ms, 3),
        "p95": round(percentile(values, 95) * ms, 3),
        "p99": round(percentile(values, 99) * ms, 3),
        "max": round((values[-1] if values else 0.0) * ms, 3),
        "mean": round((sum(values) / len(values) if values else 0.0) * ms, 3),
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class Window:
    """What happened between start() and stop(): the unit every report is made of."""

    edits: int = 0
    expected: int = 0
    delivered: int = 0
    late: int = 0
    gaps: int = 0
    acks: int = 0
    latencies: list[float] = field(default_factory=list)
    schedule_lag_max: float = 0.0
    started: float = 0.0
    stopped: float = 0.0
    cpu_start: float = 0.0
    cpu_stop: float = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        self.cpu_start = cpu_seconds()

    def stop(self) -> None:
        self.stopped = time.perf_counter()
        self.cpu_stop = cpu_seconds()

    @property
    def wall(self) -> float:
        return max(1e-9, self.stopped - self.started)

    @property
    def cpu_share(self) -> float:
        """The load tester's CPU use as a share of one core."""
        return (self.cpu_stop - self.cpu_start) / self.wall

    def summary(self, send_seconds: float) -> dict[str, object]:
        lost = max(0, self.expected - self.delivered)
        return {
            "edits_sent": self.edits,
            "edit_rate": round(self.edits / max(send_seconds, 1e-9), 1),
            "deliveries_expected": self.expected,
            "updates_delivered": self.delivered,
            "delivery_rate": round(self.delivered / max(send_seconds, 1e-9), 1),
            "lost_deliveries": lost,
            "out_of_order": self.late,
            "acks_received": self.acks,
            "latency_ms": latency_summary(self.latencies),
            "schedule_lag_max_ms": round(self.schedule_lag_max * 1000.0, 3),
            "loadtester_cpu_percent": round(self.cpu_share * 100.0, 1),
            "loadtester_saturated": self.cpu_share >= SATURATED_CPU,
        }
