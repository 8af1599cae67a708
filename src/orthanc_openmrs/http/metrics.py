"""The Prometheus registry of `run`: the monitor's counters and histograms, and gauges read
from the ledger at scrape time (counts that drift cannot be wrong when they are not kept).

Every label has a handful of values (a state, an outcome, a server, a status class): no UID,
patient or URL becomes a label.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client import Info, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orthanc_openmrs.errors import StoreError
from orthanc_openmrs.models import NEEDS_A_PERSON
from orthanc_openmrs.monitor import Monitor
from orthanc_openmrs.store import Store

__all__ = ["CONTENT_TYPE", "LedgerReader", "Metrics"]

# The classic text format, which `generate_latest` writes and every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_T = TypeVar("_T")


class LedgerReader:
    """A read-only connection of its own to the ledger the loop writes (WAL lets both work at
    once), shared by the HTTP threads one at a time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()

    def read(self, query: Callable[[Store], _T]) -> _T:
        with self._lock:
            return query(self._store)

    def check(self) -> str:
        try:
            self.read(lambda store: store.cursor())
        except StoreError:
            return "the ledger cannot be read"
        return "ok"

    def close(self) -> None:
        self._store.close()


class _LedgerCollector(Collector):
    def __init__(self, ledger: LedgerReader, monitor: Monitor, clock: Callable[[], float]) -> None:
        self._ledger = ledger
        self._monitor = monitor
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        try:
            counts, due, cursor = self._ledger.read(
                lambda store: (store.counts(), store.count_due(now), store.cursor())
            )
        except StoreError:
            return  # /ready says the ledger cannot be read; no gauge is better than a wrong one
        studies = GaugeMetricFamily(
            "orthanc_openmrs_studies", "Studies in the ledger, by state", labels=["state"]
        )
        person = GaugeMetricFamily(
            "orthanc_openmrs_studies_needing_a_person",
            "Unmatched, ambiguous and failed studies (orthanc-openmrs review lists them)",
            labels=["state"],
        )
        for state, count in counts.items():
            studies.add_metric([state.value], count)
            if state in NEEDS_A_PERSON:
                person.add_metric([state.value], count)
        yield studies
        yield person
        yield GaugeMetricFamily(
            "orthanc_openmrs_backlog_studies", "Studies due for an attempt now", value=due
        )
        last_change = self._monitor.orthanc_last_change
        if last_change is not None and cursor is not None:
            yield GaugeMetricFamily(
                "orthanc_openmrs_changes_lag",
                "Orthanc's newest change seen minus the ledger's cursor, in changes",
                value=max(last_change - cursor, 0),
            )
        if self._monitor.last_pass is not None:
            yield GaugeMetricFamily(
                "orthanc_openmrs_last_successful_pass_timestamp_seconds",
                "When the last complete pass ended, in Unix time",
                value=self._monitor.last_pass,
            )


class Metrics:
    """Everything /metrics shows, rendered in Prometheus's text format."""

    def __init__(
        self, monitor: Monitor, ledger: LedgerReader, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = monitor.registry
        self.registry.register(_LedgerCollector(ledger, monitor, clock))
        ProcessCollector(namespace="", registry=self.registry)
        Info(
            "orthanc_openmrs_build", "Version of the service and its Python", registry=self.registry
        ).info({"version": monitor.version, "python": platform.python_version()})

    def render(self) -> bytes:
        return generate_latest(self.registry)
