"""Prometheus metrics: every part counts its own events in a small dataclass of plain numbers;
this module renders them all, at scrape time, in the Prometheus text format.

Counting stays on the hot path and costs an integer increment; building metric objects, labels
and text happens only when ``/metrics`` is read. A stats dataclass declares its fields with
:func:`counter`, :func:`labelled` or a :class:`Histogram`, and the part that owns it is
registered once with :meth:`Metrics.add`: a new field shows up without touching this module.
Each :class:`collab.app.Collab` has its own registry, never the process-wide default one, so
that two instances in one process (tests, a host application) never mix their numbers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Histogram", "Metrics", "counter", "gauge", "labelled"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format every Prometheus reads (what ``generate_latest`` writes for our names)."""

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)
"""Seconds, from 100 µs (applying a keystroke) to 5 s (a commit against a struggling database)."""


def counter(help: str) -> Any:
    """A dataclass field counting events: rendered as ``<prefix><name>_total``."""
    return field(default=0, metadata={"help": help})


def gauge(help: str) -> Any:
    """A dataclass field holding a current value (it goes down too): rendered as a gauge."""
    return field(default=0, metadata={"help": help, "gauge": True})


def labelled(labels: str | tuple[str, ...], help: str) -> Any:
    """A dataclass field counting events by label value (a dict from value, or a tuple of
    values, to a count): rendered as one counter with those labels. Keep the values few and
    fixed (close codes, reason slugs), never names or ids."""
    names = (labels,) if isinstance(labels, str) else labels
    return field(default_factory=dict, metadata={"help": help, "labels": names})


@dataclass(slots=True)
class Histogram:
    """Observations counted into fixed buckets with plain integers (one bisect per observation);
    rendered as a Prometheus histogram."""

    help: str
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts per upper bound, ``+Inf`` last."""
        result, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


Gauge = tuple[str, str, Callable[[], float]]
"""(name, help, read the current value)."""


@dataclass(slots=True)
class _Source:
    prefix: str
    stats: Callable[[], Any]
    labels: Mapping[str, str]


class Metrics(Collector):
    """The registry of one Collab: stats dataclasses and gauges, rendered on every scrape."""

    def __init__(self) -> None:
        self._sources: list[_Source] = []
        self._gauges: list[tuple[str, str, Callable[[], float], Mapping[str, str]]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def add(self, prefix: str, stats: Any | Callable[[], Any], **labels: str) -> None:
        """Render the fields of ``stats`` (or of what ``stats()`` returns at scrape time, for a
        part that may replace its dataclass) under ``prefix``, with constant ``labels``."""
        read = (lambda: stats) if is_dataclass(stats) else stats
        self._sources.append(_Source(prefix, read, labels))

    def gauge(self, name: str, help: str, read: Callable[[], float], **labels: str) -> None:
        """A value read at scrape time (rooms live now, updates not yet stored)."""
        self._gauges.append((name, help, read, labels))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- the prometheus_client Collector interface --------------------------------------------

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        for name, help, read, labels in self._gauges:
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(name, help, labels=list(labels))
            family.add_metric(list(labels.values()), float(read()))
        for source in self._sources:
            stats = source.stats()
            if stats is not None:
                for family in _families_of(source.prefix, stats, source.labels, families):
                    families.setdefault(family.name, family)
        yield from families.values()


def _families_of(prefix: str, stats: Any, labels: Mapping[str, str],
                 families: dict[str, Any]) -> Iterable[Any]:
    """One metric family per field of a stats dataclass, merged into ``families`` by name (two
    transports render into the same family with different ``transport`` labels)."""
    constant_names, constant_values = list(labels), list(labels.values())

    def family(kind: type[Any], name: str, help: str, label_names: list[str]) -> Any:
        return families[name] if name in families else kind(name, help, labels=label_names)

    for f in fields(stats):
        value = getattr(stats, f.name)
        name = prefix + f.name
        help = f.metadata.get("help") or f.name.replace("_", " ")
        if isinstance(value, Histogram):
            found = family(HistogramMetricFamily, name, value.help, constant_names)
            found.add_metric(constant_values, value.buckets(), value.total)
        elif isinstance(value, dict):
            label_names = list(f.metadata.get("labels", ("key",)))
            found = family(CounterMetricFamily, name, help, constant_names + label_names)
            for key, count in sorted(value.items(), key=lambda item: str(item[0])):
                keys = key if isinstance(key, tuple) else (key,)
                found.add_metric(constant_values + [str(k) for k in keys], count)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kind = GaugeMetricFamily if f.metadata.get("gauge") else CounterMetricFamily
            found = family(kind, name, help, constant_names)
            found.add_metric(constant_values, value)
        else:
            continue
        yield found
