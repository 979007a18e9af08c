"""Instruments of one component, created once from the catalog, and how they export.

Split from `pullwake.telemetry` (the providers): this is what the runner's
and the server's observers write to.  Every measurement's attributes are
checked against the catalog - no unlisted label, so no unbounded series.

The series budget (`Metric.budget`) is applied here too, in the SDK's own
terms: a View caps what has a cardinality limit, observable values outside
a metric's exported value set are left out, the `/metrics` reader leaves
out OTLP-only metrics, and OTLP exports histograms base2-exponential (one
native histogram series each) unless
`OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION` says otherwise.
Histogram buckets are the instruments' advisory boundaries (`/metrics`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

from opentelemetry import metrics as metrics_api
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    DefaultAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)

from pullwake.core.catalog import CATALOG, RUNNER_ID, Component, Kind, Metric

# under "pullwake.core.telemetry": the SDK log rate limit covers it too
log = logging.getLogger("pullwake.core.telemetry.instruments")

GaugeCallback = Callable[[], Iterable[tuple[float, Mapping[str, str]]]]


class Instruments:
    """Every instrument of one component, created once from the catalog.

    Gauges are observable: each needs a callback returning
    `(value, attributes)` pairs, read at collection time.  `add`/`record`
    check attributes against the catalog so no unlisted label sneaks in.

    `counted` names counters whose totals the caller keeps itself (a dict
    increment instead of an SDK measurement through every reader, for
    counters bumped several times per wake): they become observable counters
    with the given callback returning the running totals.  Same name, kind
    and attributes on both export paths.
    """

    def __init__(
        self,
        meter: metrics_api.Meter,
        component: Component,
        gauges: Mapping[str, GaugeCallback],
        counted: Mapping[str, GaugeCallback] | None = None,
    ) -> None:
        counted = counted or {}
        self._sync: dict[str, Any] = {}
        self._observable: dict[str, Any] = {}
        missing = [
            m.name
            for m in CATALOG
            if m.component is component and m.kind is Kind.GAUGE and m.name not in gauges
        ]
        if missing:
            raise ValueError(f"no gauge callback for {', '.join(missing)}")
        for m in CATALOG:
            if m.component is not component:
                continue
            if m.kind is Kind.COUNTER and m.name in counted:
                self._observable[m.name] = meter.create_observable_counter(
                    m.name, [_gauge_adapter(m, counted[m.name])], m.unit, m.description
                )
            elif m.kind is Kind.COUNTER:
                self._sync[m.name] = meter.create_counter(m.name, m.unit, m.description)
            elif m.kind is Kind.UPDOWN:
                self._sync[m.name] = meter.create_up_down_counter(m.name, m.unit, m.description)
            elif m.kind is Kind.HISTOGRAM:
                self._sync[m.name] = meter.create_histogram(
                    m.name, m.unit, m.description, explicit_bucket_boundaries_advisory=m.buckets
                )
            else:
                self._observable[m.name] = meter.create_observable_gauge(
                    m.name, [_gauge_adapter(m, gauges[m.name])], m.unit, m.description
                )

    def check(self, m: Metric, attributes: Mapping[str, str]) -> None:
        """Raise ValueError unless `attributes` are the catalog's for `m` (its `optional`
        ones may be absent: semconv's conditionally required attributes)."""
        if tuple(attributes) == m.attributes:
            return
        keys = set(attributes)
        if not (set(m.attributes) - set(m.optional) <= keys <= set(m.attributes)):
            raise ValueError(f"{m.name}: attributes {sorted(attributes)} != {list(m.attributes)}")

    def checked(self, m: Metric, attributes: Mapping[str, str]) -> Any:
        """The SDK instrument for `m` once `attributes` passed the catalog check.

        For hot paths that bind (instrument, attributes) once and then call
        `add`/`record` on the instrument directly.
        """
        self.check(m, attributes)
        return self._sync[m.name]

    def add(
        self,
        m: Metric,
        amount: float,
        attributes: Mapping[str, str],
        context: Context | None = None,
    ) -> None:
        self.check(m, attributes)
        self._sync[m.name].add(amount, attributes, context=context)

    def record(
        self, m: Metric, value: float, attributes: Mapping[str, str], context: Context | None = None
    ) -> None:
        self.check(m, attributes)
        self._sync[m.name].record(value, attributes, context=context)


def _exported_values(m: Metric) -> dict[str, frozenset[str]]:
    """Closed value sets of `m`'s attributes (not `runner.id` or bounded ones)."""
    out: dict[str, frozenset[str]] = {}
    for a in m.attributes:
        values = None if a == RUNNER_ID else m.allowed_values(a)
        if values is not None:
            out[a] = frozenset(values)
    return out


def _gauge_adapter(
    m: Metric, cb: GaugeCallback
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    sets = _exported_values(m)

    def exported(a: Mapping[str, str]) -> bool:
        return all(a.get(k) in values for k, values in sets.items())

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        try:
            # values outside the exported set (a runner state while it stops, a
            # wake's intermediate step) are left out: the budget counts on it
            return [Observation(v, dict(a)) for v, a in cb() if exported(a)]
        except Exception:  # a broken snapshot must not break the other gauges
            log.warning("gauge %s callback failed", m.name, exc_info=True)
            return []

    return observe


S = TypeVar("S")


class CachedSnapshot(Generic[S]):
    """One snapshot per metric collection, shared by all of its gauges.

    A collection calls every gauge callback in a row (on a reader's thread or
    in the `/metrics` handler); each reading the service's snapshot afresh
    would take it once per gauge.  `ttl_s` is shorter than any export interval.
    """

    def __init__(self, source: Callable[[], S] | None, ttl_s: float = 0.2) -> None:
        self.source = source
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, S] | None = None

    def get(self) -> S | None:
        """The snapshot, or None while there is no source yet."""
        if self.source is None:
            return None
        now = time.monotonic()
        with self._lock:
            if self._cached is None or now - self._cached[0] > self._ttl_s:
                self._cached = (now, self.source())
            return self._cached[1]


# --- export: the series budget in the SDK's terms -------------------------------
HISTOGRAM_AGGREGATION_ENV: Final = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"


def catalog_views(component: Component | None = None) -> list[View]:
    """Views that apply the catalog's budgets (every reader sees them).

    A metric with a cardinality limit keeps that many attribute sets per
    runner (then one overflow point).  Buckets
    are not set here: `/metrics` uses the instruments' advisory boundaries
    and OTLP its preferred aggregation (`otlp_preferred_aggregation`).
    """
    views: list[View] = []
    for m in CATALOG:
        if component is not None and m.component is not component:
            continue
        if m.cardinality_limit is not None:
            views.append(
                View(
                    instrument_name=m.name,
                    aggregation=DefaultAggregation(),
                    aggregation_cardinality_limit=m.cardinality_limit,
                )
            )
    return views


def otlp_preferred_aggregation(
    env: Mapping[str, str] | None = None,
) -> dict[type, Aggregation] | None:
    """Exponential histograms over OTLP unless the standard variable chooses.

    None when `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION` is set:
    the exporter reads it itself (`explicit_bucket_histogram` then exports the
    advisory buckets, as `/metrics` does).
    """
    if (os.environ if env is None else env).get(HISTOGRAM_AGGREGATION_ENV):
        return None
    return {Histogram: ExponentialBucketHistogramAggregation()}


SCRAPED: Final = frozenset(m.name for m in CATALOG if m.scraped)


def scrape_only(data: MetricsData) -> MetricsData:
    """`data` without the metrics `/metrics` leaves out (OTLP-only by budget)."""
    return dataclasses.replace(
        data,
        resource_metrics=[
            dataclasses.replace(
                rm,
                scope_metrics=[
                    dataclasses.replace(sm, metrics=[x for x in sm.metrics if x.name in SCRAPED])
                    for sm in rm.scope_metrics
                ],
            )
            for rm in data.resource_metrics
        ],
    )


def scrape_reader(registry: Any) -> Any:
    """The `/metrics` reader: a `PrometheusMetricReader` that keeps `SCRAPED` only."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    class ScrapeReader(PrometheusMetricReader):
        def _receive_metrics(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> None:
            if metrics_data is not None:
                metrics_data = scrape_only(metrics_data)
            super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    return ScrapeReader(registry=registry)
