"""otel-collector/config.yaml names only components of the pinned collector-contrib.

No collector binary can be installed here, so the config is checked against
otel-collector/components-<version>.yaml, the component list of that release
(its sources are in the file's header), and for the pipeline shape the
issue asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pullwake.tools import stackoptional as opt
from pullwake.tools import stackplan as sp
from tests.tools.repo import COLLECTOR, ROOT, load, services

SECTIONS = ("receivers", "processors", "exporters", "extensions", "connectors")


def components_file() -> Path:
    image = services()["otel-collector"]["image"]
    assert image.startswith("otel/opentelemetry-collector-contrib:")
    version = image.rpartition(":")[2]
    path = ROOT / "otel-collector" / f"components-{version}.yaml"
    assert path.exists(), f"no component list for the pinned collector {version}"
    return path


def known() -> dict[str, dict[str, str]]:
    """section -> {type: "current" | "deprecated"}."""
    data = load(components_file())
    out: dict[str, dict[str, str]] = {}
    for section in SECTIONS:
        types: dict[str, str] = {}
        for entry in data[section]:
            types[entry["type"]] = "current"
            if "deprecated_type" in entry:
                types[entry["deprecated_type"]] = "deprecated"
        out[section] = types
    return out


def unknown_components(config: dict[str, Any]) -> list[str]:
    """Every component id whose type is missing from, or deprecated in, the list."""
    table = known()
    bad = []
    for section in SECTIONS:
        for cid in config.get(section) or {}:
            ctype = cid.split("/", 1)[0]
            status = table[section].get(ctype)
            if status != "current":
                bad.append(f"{section}.{cid} ({status or 'no such type'})")
    return bad


def collector() -> dict[str, Any]:
    data = load(COLLECTOR)
    assert isinstance(data, dict)
    return data


def test_component_list_matches_the_pinned_image_and_is_complete() -> None:
    data = load(components_file())
    image = services()["otel-collector"]["image"]
    assert image.endswith(":" + data["version"])
    counts = {s: len(data[s]) for s in SECTIONS}
    # The 0.159.0 contrib manifest: 108 receivers less OBI, 32 processors, 49 exporters,
    # 40 extensions, 13 connectors.
    assert counts == {
        "receivers": 107,
        "processors": 32,
        "exporters": 49,
        "extensions": 40,
        "connectors": 13,
    }
    for section in SECTIONS:
        types = [e["type"] for e in data[section]]
        assert len(types) == len(set(types)), f"duplicate types in {section}"


def test_config_names_only_current_components_of_the_pinned_version() -> None:
    assert unknown_components(collector()) == []


def test_the_component_check_is_live() -> None:
    cfg = collector()
    cfg["exporters"] = {"otlphttp/prometheus": {}, "prometheusremotewrte": {}}
    assert unknown_components(cfg) == [
        "exporters.otlphttp/prometheus (deprecated)",
        "exporters.prometheusremotewrte (no such type)",
    ]


def test_pipelines_use_only_defined_components_memory_limiter_then_batch() -> None:
    cfg = collector()
    service = cfg["service"]
    assert service["extensions"] == ["health_check"]
    pipelines = service["pipelines"]
    assert set(pipelines) == {"metrics", "traces", "logs"}
    for name, pipe in pipelines.items():
        assert pipe["processors"][:2] == ["memory_limiter", "batch"], name
        for kind in ("receivers", "processors", "exporters"):
            for cid in pipe[kind]:
                assert cid in cfg[kind], f"{name} uses undefined {kind[:-1]} {cid}"


def test_receivers_exporters_and_health_point_where_compose_expects() -> None:
    cfg = collector()
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert cfg["extensions"]["health_check"]["endpoint"] == "0.0.0.0:13133"
    metrics = cfg["service"]["pipelines"]["metrics"]["exporters"]
    traces = cfg["service"]["pipelines"]["traces"]["exporters"]
    logs = cfg["service"]["pipelines"]["logs"]["exporters"]
    assert [cfg["exporters"][e]["endpoint"] for e in metrics] == [
        "http://prometheus:9090/api/v1/otlp"
    ]
    assert [cfg["exporters"][e]["endpoint"] for e in traces] == ["tempo:4317"]
    # otlp_http appends /v1/logs: Loki 3's native OTLP ingest is /otlp/v1/logs.
    assert logs == ["otlp_http/loki"]
    assert cfg["exporters"]["otlp_http/loki"]["endpoint"] == "http://loki:3100/otlp"
    loki = load(ROOT / "deploy" / "loki" / "loki.yaml")
    assert loki["server"]["http_listen_port"] == 3100
    assert loki["limits_config"]["allow_structured_metadata"] is True  # trace_id, span_id
    assert "loki" in services()["otel-collector"]["depends_on"]
    tempo = load(ROOT / "deploy" / "tempo" / "tempo.yaml")
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc.endswith(":4317")
    mount = services()["otel-collector"]["volumes"][0]
    assert mount.startswith("./otel-collector/config.yaml:/etc/otelcol-contrib/config.yaml")


def test_native_collector_config_is_valid_too() -> None:
    """What `stack up` generates when an otelcol-contrib binary exists."""
    ports = sp.ports_from_base(20000, 2)
    cfg = opt.collector_config(collector(), ports)
    assert unknown_components(cfg) == []
    assert cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "127.0.0.1:20005"
    for pipe in cfg["service"]["pipelines"].values():
        assert pipe["exporters"] == ["debug"]
        assert pipe["processors"][:2] == ["memory_limiter", "batch"]


@pytest.mark.parametrize("section", SECTIONS)
def test_component_modules_are_recorded(section: str) -> None:
    for entry in load(components_file())[section]:
        assert entry["module"].startswith(("go.opentelemetry.io/", "github.com/")), entry


# Top-level keys of Tempo 3.0.3's config (grafana/tempo, tag v3.0.3,
# cmd/tempo/app/config.go: the yaml tags of Config); Tempo rejects unknown keys.
TEMPO_3_KEYS = {
    "automemlimit_enabled", "automemlimit_ratio", "target", "auth_enabled",
    "multitenancy_enabled", "shutdown_delay", "stream_over_http_enabled", "http_api_prefix",
    "enable_go_runtime_metrics", "span_profiling", "memory", "server", "internal_server",
    "distributor", "metrics_generator_client", "live_store_client", "querier", "query_frontend",
    "metrics_generator", "ingest", "block_builder", "storage", "overrides", "memberlist",
    "usage_report", "cache", "backend_scheduler", "backend_scheduler_client", "backend_worker",
    "live_store",
}  # fmt: skip


# Nested keys used here, each read from its yaml tag at tag v3.0.3 (Tempo parses with
# UnmarshalStrict, so a misspelt nested key stops it too): dskit server/server.go
# (http_listen_port, log_level), modules/distributor/config.go (receivers: the
# collector's receiver config, free-form below), modules/storage/config.go (trace),
# tempodb/config.go (backend, wal, local), tempodb/wal/wal.go and
# tempodb/backend/local/config.go (path), pkg/usagestats/config.go (reporting_enabled),
# modules/generator/config.go (registry, storage), modules/generator/registry/config.go
# (external_labels: free-form), modules/generator/storage/config.go (path,
# remote_write: Prometheus' RemoteWriteConfig list), modules/overrides/config.go
# (defaults -> metrics_generator -> processors).
# None: any value (not checked further).
TEMPO_3_NESTED: dict[str, Any] = {
    "stream_over_http_enabled": None,
    "server": {"http_listen_port": None, "log_level": None},
    "distributor": {"receivers": None},
    "metrics_generator": {
        "registry": {"external_labels": None},
        "storage": {"path": None, "remote_write": None},
    },
    "overrides": {"defaults": {"metrics_generator": {"processors": None}}},
    "storage": {"trace": {"backend": None, "wal": {"path": None}, "local": {"path": None}}},
    "usage_report": {"reporting_enabled": None},
}
# modules/generator/processor/processor_names.go at v3.0.3 (the processors, less the
# span-metrics-{latency,count,size} sub-processors).
TEMPO_3_PROCESSORS = {"service-graphs", "span-metrics", "host-info"}


def unknown_keys(config: Any, known: Any, where: str = "") -> list[str]:
    if known is None or not isinstance(config, dict):
        return []
    out = []
    for key, value in config.items():
        if key not in known:
            out.append(f"{where}{key}")
        else:
            out += unknown_keys(value, known[key], f"{where}{key}.")
    return out


def test_tempo_config_uses_only_tempo_3_keys() -> None:
    assert services()["tempo"]["image"] == "grafana/tempo:3.0.3"
    tempo = load(ROOT / "deploy" / "tempo" / "tempo.yaml")
    assert set(tempo) <= TEMPO_3_KEYS, set(tempo) - TEMPO_3_KEYS
    assert unknown_keys(tempo, TEMPO_3_NESTED) == []
    assert tempo["server"]["http_listen_port"] == 3200
    bad = {**tempo, "storage": {"trace": {"backend": "local", "wall": {}}}, "compactor": {}}
    assert unknown_keys(bad, TEMPO_3_NESTED) == ["storage.trace.wall", "compactor"]


def test_tempo_generates_the_service_graph_and_span_metrics_into_prometheus() -> None:
    """Grafana's service map (Tempo datasource -> serviceMap -> Prometheus) reads what the
    metrics generator remote-writes; Prometheus must accept remote write for it."""
    tempo = load(ROOT / "deploy" / "tempo" / "tempo.yaml")
    processors = tempo["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert set(processors) == {"service-graphs", "span-metrics"}
    assert set(processors) <= TEMPO_3_PROCESSORS
    [rw] = tempo["metrics_generator"]["storage"]["remote_write"]
    assert rw == {"url": "http://prometheus:9090/api/v1/write", "send_exemplars": True}
    assert tempo["metrics_generator"]["storage"]["path"].startswith("/var/tempo/")
    assert "tempo-data:/var/tempo" in services()["tempo"]["volumes"]
    assert "--web.enable-remote-write-receiver" in services()["prometheus"]["command"]


# Loki 3.7.6's config keys used in deploy/loki/loki.yaml, each read from its yaml tag
# at tag v3.7.6 (Loki parses strictly: an unknown key stops it): pkg/loki/loki.go
# (Config: top level), dskit server/server.go (http_listen_port, log_level),
# pkg/loki/common/common.go (path_prefix, instance_addr, replication_factor, ring,
# storage -> filesystem -> chunks_directory / rules_directory), pkg/util/ring and dskit
# kv/client.go (kvstore -> store), pkg/storage/config/schema_config.go (configs: from,
# store, object_store, schema, index -> prefix / period), pkg/validation/limits.go
# (allow_structured_metadata, volume_enabled, retention_period), pkg/compactor/config.go
# (working_directory, retention_enabled, delete_request_store), pkg/analytics/reporter.go
# (reporting_enabled).
LOKI_3_NESTED: dict[str, Any] = {
    "auth_enabled": None,
    "server": {"http_listen_port": None, "log_level": None},
    "common": {
        "path_prefix": None,
        "instance_addr": None,
        "replication_factor": None,
        "ring": {"kvstore": {"store": None}},
        "storage": {"filesystem": {"chunks_directory": None, "rules_directory": None}},
    },
    "schema_config": {"configs": None},
    "limits_config": {
        "allow_structured_metadata": None,
        "volume_enabled": None,
        "retention_period": None,
    },
    "compactor": {
        "working_directory": None,
        "retention_enabled": None,
        "delete_request_store": None,
    },
    "analytics": {"reporting_enabled": None},
}
LOKI_PERIOD_KEYS = {"from", "store", "object_store", "schema", "index"}


def test_loki_config_uses_only_loki_3_keys() -> None:
    assert services()["loki"]["image"] == "grafana/loki:3.7.6"
    loki = load(ROOT / "deploy" / "loki" / "loki.yaml")
    assert unknown_keys(loki, LOKI_3_NESTED) == []
    for period in loki["schema_config"]["configs"]:
        assert set(period) <= LOKI_PERIOD_KEYS, period
        assert set(period["index"]) <= {"prefix", "period"}, period
        # Loki 3 ingests structured metadata (OTLP trace ids) only with tsdb + v13.
        assert (period["store"], period["schema"]) == ("tsdb", "v13"), period
    # Data lives on the named volume; retention needs the compactor's delete store.
    assert "loki-data:/loki" in services()["loki"]["volumes"]
    assert loki["common"]["path_prefix"] == "/loki"
    assert loki["compactor"]["working_directory"].startswith("/loki/")
    assert loki["compactor"]["delete_request_store"] == "filesystem"
    bad = {**loki, "limits_config": {"allow_structured_metadata": True, "retention": "1d"}}
    assert unknown_keys(bad, LOKI_3_NESTED) == ["limits_config.retention"]
