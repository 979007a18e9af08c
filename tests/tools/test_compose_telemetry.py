"""The compose stack's telemetry, from the compose file's own commands and environment.

Docker cannot run here, so the `server`, `runner` and `publisher` services run as
local processes with exactly their compose argv and `environment:` (loopback
addresses and free ports swapped in, the collector replaced by the in-process
OTLP receiver).  What the stack's Grafana links rely on must then arrive:
- a runner HTTP CLIENT span whose child is a server SERVER span: the pair Tempo's
  service-graphs processor turns into the runner -> server edge of the service map;
- OTLP log records carrying the trace id of an exported span: Loki keeps it as
  `trace_id` and the Loki datasource's derived field opens that trace in Tempo;
- on every signal's resource, the attributes Prometheus promotes to labels and
  Loki indexes (service.name, service.instance.id, deployment.environment.name).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.otlp_receiver import OtlpReceiver, RecordedSpan
from tests.support.procs import Proc, free_port, http_json, running, wait_until
from tests.tools.repo import DEPLOY, argv_of, load, services

pytestmark = pytest.mark.slow

# Container ports of the compose services -> the free loopback ports used here.
SERVER_PORT, STATUS_PORT = 4437, 9464


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def localize(argv: list[str], ports: dict[int, int], data: Path) -> list[str]:
    """A compose argv on this machine: service hosts and 0.0.0.0 -> 127.0.0.1, the
    container ports -> free ones, /data -> a temp dir."""
    out = []
    for arg in argv:
        arg = arg.replace("0.0.0.0", "127.0.0.1").replace("//server:", "//127.0.0.1:")
        arg = arg.replace("/data/", f"{data}/")
        for inside, here in ports.items():
            arg = arg.replace(f":{inside}", f":{here}").replace(f"={inside}", f"={here}")
        out.append(arg)
    return out


def compose_env(name: str, rx: OtlpReceiver) -> dict[str, str]:
    """The service's compose environment, exporting to `rx` instead of the collector,
    with short export delays so the test need not wait 10 s for a metrics export."""
    env = {k: str(v) for k, v in (services()[name].get("environment") or {}).items()}
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.endpoint
        env.update(
            OTEL_SDK_DISABLED="false",
            OTEL_METRIC_EXPORT_INTERVAL="1000",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_BLRP_SCHEDULE_DELAY="100",
        )
    return env


def service_proc(name: str, rx: OtlpReceiver, ports: dict[int, int], tmp: Path) -> Proc:
    argv = localize(argv_of(services()[name]["command"]), ports, tmp)
    if name == "publisher":
        argv = [a if not a.startswith("--every=") else "--every=0.5" for a in argv]
    return Proc(
        [sys.executable, "-m", "pullwake", *argv], tmp / f"{name}.log", compose_env(name, rx)
    )


def service_graph_edge(rx: OtlpReceiver) -> tuple[RecordedSpan, RecordedSpan] | None:
    """A (runner CLIENT span, server SERVER span) parent/child pair, if exported yet."""
    spans = rx.spans()
    clients = {
        (s.span.trace_id, s.span.span_id): s
        for s in spans
        if s.span.kind == Span.SPAN_KIND_CLIENT and s.resource["service.name"] == "pullwake-runner"
    }
    for s in spans:
        if s.span.kind == Span.SPAN_KIND_SERVER and s.resource["service.name"] == "pullwake-server":
            parent = clients.get((s.span.trace_id, s.span.parent_span_id))
            if parent is not None:
                return parent, s
    return None


def test_compose_services_export_what_the_grafana_links_need(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    ports = {SERVER_PORT: free_port(), STATUS_PORT: free_port()}
    server = service_proc("server", receiver, ports, tmp_path)
    runner = service_proc("runner", receiver, ports, tmp_path)
    publisher = service_proc("publisher", receiver, ports, tmp_path)
    status_url = f"http://127.0.0.1:{ports[STATUS_PORT]}/status"

    def streaming() -> bool:
        _, _, body = http_json("GET", status_url)
        return isinstance(body, dict) and body.get("state") == "running.streaming"

    with running(server, runner, publisher):
        server.start()
        runner.start()
        wait_until(streaming, 30, what="the compose runner streaming")
        publisher.start()
        # Service map: runner (client) -> server (server), same trace, parent/child.
        edge = wait_until(
            lambda: service_graph_edge(receiver), 30, what="a runner->server span pair"
        )
        assert edge is not None
        client, srv = edge
        assert client.span.trace_id == srv.span.trace_id
        # Logs -> trace: a runner log record inside a span, with that span's ids.
        exported = {(s.span.trace_id.hex(), s.span.span_id.hex()) for s in receiver.spans()}

        def linked_log() -> Any:
            exported.update((s.span.trace_id.hex(), s.span.span_id.hex()) for s in receiver.spans())
            return [
                r
                for r in receiver.logs()
                if r.resource.get("service.name") == "pullwake-runner"
                and (r.trace_id, r.span_id) in exported
            ]

        record = wait_until(linked_log, 30, what="a runner log record with an exported span's ids")[
            0
        ]
        assert len(record.trace_id) == 32
        wait_until(lambda: receiver.metric_names(), 15, what="a metrics export")

    promoted = load(DEPLOY / "prometheus" / "prometheus.yml")["otlp"]["promote_resource_attributes"]
    env_runner = compose_env("runner", receiver)
    resources = [p.resource for n in receiver.metric_names() for p in receiver.points(n)]
    resources += [s.resource for s in receiver.spans()] + [r.resource for r in receiver.logs()]
    for res in resources:
        expected_name = res["service.name"]
        assert expected_name in ("pullwake-runner", "pullwake-server"), res
        assert res["deployment.environment.name"] == "compose", res
        assert "deployment.environment" not in res, res
        assert res["service.instance.id"], res
        # Every promoted attribute the apps set is one Prometheus knows to promote.
        for key in ("service.name", "service.instance.id", "deployment.environment.name"):
            assert key in promoted and key in res, (key, res)
    runner_res = [r for r in resources if r["service.name"] == env_runner["OTEL_SERVICE_NAME"]]
    assert runner_res and {r["service.instance.id"] for r in runner_res} == {"runner-1"}
