"""Instruments of one component, created once from the catalog.

Split from `pullwake.telemetry` (the providers): this is what the runner's
and the server's observers write to.  Every measurement's attributes are
checked against the catalog - no unlisted label, so no unbounded series.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from opentelemetry import metrics as metrics_api
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation

from pullwake.core.catalog import CATALOG, Component, Kind, Metric

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


def _gauge_adapter(
    m: Metric, cb: GaugeCallback
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(v, dict(a)) for v, a in cb()]
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
