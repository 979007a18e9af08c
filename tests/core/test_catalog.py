"""The metric catalog is the public contract: pin the names the issue promised."""

import pytest

from pullwake.core import catalog
from pullwake.core.catalog import (
    ATTRIBUTE_VALUES,
    BOUNDED_ATTRIBUTES,
    CATALOG,
    RUNNER_ID,
    Component,
    Kind,
)

PROMISED = {
    "pullwake.stream.connected": "pullwake_stream_connected",
    "pullwake.stream.age": "pullwake_stream_age_seconds",
    "pullwake.stream.idle": "pullwake_stream_idle_seconds",
    "pullwake.stream.reconnects": "pullwake_stream_reconnects_total",
    "pullwake.heartbeat.failures": "pullwake_heartbeat_failures_total",
    "pullwake.heartbeat.consecutive_failures": "pullwake_heartbeat_consecutive_failures",
    "pullwake.heartbeat.last_success.timestamp": (
        "pullwake_heartbeat_last_success_timestamp_seconds"
    ),
    "pullwake.runner.state": "pullwake_runner_state",
    "pullwake.wakes": "pullwake_wakes_total",
    "pullwake.wake.latency": "pullwake_wake_latency_seconds",
}


@pytest.mark.parametrize(("otel", "prom"), sorted(PROMISED.items()))
def test_promised_names(otel: str, prom: str) -> None:
    assert catalog.by_name(otel).prom_name == prom


def test_names_unique() -> None:
    assert len({m.name for m in CATALOG}) == len(CATALOG)
    assert len({m.prom_name for m in CATALOG}) == len(CATALOG)


def test_every_runner_metric_carries_runner_id_and_closed_enums() -> None:
    """Closed enums, or a value set documented as bounded (`BOUNDED_ATTRIBUTES`)."""
    for m in CATALOG:
        if m.component is Component.RUNNER:
            assert m.attributes[0] == RUNNER_ID, m.name
        for attr in m.attributes[1:]:
            values = m.allowed_values(attr)
            bounded = m.value_sets.get(attr, attr) in BOUNDED_ATTRIBUTES
            assert values or bounded, (m.name, attr)
        assert set(m.optional) <= set(m.attributes), m.name


def test_no_high_cardinality_attributes() -> None:
    forbidden = {"session", "session.id", "offset", "wake.id", "wake_id"}
    for m in CATALOG:
        assert not forbidden & set(m.attributes), m.name


def test_zero_one_gauges_have_no_unit() -> None:
    # unit "1" would become _ratio through the collector but not the Python reader
    for m in CATALOG:
        assert m.unit != "1", m.name
        if m.kind is Kind.HISTOGRAM:
            assert m.buckets, m.name


def test_every_value_set_is_some_metrics() -> None:
    """No value set outlives the metrics that used it (docs/metrics.md lists them all)."""
    used = {m.value_sets.get(a, a) for m in CATALOG for a in m.attributes}
    assert set(ATTRIBUTE_VALUES) <= used


def test_recorded_means_exported() -> None:
    """Every runner metric counts in the series budget: nothing is recorded only to be
    dropped (what a span or `http.client.request.duration` says has no metric of its own)."""
    for m in CATALOG:
        if m.budget is not None:
            assert m.budget.scrape or m.budget.otlp, m.name
