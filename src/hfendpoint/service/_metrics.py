"""
The gateway's metrics that are read from its state when Prometheus
scrapes: queues, workers, the image store. Reading them then costs
nothing while serving.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hfendpoint.web._metrics import HTTPMetrics
from hfendpoint.web._tally import HistogramTally

#: Inputs per embeddings call sent to the worker.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class GatewayMetrics(HTTPMetrics):
    """
    All of one gateway's metrics, in a registry of its own.
    """

    def __init__(self, gateway: Any) -> None:
        super().__init__(CollectorRegistry())
        self.embedding_batch_inputs = HistogramTally(
            "hfendpoint_embedding_batch_inputs", "Inputs in each embeddings call sent to the worker", [], BATCH_BUCKETS
        )
        self.tallies.append(self.embedding_batch_inputs)
        self.registry.register(StateCollector(gateway))


class StateCollector:
    """
    Reads the gateway's state at each scrape.
    """

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self._gateway
        yield _gauge("hfendpoint_requests_running", "Requests being served now", gateway.admission.in_flight)
        yield _gauge("hfendpoint_requests_queued", "Requests waiting for a turn", gateway.admission.waiting)
        up = GaugeMetricFamily("hfendpoint_worker_up", "Whether the worker takes requests", labels=["worker"])
        restarts = CounterMetricFamily(
            "hfendpoint_worker_restarts", "Restarts of the worker process", labels=["worker"]
        )
        in_flight = GaugeMetricFamily(
            "hfendpoint_worker_calls_in_flight", "Calls sent to the worker and not yet answered", labels=["worker"]
        )
        last_exit = GaugeMetricFamily(
            "hfendpoint_worker_last_exit_info",
            "How the worker process last ended, in words (1 for its last exit)",
            labels=["worker", "reason"],
        )
        for index, worker in enumerate(gateway.workers):
            label = str(index)
            up.add_metric([label], 1.0 if worker.ready else 0.0)
            restarts.add_metric([label], worker.restarts)
            in_flight.add_metric([label], worker.client.pending_count())
            if worker.last_exit:
                last_exit.add_metric([label, worker.last_exit], 1.0)
        yield from (up, restarts, in_flight, last_exit)
        yield _gauge("hfendpoint_image_store_bytes", "Bytes of images kept for their URLs", gateway.store.size)
        yield _gauge("hfendpoint_image_store_images", "Images kept for their URLs", len(gateway.store))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
