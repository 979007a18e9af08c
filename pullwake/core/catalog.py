"""The metric catalog: the one public contract for names, units and labels.

The runner and the server create their instruments from these entries, the
dashboard and alert generators build their queries from `prom_name` and
`prom_label`, and `docs/metrics.md` is generated from here (a test fails when
it is stale).  Nothing else in the project may spell a metric name.

Attribute rules: every runner metric carries `runner.id`; every other
attribute is a small closed enum from `pullwake.protocol`.  Session ids,
offsets and wake ids never become metric attributes (they go on spans).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from pullwake.core import http_semconv as hs
from pullwake.core.protocol import (
    ClaimOutcome,
    CompletionOutcome,
    EndReason,
    HeartbeatErrorType,
    LiveMode,
    RunnerState,
    WakeOutcome,
)


class Kind(enum.StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"  # observable gauge, read from a snapshot at collection time
    UPDOWN = "updown_counter"
    HISTOGRAM = "histogram"


class Component(enum.StrEnum):
    RUNNER = "runner"
    SERVER = "server"


RUNNER_ID: Final = "runner.id"

# Allowed values of every enum attribute.  `runner.id` is free-form but bounded
# by the number of runners.
ATTRIBUTE_VALUES: Final[Mapping[str, tuple[str, ...]]] = {
    "outcome.claim": tuple(o.value for o in ClaimOutcome),
    "outcome.completion": tuple(o.value for o in CompletionOutcome),
    "error.type": tuple(e.value for e in HeartbeatErrorType),
    "live.mode": tuple(m.value for m in LiveMode),
    # Narrower than their enums (see `Metric.budget`):
    # a reconnect never follows a stop; the state gauge covers the running
    # phases only (stopping/stopped are the process's last moments: all 0);
    # `pullwake.wakes` counts each wake's final outcome (received, claimed and
    # deferred are steps on the wake's span).
    "reason.reconnect": tuple(r.value for r in EndReason if r is not EndReason.STOPPED),
    "state.running": tuple(s.value for s in RunnerState if s.value.startswith("running.")),
    "outcome.wake.final": (
        WakeOutcome.SKIPPED.value,
        WakeOutcome.HANDLED.value,
        WakeOutcome.FAILED.value,
        WakeOutcome.FENCED.value,
    ),
    hs.HTTP_REQUEST_METHOD: hs.METHODS,
    hs.URL_SCHEME: ("http", "https"),
}

# Attributes (or value sets) that are not closed enums but bounded by the
# deployment: documented here, and never an id of work (session, wake, offset).
BOUNDED_ATTRIBUTES: Final[Mapping[str, str]] = {
    RUNNER_ID: "the runner's id (bounded by the number of runners)",
    hs.SERVER_ADDRESS: "the host the runner sends to: its server (and a callback host, if"
    " the server names another)",
    hs.SERVER_PORT: "that host's port",
    hs.HTTP_RESPONSE_STATUS_CODE: "the HTTP status code of the answer (absent when none came)",
    hs.HTTP_ROUTE: "the server's route template, never the raw path (absent when no route matched)",
    "error.type.http": "only on errors: the status code (client: >= 400, server: >= 500) or"
    " the exception's class name (`ClientConnectorError`, `TimeoutError`, ...)",
}

_UNIT_SUFFIX: Final = {"s": "seconds", "By": "bytes", "ms": "milliseconds"}


# --- the series budget ----------------------------------------------------------
# Per runner, on each export path, worst case (every label value realised):
# 10,000 runners stay under half a million series.  `target_info` (the
# resource, one series per process on both paths) counts too.
SERIES_BUDGET: Final = 40
TARGET_INFO_SERIES: Final = 1


@dataclass(frozen=True)
class Budget:
    """Most series one runner may put into Prometheus for a metric, per path.

    `scrape`: on `/metrics` (a classic histogram costs one series per bucket
    plus `+Inf`, `_sum` and `_count` per attribute set).  `otlp`: through
    OTLP (histograms are exported base2-exponential: one native histogram
    series per attribute set).
    """

    scrape: int
    otlp: int


def prom_label(attribute: str) -> str:
    """OTel attribute key -> Prometheus label name (`runner.id` -> `runner_id`)."""
    return attribute.replace(".", "_")


@dataclass(frozen=True)
class Metric:
    name: str  # OTel instrument name
    kind: Kind
    unit: str  # UCUM; "" for dimensionless (see below)
    description: str
    component: Component
    attributes: tuple[str, ...] = ()  # keys, `runner.id` first where present
    # For attributes whose key is shared by instruments with different value
    # sets (`outcome`), which ATTRIBUTE_VALUES entry applies.
    value_sets: Mapping[str, str] = field(default_factory=dict)
    buckets: tuple[float, ...] | None = None  # explicit histogram boundaries
    # Attributes present only when they apply (semconv "conditionally required":
    # `http.response.status_code` when an answer came, `error.type` on errors).
    optional: tuple[str, ...] = ()
    # Runner metrics: the most series per runner on each path (test-enforced).
    budget: Budget | None = None
    # Attribute sets kept per runner when they are bounded but not a closed
    # enum (a View's cardinality limit; the rest add up in one overflow point).
    cardinality_limit: int | None = None

    @property
    def prom_name(self) -> str:
        """The name Prometheus shows, on the scrape path and through OTLP.

        Dots become underscores, the unit adds its suffix (`s` -> `_seconds`),
        monotonic counters end in `_total`.  0/1 gauges carry no unit on
        purpose: unit `1` becomes `_ratio` in the collector but not in the
        Python reader, and both paths must agree.
        """
        base = self.name.replace(".", "_")
        suffix = _UNIT_SUFFIX.get(self.unit)
        if suffix and not base.endswith("_" + suffix):
            base = f"{base}_{suffix}"
        if self.kind is Kind.COUNTER:
            base += "_total"
        return base

    @property
    def prom_series(self) -> tuple[str, ...]:
        """Every series name this metric produces in Prometheus.

        A histogram: classic `_bucket`/`_sum`/`_count` (scraped `/metrics`) and
        the bare name, a native histogram (OTLP exponential).
        """
        if self.kind is Kind.HISTOGRAM:
            classic = tuple(f"{self.prom_name}_{s}" for s in ("bucket", "sum", "count"))
            return (*classic, self.prom_name)
        return (self.prom_name,)

    @property
    def prom_labels(self) -> tuple[str, ...]:
        return tuple(prom_label(a) for a in self.attributes)

    def allowed_values(self, attribute: str) -> tuple[str, ...] | None:
        """Closed value set of an attribute, None for a bounded one (`BOUNDED_ATTRIBUTES`)."""
        key = self.value_sets.get(attribute, attribute)
        if key in BOUNDED_ATTRIBUTES:
            return None
        return ATTRIBUTE_VALUES[key]

    @property
    def scraped(self) -> bool:
        """On `/metrics` (an OTLP-only metric is left out of the scrape)."""
        return self.budget is None or self.budget.scrape > 0

    def attribute_sets(self) -> int:
        """Worst-case attribute sets per runner: the product of the value sets,
        or the cardinality limit plus its overflow point."""
        if self.cardinality_limit is not None:
            return self.cardinality_limit + 1
        n = 1
        for a in self.attributes:
            values = self.allowed_values(a)
            if values is None and a != RUNNER_ID:
                raise ValueError(f"{self.name}: {a} is unbounded and there is no limit")
            n *= len(values or (None,))
        return n

    def worst_case(self) -> Budget:
        """Series per runner with every label value realised, on each path."""
        sets = self.attribute_sets()
        per_set = len(self.buckets or ()) + 3 if self.kind is Kind.HISTOGRAM else 1
        return Budget(sets * per_set if self.scraped else 0, sets)


_WAKE_LATENCY_BUCKETS: Final = (0.1, 1.0, 5.0, 10.0)
_REQUEST_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# HTTP request durations (semantic conventions): a few of the conventions'
# advisory boundaries, each series set costs len + 3 series per runner.
_HTTP_BUCKETS: Final = (0.025, 0.1, 0.5, 2.5)

R = Component.RUNNER
S = Component.SERVER

# --- runner --------------------------------------------------------------------
STREAM_CONNECTED = Metric(
    "pullwake.stream.connected",
    Kind.GAUGE,
    "",
    "1 while the runner believes its wake stream is connected, else 0.",
    R,
    (RUNNER_ID,),
    budget=Budget(1, 1),
)
STREAM_AGE = Metric(
    "pullwake.stream.age",
    Kind.GAUGE,
    "s",
    "Seconds since stream_connected_since; 0 when not connected.",
    R,
    (RUNNER_ID,),
    budget=Budget(1, 1),
)
STREAM_IDLE = Metric(
    "pullwake.stream.idle",
    Kind.GAUGE,
    "s",
    "Seconds since the last byte was read from the wake stream.",
    R,
    (RUNNER_ID,),
    budget=Budget(1, 1),
)
STREAM_IDLE_TIMEOUT = Metric(
    "pullwake.stream.idle_timeout",
    Kind.GAUGE,
    "s",
    "The read-idle watchdog's current limit (0 when the watchdog is off).",
    R,
    (RUNNER_ID,),
    budget=Budget(1, 1),
)
STREAM_RECONNECTS = Metric(
    "pullwake.stream.reconnects",
    Kind.COUNTER,
    "",
    "Reconnect attempts, by the reason the previous session ended.",
    R,
    (RUNNER_ID, "reason"),
    value_sets={"reason": "reason.reconnect"},
    budget=Budget(14, 14),
)
HEARTBEAT_FAILURES = Metric(
    "pullwake.heartbeat.failures",
    Kind.COUNTER,
    "",
    "Failed heartbeats, by error type.",
    R,
    (RUNNER_ID, "error.type"),
    budget=Budget(5, 5),
)
HEARTBEAT_CONSECUTIVE_FAILURES = Metric(
    "pullwake.heartbeat.consecutive_failures",
    Kind.GAUGE,
    "",
    "Heartbeats failed in a row; 0 after a success.",
    R,
    (RUNNER_ID,),
    budget=Budget(1, 1),
)
HEARTBEAT_LAST_SUCCESS = Metric(
    "pullwake.heartbeat.last_success.timestamp",
    Kind.GAUGE,
    "s",
    "Unix time of the last successful heartbeat (0 before the first).",
    R,
    (RUNNER_ID,),
    budget=Budget(1, 1),
)
RUNNER_STATE = Metric(
    "pullwake.runner.state",
    Kind.GAUGE,
    "",
    "1 for the runner's current running phase (connecting, streaming, reconnecting), 0 for"
    " the others; all 0 while it stops.",
    R,
    (RUNNER_ID, "state"),
    value_sets={"state": "state.running"},
    budget=Budget(3, 3),
)
WAKES = Metric(
    "pullwake.wakes",
    Kind.COUNTER,
    "",
    "Wakes by final outcome: skipped (the claim found nothing for us), handled, failed"
    " (handler or claim gave up), fenced (the claim was lost: completion refused or lease"
    " heartbeat refused; the server announces the work again).",
    R,
    (RUNNER_ID, "outcome"),
    value_sets={"outcome": "outcome.wake.final"},
    budget=Budget(4, 4),
)
WAKE_LATENCY = Metric(
    "pullwake.wake.latency",
    Kind.HISTOGRAM,
    "s",
    "Time from a wake's publication (its ts) to its handler starting.",
    R,
    (RUNNER_ID,),
    # /metrics: 0.1 / 1 / 5 / 10 s - the alert's 5 s threshold and one bound above
    # it, so p99 > 5 s is exact; OTLP: exponential (full resolution, one series).
    buckets=_WAKE_LATENCY_BUCKETS,
    budget=Budget(7, 1),
)

HTTP_CLIENT_DURATION = Metric(
    hs.HTTP_CLIENT_REQUEST_DURATION,
    Kind.HISTOGRAM,
    "s",
    "Duration of the runner's HTTP requests (OpenTelemetry semantic conventions): stream"
    " GET, tail probe, register, heartbeat, claim, callbacks - up to the response headers,"
    " so a stream counts its connect, not its life.",
    R,
    (
        RUNNER_ID,
        hs.HTTP_REQUEST_METHOD,
        hs.SERVER_ADDRESS,
        hs.SERVER_PORT,
        hs.HTTP_RESPONSE_STATUS_CODE,
        hs.ERROR_TYPE,
    ),
    value_sets={hs.ERROR_TYPE: "error.type.http"},
    buckets=_HTTP_BUCKETS,
    optional=(hs.HTTP_RESPONSE_STATUS_CODE, hs.ERROR_TYPE),
    # OTLP only (a native histogram per attribute set); statuses and error types
    # beyond the first 5 sets of a runner add up in one overflow point.
    budget=Budget(0, 6),
    cardinality_limit=5,
)

# --- server --------------------------------------------------------------------
SERVER_STREAMS_OPEN = Metric(
    "pullwake.server.streams.open",
    Kind.GAUGE,
    "",
    "Live reads of a runner's wake stream open right now, by live mode.",
    S,
    (RUNNER_ID, "live.mode"),
)
SERVER_MESSAGES = Metric(
    "pullwake.server.messages",
    Kind.COUNTER,
    "",
    "Messages appended to entities whose dispatch targets the runner (each one durable;"
    " runner.id empty when the entity targets no runner).",
    S,
    (RUNNER_ID,),
)
SERVER_WAKES_ANNOUNCED = Metric(
    "pullwake.server.wakes.announced",
    Kind.COUNTER,
    "",
    "Wake events appended to the runner's wake stream: one per subscription generation"
    " (new work on an idle subscription, leftovers after done, lease expiry, release).",
    S,
    (RUNNER_ID,),
)
SERVER_SUBSCRIPTIONS_PENDING = Metric(
    "pullwake.server.subscriptions.pending",
    Kind.GAUGE,
    "",
    "The runner's entity subscriptions with un-acknowledged messages (waiting or claimed).",
    S,
    (RUNNER_ID,),
)
SERVER_CLAIMS_ACTIVE = Metric(
    "pullwake.server.claims.active",
    Kind.GAUGE,
    "",
    "Claims listed as active in the runner's health (as upstream, a claim whose lease"
    " expired stays listed: a growing value means claims that are never completed).",
    S,
    (RUNNER_ID,),
)
SERVER_HEARTBEATS = Metric(
    "pullwake.server.heartbeats",
    Kind.COUNTER,
    "",
    "Heartbeats received and accepted.",
    S,
    (RUNNER_ID,),
)
SERVER_CLAIMS = Metric(
    "pullwake.server.claims",
    Kind.COUNTER,
    "",
    "Claim answers, by outcome: claimed, done (entity paused/stopped), already_claimed,"
    " no_pending_work, unknown (204), not_running.",
    S,
    (RUNNER_ID, "outcome"),
    value_sets={"outcome": "outcome.claim"},
)
SERVER_COMPLETIONS = Metric(
    "pullwake.server.completions",
    Kind.COUNTER,
    "",
    "Acks on wake callbacks, by outcome: done (claim completed), extended (lease heartbeat"
    " or partial ack), fenced (stale generation: lease expired or already done), rejected"
    " (bad token, offset or subscription).",
    S,
    (RUNNER_ID, "outcome"),
    value_sets={"outcome": "outcome.completion"},
)
SERVER_LEASE_EXPIRIES = Metric(
    "pullwake.server.claim.lease_expiries",
    Kind.COUNTER,
    "",
    "Claims whose lease ran out without a done (the work is announced again as a new generation).",
    S,
    (RUNNER_ID,),
)
SERVER_LEASE_REMAINING = Metric(
    "pullwake.server.lease.remaining",
    Kind.GAUGE,
    "s",
    "Seconds left on the runner's liveness lease (negative once expired).",
    S,
    (RUNNER_ID,),
)
SERVER_STREAM_MISMATCH = Metric(
    "pullwake.server.stream.mismatch",
    Kind.GAUGE,
    "",
    "1 when the runner's last diagnostics say stream_connected but the server has no "
    "open read of its wake stream (the seed bug, seen from the server).",
    S,
    (RUNNER_ID,),
)
HTTP_SERVER_DURATION = Metric(
    hs.HTTP_SERVER_REQUEST_DURATION,
    Kind.HISTOGRAM,
    "s",
    "Duration of served HTTP requests (OpenTelemetry semantic conventions), by route"
    " template; live reads (`?live=`) are not timed here (their life is the stream's).",
    S,
    (
        hs.HTTP_REQUEST_METHOD,
        hs.URL_SCHEME,
        hs.HTTP_ROUTE,
        hs.HTTP_RESPONSE_STATUS_CODE,
        hs.ERROR_TYPE,
    ),
    value_sets={hs.ERROR_TYPE: "error.type.http"},
    buckets=_REQUEST_BUCKETS,
    optional=(hs.HTTP_ROUTE, hs.ERROR_TYPE),
)

# Span names: the trace half of the contract.  The runner names its spans from
# these, the dashboards query them (Tempo links), docs/metrics.md lists them.
SPAN_SESSION: Final = "pullwake.stream.session"
SPAN_CONNECT: Final = "pullwake.stream.connect"  # a session that never got a response
SPAN_HEARTBEAT: Final = "pullwake.heartbeat"
SPAN_WAKE: Final = "pullwake.wake"  # children: pullwake.wake.claim / .handle / .complete

CATALOG: Final[tuple[Metric, ...]] = tuple(
    v for v in dict(globals()).values() if isinstance(v, Metric)
)


def by_name(name: str) -> Metric:
    for m in CATALOG:
        if m.name == name:
            return m
    raise KeyError(name)


def for_component(component: Component) -> Iterator[Metric]:
    return (m for m in CATALOG if m.component is component)


__all__ = [
    "ATTRIBUTE_VALUES",
    "BOUNDED_ATTRIBUTES",
    "CATALOG",
    "RUNNER_ID",
    "SPAN_CONNECT",
    "SPAN_HEARTBEAT",
    "SPAN_SESSION",
    "SPAN_WAKE",
    "Component",
    "Kind",
    "Metric",
    "by_name",
    "for_component",
    "prom_label",
]
