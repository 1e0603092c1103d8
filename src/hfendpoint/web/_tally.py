"""
Counters and histograms kept as plain numbers and handed to
C{prometheus_client} only when Prometheus scrapes.

C{prometheus_client}'s own C{Counter} and C{Histogram} take a lock and
look their labels up on every update, so that any thread may update
them; ours are updated only from the reactor's thread, once or more per
request, and that cost was a tenth of a small request's. A tally is a
dictionary from label values to numbers, and a histogram's observation
is one bisection into its bucket counts.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class Count:
    """
    One series of a counter: a caller that counts often keeps it and adds
    to its C{value} (L{CounterTally.of}).
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0


class CounterTally:
    """
    A counter by label values; C{name} without the C{_total} that
    Prometheus' exposition adds.
    """

    __slots__ = ("name", "documentation", "labels", "values")

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.values: dict[tuple[str, ...], Count] = {}

    def of(self, key: tuple[str, ...]) -> Count:
        """
        The series of C{key}, made on its first use.
        """
        count = self.values.get(key)
        if count is None:
            count = self.values[key] = Count()
        return count

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        self.of(key).value += amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, count in self.values.items():
            family.add_metric(list(key), count.value)
        return family


class Buckets:
    """
    One histogram's observations: a count per bucket (not cumulative:
    each observation adds one number) and their sum.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus' buckets are "less than or equal": a value equal to a
        # bound is in that bound's bucket, which bisect_left finds.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        found = []
        running = 0
        for bound, count in zip(list(self.bounds) + [float("inf")], self.counts):
            running += count
            found.append((floatToGoString(bound), running))
        return found


class HistogramTally:
    """
    A histogram by label values, all with the same buckets.
    """

    __slots__ = ("name", "documentation", "labels", "bounds", "series")

    def __init__(self, name: str, documentation: str, labels: Sequence[str], bounds: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.bounds = tuple(sorted(float(bound) for bound in bounds))
        self.series: dict[tuple[str, ...], Buckets] = {}

    def of(self, key: tuple[str, ...]) -> Buckets:
        """
        The buckets of C{key}'s series, made on its first observation;
        a caller that observes often keeps them.
        """
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Buckets(self.bounds)
        return series

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, series in self.series.items():
            family.add_metric(list(key), series.cumulative(), series.sum)
        return family


class TallyCollector:
    """
    The tallies of one registry, as C{prometheus_client} collects them.
    """

    def __init__(self, tallies: Sequence[object]) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[Metric]:
        for tally in self._tallies:
            yield tally.family()  # type: ignore[attr-defined]
