"""The series budget: at most 40 series per runner, on `/metrics` and through OTLP.

Static: each runner metric's worst case (every value of every label) fits its
budget in the catalog, and the budgets plus `target_info` add up to at most
`SERIES_BUDGET`.  In process: the real providers - the `/metrics` reader and
an in-memory reader with the OTLP exporter's preferred aggregation - with every
label value of every runner metric recorded, more than a runner produces
(the states it leaves out while stopping, a wake's intermediate steps, twenty
HTTP statuses), still stay within each metric's budget on both paths.  The real
runner through real faults: tests/runner/test_series_budget_faults.py.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

import pytest
from opentelemetry.sdk.metrics.export import (
    ExponentialHistogram,
    HistogramDataPoint,
    InMemoryMetricReader,
)

from pullwake.core import catalog as c
from pullwake.core.catalog import CATALOG, RUNNER_ID, Component, Kind, Metric
from pullwake.core.instruments import (
    HISTOGRAM_AGGREGATION_ENV,
    Instruments,
    otlp_preferred_aggregation,
)
from pullwake.core.protocol import RunnerState, WakeOutcome
from pullwake.core.telemetry import SERVICE_RUNNER, build_telemetry
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.series import report_table, scrape_counts
from tests.support.waits import wait_until

RUNNER = [m for m in CATALOG if m.component is Component.RUNNER]
# What the runner's observable callbacks really report: every state, every wake step.
OBSERVED_FULL = {
    (c.RUNNER_STATE.name, "state"): tuple(s.value for s in RunnerState),
    (c.WAKES.name, "outcome"): tuple(o.value for o in WakeOutcome),
}
HTTP_STATUSES = (200, 201, 204, 400, 404, 409, 410, 429, 500, 502, 503, 504)


def test_every_runner_metric_has_a_budget_that_covers_its_worst_case() -> None:
    for m in RUNNER:
        assert m.budget is not None, m.name
        worst = m.worst_case()
        assert worst == m.budget, (m.name, worst, "budget not tight: say why or tighten")


def test_budgets_add_up_to_at_most_40_per_runner_on_each_path() -> None:
    scrape = sum(m.budget.scrape for m in RUNNER if m.budget) + c.TARGET_INFO_SERIES
    otlp = sum(m.budget.otlp for m in RUNNER if m.budget) + c.TARGET_INFO_SERIES
    assert c.SERIES_BUDGET == 40
    assert scrape <= c.SERIES_BUDGET and otlp <= c.SERIES_BUDGET, (scrape, otlp)


def test_unbounded_attributes_need_a_cardinality_limit() -> None:
    for m in RUNNER:
        free = [a for a in m.attributes[1:] if m.allowed_values(a) is None]
        assert not free or m.cardinality_limit is not None, (m.name, free)


def _values(m: Metric, attribute: str, observed: bool) -> tuple[str, ...]:
    if observed and (m.name, attribute) in OBSERVED_FULL:
        return OBSERVED_FULL[(m.name, attribute)]
    return m.allowed_values(attribute) or ()


def every_label_set(m: Metric, *, observed: bool = False) -> Iterable[dict[str, str]]:
    """Every combination of the metric's closed label values (runner id r1)."""
    keys = [a for a in m.attributes if a != RUNNER_ID]
    for combo in itertools.product(*(_values(m, a, observed) for a in keys)):
        yield {RUNNER_ID: "r1", **dict(zip(keys, combo, strict=True))}


def _http_label_sets() -> Iterable[dict[str, str]]:
    m = c.HTTP_CLIENT_DURATION
    base = {RUNNER_ID: "r1", "server.address": "127.0.0.1", "server.port": "4437"}
    for method, status in itertools.product(("GET", "POST", "HEAD"), HTTP_STATUSES):
        attrs = {**base, "http.request.method": method, "http.response.status_code": str(status)}
        if status >= 400:
            attrs["error.type"] = str(status)
        assert set(attrs) <= set(m.attributes)
        yield attrs
    for error in ("ClientConnectorError", "TimeoutError", "ServerDisconnectedError"):
        yield {**base, "http.request.method": "POST", "error.type": error}


def _callbacks(observed: bool) -> dict[str, object]:
    return {
        m.name: (lambda m=m: [(1.0, a) for a in every_label_set(m, observed=observed)])
        for m in RUNNER
        if m.kind is Kind.GAUGE
    }


def _otlp_counts(reader: InMemoryMetricReader) -> tuple[Counter[str], set[str]]:
    """Data points per metric (one series each in Prometheus), exponential histograms."""
    data = reader.get_metrics_data()
    assert data is not None
    points: Counter[str] = Counter()
    exponential = set()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points[metric.name] += len(metric.data.data_points)
                if isinstance(metric.data, ExponentialHistogram):
                    exponential.add(metric.name)
                assert not any(
                    isinstance(p, HistogramDataPoint) for p in metric.data.data_points
                ), (metric.name, "explicit buckets over OTLP")
    return points, exponential


@pytest.mark.parametrize("observed", [False, True], ids=["exported-values", "runner-observes-all"])
def test_every_label_value_realised_stays_within_budget(observed: bool) -> None:
    otlp_reader = InMemoryMetricReader(preferred_aggregation=otlp_preferred_aggregation({}))
    t = build_telemetry(SERVICE_RUNNER, "r1", env={}, metric_readers=[otlp_reader])
    try:
        wakes = c.WAKES
        counted = {wakes.name: lambda: [(3.0, a) for a in every_label_set(wakes, observed=True)]}
        ins = Instruments(t.meter(), Component.RUNNER, _callbacks(observed), counted)  # type: ignore[arg-type]
        for m in RUNNER:
            if m.kind is Kind.GAUGE or m.name in counted:
                continue
            sets = list(_http_label_sets() if m is c.HTTP_CLIENT_DURATION else every_label_set(m))
            for attrs in sets:
                for value in (0.004, 0.3, 2.0, 7.0, 40.0):  # every bucket, both sides
                    if m.kind is Kind.HISTOGRAM:
                        ins.record(m, value, attrs)
                    else:
                        ins.add(m, 1, attrs)
        scrape = scrape_counts(t.prometheus_text().decode())
        otlp, exponential = _otlp_counts(otlp_reader)
    finally:
        t.shutdown(5)
    report = report_table(scrape, otlp)
    print(report)  # the table, for the record (pytest -s)
    for m in RUNNER:
        b = m.budget
        assert b is not None
        assert scrape.get(m.name, 0) <= b.scrape, report
        assert otlp.get(m.name, 0) <= b.otlp, report
        if m.kind is Kind.HISTOGRAM and b.otlp:
            assert m.name in exponential, m.name
    assert scrape["target_info"] == c.TARGET_INFO_SERIES
    assert sum(scrape.values()) <= c.SERIES_BUDGET, report
    assert sum(otlp.values()) + c.TARGET_INFO_SERIES <= 40, report
    # the worst case is reached: the budget is what a runner can really cost
    assert sum(scrape.values()) == 40 and sum(otlp.values()) + 1 == 40, report


@pytest.mark.parametrize(
    ("choice", "kind"),
    [(None, "exponential_histogram"), ("explicit_bucket_histogram", "histogram")],
    ids=["default-exponential", "env-explicit"],
)
def test_otlp_histograms_are_exponential_unless_the_variable_says(
    choice: str | None, kind: str
) -> None:
    """Over real OTLP/gRPC: exponential by default (one native series in Prometheus);
    `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION` still decides when set
    (explicit: the catalog's advisory buckets, as on /metrics)."""
    with OtlpReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "100",
        }
        if choice is not None:
            env["OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"] = choice
        t = build_telemetry(SERVICE_RUNNER, "r1", env=env)
        try:
            ins = Instruments(t.meter(), Component.RUNNER, _callbacks(False))  # type: ignore[arg-type]
            ins.record(c.WAKE_LATENCY, 0.3, {RUNNER_ID: "r1"})
            wait_until(lambda: c.WAKE_LATENCY.name in rx.metric_names(), 10, what="export")
            metric = rx.metric(c.WAKE_LATENCY.name)
        finally:
            t.shutdown(5)
    assert metric.WhichOneof("data") == kind
    if kind == "histogram":
        assert tuple(metric.histogram.data_points[0].explicit_bounds) == c.WAKE_LATENCY.buckets
    assert otlp_preferred_aggregation({}) is not None
    assert (
        otlp_preferred_aggregation({HISTOGRAM_AGGREGATION_ENV: "explicit_bucket_histogram"}) is None
    )
