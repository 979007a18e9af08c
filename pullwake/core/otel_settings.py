"""pullwake's own rules on top of the standard `OTEL_*` environment.

The OpenTelemetry SDK reads the standard variables itself: endpoints (the
gRPC `host:port` form included), headers, timeouts, TLS, compression,
`OTEL_BSP_*` / `OTEL_BLRP_*`, the metric export interval, the sampler and
the resource (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`).  This module
only decides what the SDK cannot:

- which exporters exist: OTLP only when an endpoint variable is set or
  `OTEL_{TRACES,METRICS,LOGS}_EXPORTER` names `otlp` (logs: only when named:
  most deployments already ship stdout), so the embedded default never
  retries against a collector that is not there;
- which exporter class a protocol means (`grpc` or `http/protobuf`; the
  Python SDK has no `http/json`);
- a one-line `TelemetryConfigError` for a value the SDK would only warn
  about and replace by its default (an unknown exporter or protocol, a
  duration that is not a number).

`otel_environment(env)` lets tests hand the SDK a mapping of their own.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from pullwake import __version__

PROTOCOLS: Final = ("grpc", "http/protobuf")
EXPORTERS: Final = ("otlp", "console", "none")
SIGNALS: Final = ("traces", "metrics", "logs")
# Signals that push over OTLP as soon as an endpoint is configured (logs need
# OTEL_LOGS_EXPORTER=otlp: they duplicate stdout, which is often shipped already).
_ON_BY_ENDPOINT: Final = ("traces", "metrics")
# Numbers the SDK would silently replace by a default when malformed.
_NUMBERS: Final = (
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BLRP_SCHEDULE_DELAY",
    "OTEL_BLRP_EXPORT_TIMEOUT",
    "OTEL_BLRP_MAX_QUEUE_SIZE",
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
)
_METRICS_PROMETHEUS_HINT: Final = (
    "OTEL_METRICS_EXPORTER: prometheus is not an exporter here - pullwake always serves"
    " Prometheus text on /metrics (runner: --status-listen); use otlp, console or none"
)


class TelemetryConfigError(ValueError):
    """A bad `OTEL_*` value: the CLI turns it into a one-line error."""


@dataclass(frozen=True)
class TelemetrySettings:
    """What pullwake decided; every other detail is the SDK's to read."""

    disabled: bool
    resource: Resource
    otlp: Mapping[str, str] = field(default_factory=dict)  # signal -> protocol
    console: frozenset[str] = frozenset()  # signals with a console exporter

    @property
    def traces_otlp(self) -> str | None:
        return self.otlp.get("traces")

    @property
    def metrics_otlp(self) -> str | None:
        return self.otlp.get("metrics")

    @property
    def logs_otlp(self) -> str | None:
        return self.otlp.get("logs")


# --- the environment the SDK reads ------------------------------------------------
_ENV_LOCK: Final = threading.RLock()


@contextmanager
def otel_environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """While inside, the process's `OTEL_*` variables are exactly those of `env`.

    The SDK reads its variables when an exporter, processor, reader or
    resource is constructed, so building inside this block hands it `env`.
    `None` leaves the process environment alone (what the CLI does).
    """
    if env is None:
        yield
        return
    with _ENV_LOCK:
        saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
        try:
            for k in saved:
                del os.environ[k]
            os.environ.update({k: v for k, v in env.items() if k.startswith("OTEL_")})
            yield
        finally:
            for k in [k for k in os.environ if k.startswith("OTEL_")]:
                del os.environ[k]
            os.environ.update(saved)


# --- pullwake's rules -------------------------------------------------------------
def _get(key: str) -> str:
    return os.environ.get(key, "").strip()


def _exporters(signal: str) -> set[str] | None:
    """`OTEL_<SIGNAL>_EXPORTER` as a set of names; None when unset."""
    key = f"OTEL_{signal.upper()}_EXPORTER"
    raw = _get(key)
    if not raw:
        return None
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    if signal == "metrics" and "prometheus" in names:
        raise TelemetryConfigError(_METRICS_PROMETHEUS_HINT)
    bad = sorted(names - set(EXPORTERS))
    if bad:
        raise TelemetryConfigError(
            f"{key}: unsupported {', '.join(bad)} (use {'|'.join(EXPORTERS)})"
        )
    return names - {"none"}


def _protocol(signal: str) -> str:
    sig = signal.upper()
    key = f"OTEL_EXPORTER_OTLP_{sig}_PROTOCOL"
    if not _get(key):
        key = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = _get(key) or "grpc"  # the Python SDK's (and distro's) default
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(
            f"{key}={protocol!r} is not supported (use {' | '.join(PROTOCOLS)})"
        )
    return protocol


def _check_http_endpoint(signal: str) -> None:
    """HTTP exporters need a URL; only gRPC takes the bare `host:port` form."""
    for key in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = _get(key)
        if value:
            if not value.startswith(("http://", "https://")):
                raise TelemetryConfigError(
                    f"{key}={value!r}: http/protobuf needs an http(s):// URL"
                    " (only grpc takes host:port)"
                )
            return


def _check_numbers() -> None:
    for key in _NUMBERS:
        raw = _get(key)
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise TelemetryConfigError(f"{key}={raw!r} is not a number") from None
        if not value > 0:
            raise TelemetryConfigError(f"{key}={raw!r} must be positive")


def _endpoint_set(signal: str) -> bool:
    return bool(
        _get("OTEL_EXPORTER_OTLP_ENDPOINT") or _get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def service_resource(defaults: Mapping[str, str]) -> Resource:
    """`defaults` under the SDK's resource: `OTEL_RESOURCE_ATTRIBUTES` and
    `OTEL_SERVICE_NAME` win over them (the SDK's `Resource.create` alone
    would let explicit attributes win over the environment)."""
    return Resource.create(dict(defaults)).merge(OTELResourceDetector().detect())


def settings_from_env(
    service_name: str,
    instance_id: str | None = None,
    version: str = __version__,
    env: Mapping[str, str] | None = None,
) -> TelemetrySettings:
    """pullwake's decisions from the `OTEL_*` environment (`env`, else the process's).

    `instance_id` None: a fresh uuid4 (the convention for a process without
    a stable identity of its own, like the server; the runner passes its
    runner id).  `OTEL_RESOURCE_ATTRIBUTES=service.instance.id=...` wins.
    """
    defaults = {
        "service.name": service_name,
        "service.instance.id": instance_id or str(uuid.uuid4()),
        "service.version": version,
    }
    with otel_environment(env):
        resource = service_resource(defaults)
        if _get("OTEL_SDK_DISABLED").lower() == "true":
            return TelemetrySettings(True, resource)
        _check_numbers()
        otlp: dict[str, str] = {}
        console: set[str] = set()
        for signal in SIGNALS:
            chosen = _exporters(signal)
            if chosen is None:
                on = signal in _ON_BY_ENDPOINT and _endpoint_set(signal)
                chosen = {"otlp"} if on else set()
            # A typo'd protocol must not pass silently, to bite once OTLP is on.
            protocol = _protocol(signal)
            if "otlp" in chosen:
                if protocol == "http/protobuf":
                    _check_http_endpoint(signal)
                otlp[signal] = protocol
            if "console" in chosen:
                console.add(signal)
        return TelemetrySettings(False, resource, otlp, frozenset(console))
