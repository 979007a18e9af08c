"""The standard `OTEL_*` environment, read into frozen telemetry settings.

Pure: a mapping in, `TelemetrySettings` out, `TelemetryConfigError` (one
line) for a bad value.  Split from `pullwake.telemetry` so the rules - OTLP
only when asked for, milliseconds as the specification says, bounded span
batching - are testable without building a provider.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from pullwake import __version__

PROTOCOLS: Final = ("grpc", "http/protobuf")
TRACE_EXPORTERS: Final = ("otlp", "console", "none")
METRIC_EXPORTERS: Final = ("otlp", "console", "prometheus", "none")
_DEFAULT_ENDPOINT: Final = {
    "grpc": "http://localhost:4317",
    "http/protobuf": "http://localhost:4318",
}
_HTTP_PATH: Final = {"traces": "/v1/traces", "metrics": "/v1/metrics"}


class TelemetryConfigError(ValueError):
    """A bad `OTEL_*` value: the CLI turns it into a one-line error."""


# --- settings (pure: environment mapping in, frozen settings out) ---------------
@dataclass(frozen=True)
class OtlpTarget:
    """Where and how one signal is pushed."""

    endpoint: str
    protocol: str  # one of PROTOCOLS
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0


@dataclass(frozen=True)
class TelemetrySettings:
    disabled: bool
    resource: Mapping[str, str]
    traces_otlp: OtlpTarget | None
    metrics_otlp: OtlpTarget | None
    traces_console: bool = False
    metrics_console: bool = False
    metric_export_interval_s: float = 60.0
    metric_export_timeout_s: float = 10.0
    span_batch: Mapping[str, int] = field(default_factory=dict)  # BatchSpanProcessor kwargs


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _ms(env: Mapping[str, str], key: str, default_ms: float) -> float:
    """A duration variable in milliseconds (the spec's unit), as seconds."""
    raw = env.get(key, "").strip()
    if not raw:
        return default_ms / 1000.0
    try:
        value = float(raw)
    except ValueError:
        raise TelemetryConfigError(f"{key}={raw!r} is not a number of milliseconds") from None
    if value <= 0:
        raise TelemetryConfigError(f"{key}={raw!r} must be positive (milliseconds)")
    return value / 1000.0


def _kv_list(env: Mapping[str, str], key: str) -> dict[str, str]:
    """`k=v,k2=v2` with URL-encoded values (headers, resource attributes)."""
    out: dict[str, str] = {}
    for item in env.get(key, "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise TelemetryConfigError(f"{key}: {item.strip()!r} is not key=value")
        out[urllib.parse.unquote(name.strip())] = urllib.parse.unquote(value.strip())
    return out


def _exporters(env: Mapping[str, str], key: str, allowed: Sequence[str]) -> set[str] | None:
    raw = env.get(key)
    if raw is None or not raw.strip():
        return None
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    bad = sorted(names - set(allowed))
    if bad:
        raise TelemetryConfigError(f"{key}: unsupported {', '.join(bad)} (use {'|'.join(allowed)})")
    return names - {"none"}


def _otlp_target(env: Mapping[str, str], signal: str) -> OtlpTarget:
    sig = signal.upper()
    protocol = (
        env.get(f"OTEL_EXPORTER_OTLP_{sig}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(
            f"OTLP protocol {protocol!r} is not supported (use {' | '.join(PROTOCOLS)})"
        )
    endpoint = env.get(f"OTEL_EXPORTER_OTLP_{sig}_ENDPOINT", "").strip()
    if not endpoint:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or _DEFAULT_ENDPOINT[protocol]
        # The generic endpoint is a base URL: HTTP appends the signal path, gRPC does not.
        endpoint = base.rstrip("/") + _HTTP_PATH[signal] if protocol != "grpc" else base
    parsed = urllib.parse.urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise TelemetryConfigError(f"OTLP endpoint {endpoint!r} is not an http(s)://host:port URL")
    headers = {
        **_kv_list(env, "OTEL_EXPORTER_OTLP_HEADERS"),
        **_kv_list(env, f"OTEL_EXPORTER_OTLP_{sig}_HEADERS"),
    }
    timeout_key = f"OTEL_EXPORTER_OTLP_{sig}_TIMEOUT"
    if not env.get(timeout_key, "").strip():
        timeout_key = "OTEL_EXPORTER_OTLP_TIMEOUT"
    return OtlpTarget(endpoint, protocol, headers, _ms(env, timeout_key, 10_000))


_BSP: Final = {
    "OTEL_BSP_SCHEDULE_DELAY": ("schedule_delay_millis", 5000),
    "OTEL_BSP_EXPORT_TIMEOUT": ("export_timeout_millis", 30000),
    "OTEL_BSP_MAX_QUEUE_SIZE": ("max_queue_size", 2048),  # bounded memory
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("max_export_batch_size", 512),
}


def _span_batch(env: Mapping[str, str]) -> dict[str, int]:
    """`OTEL_BSP_*` from the same mapping as everything else (tests inject it)."""
    out = {}
    for key, (kwarg, default) in _BSP.items():
        raw = env.get(key, "").strip() or str(default)
        if not raw.isdigit() or int(raw) <= 0:
            raise TelemetryConfigError(f"{key}={raw!r} must be a positive integer")
        out[kwarg] = int(raw)
    if out["max_export_batch_size"] > out["max_queue_size"]:
        out["max_export_batch_size"] = out["max_queue_size"]
    return out


def settings_from_env(
    service_name: str,
    instance_id: str,
    version: str = __version__,
    env: Mapping[str, str] | None = None,
) -> TelemetrySettings:
    """Read the standard OTel variables.  OTLP is on only when asked for.

    `OTEL_{TRACES,METRICS}_EXPORTER` unset means: OTLP if an endpoint
    variable is set, else nothing pushed (the Prometheus endpoint is always
    there unless `OTEL_SDK_DISABLED=true`).  Timeouts and intervals are in
    milliseconds, as the specification says.
    """
    env = os.environ if env is None else env
    resource = {
        "service.name": service_name,
        "service.instance.id": instance_id,
        "service.version": version,
    }
    resource.update(_kv_list(env, "OTEL_RESOURCE_ATTRIBUTES"))
    if env.get("OTEL_SERVICE_NAME", "").strip():
        resource["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return TelemetrySettings(True, resource, None, None)

    def wanted(signal: str, allowed: Sequence[str]) -> set[str]:
        chosen = _exporters(env, f"OTEL_{signal.upper()}_EXPORTER", allowed)
        if chosen is not None:
            return chosen
        endpoint_set = any(
            env.get(k, "").strip()
            for k in (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT",
            )
        )
        return {"otlp"} if endpoint_set else set()

    traces = wanted("traces", TRACE_EXPORTERS)
    metrics = wanted("metrics", METRIC_EXPORTERS)
    if any(k.startswith("OTEL_EXPORTER_OTLP_") and env[k].strip() for k in env):
        # OTLP variables set but OTLP not on: still say when one is wrong (a
        # typo'd protocol must not pass silently, to bite when an endpoint is set)
        for signal in ("traces", "metrics"):
            _otlp_target(env, signal)
    interval = _ms(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000)
    return TelemetrySettings(
        disabled=False,
        resource=resource,
        traces_otlp=_otlp_target(env, "traces") if "otlp" in traces else None,
        metrics_otlp=_otlp_target(env, "metrics") if "otlp" in metrics else None,
        traces_console="console" in traces,
        metrics_console="console" in metrics,
        metric_export_interval_s=interval,
        # An export may never outlive the next one: bound it by the interval.
        metric_export_timeout_s=min(_ms(env, "OTEL_METRIC_EXPORT_TIMEOUT", 10_000), interval),
        span_batch=_span_batch(env),
    )
