"""
The tallies behind the metrics: what Prometheus' own parser reads back
from them is what was counted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from hfendpoint.web._tally import CounterTally, HistogramTally, TallyCollector


def scraped(*tallies):
    registry = CollectorRegistry()
    registry.register(TallyCollector(list(tallies)))
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class CounterTallyTests(SynchronousTestCase):
    def test_counts_by_labels(self):
        tally = CounterTally("x_requests", "Requests", ["endpoint", "status"])
        tally.add(("/a", "200"))
        tally.add(("/a", "200"))
        tally.add(("/a", "400"), 3)
        found = scraped(tally)
        self.assertEqual(found[("x_requests_total", (("endpoint", "/a"), ("status", "200")))], 2)
        self.assertEqual(found[("x_requests_total", (("endpoint", "/a"), ("status", "400")))], 3)
        self.assertEqual(len(found), 2)

    def test_a_kept_series_counts(self):
        """
        A caller that counts often keeps its series and adds to it.
        """
        tally = CounterTally("x_requests", "Requests", ["endpoint"])
        kept = tally.of(("/a",))
        self.assertIs(tally.of(("/a",)), kept)
        kept.value += 2
        tally.add(("/a",))
        self.assertEqual(scraped(tally), {("x_requests_total", (("endpoint", "/a"),)): 3})


class HistogramTallyTests(SynchronousTestCase):
    def test_same_as_prometheus_clients_own(self):
        """
        Bounds are "less than or equal", buckets cumulative, with +Inf,
        sum and count: exactly what C{prometheus_client.Histogram} exposes
        for the same observations.
        """
        bounds = (0.5, 1, 2.5)
        values = (0.1, 0.5, 0.5000001, 1, 2.5, 3, 100, 0)
        tally = HistogramTally("x_seconds", "Durations", ["endpoint"], bounds)
        registry = CollectorRegistry()
        theirs = Histogram("x_seconds", "Durations", ["endpoint"], buckets=bounds, registry=registry)
        for value in values:
            tally.of(("/a",)).observe(value)
            theirs.labels("/a").observe(value)
        ours = scraped(tally)
        for bound, expected in (("0.5", 3), ("1.0", 5), ("2.5", 6), ("+Inf", 8)):
            key = ("x_seconds_bucket", (("endpoint", "/a"), ("le", bound)))
            self.assertEqual(ours[key], expected)
            self.assertEqual(registry.get_sample_value("x_seconds_bucket", {"endpoint": "/a", "le": bound}), expected)
        self.assertEqual(ours[("x_seconds_count", (("endpoint", "/a"),))], 8)
        self.assertAlmostEqual(ours[("x_seconds_sum", (("endpoint", "/a"),))], sum(values))

    def test_series_kept(self):
        tally = HistogramTally("x_inputs", "Inputs", [], (1, 2))
        self.assertIs(tally.of(()), tally.of(()))
        self.assertEqual(scraped(tally)[("x_inputs_count", ())], 0)
