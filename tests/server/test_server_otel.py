"""`pullwake.server.otel`: server instruments, `/metrics`, traceparent continuation.

A small aiohttp app on a real loopback socket carries the middleware and the
route (the server process itself is exercised by the end-to-end tests).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pullwake.core.protocol import ClaimOutcome, CompletionOutcome, LiveMode
from pullwake.core.telemetry import SERVICE_SERVER, Telemetry, build_telemetry
from pullwake.server.observe import RunnerGauges, ServerSnapshot
from pullwake.server.otel import OtelServerObserver, instrument_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def snapshot() -> ServerSnapshot:
    return ServerSnapshot(
        time.time(),
        (
            RunnerGauges("r1", {LiveMode.SSE: 1, LiveMode.LONG_POLL: 0}, 3, 2, 12.5, False),
            RunnerGauges("r2", {LiveMode.SSE: 0, LiveMode.LONG_POLL: 0}, 0, 0, -4.0, True),
            RunnerGauges("r3", {LiveMode.SSE: 0, LiveMode.LONG_POLL: 0}, 0, 0, None, False),
        ),
    )


class Rig:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.telemetry: Telemetry = build_telemetry(
            SERVICE_SERVER, "srv", env={}, span_processors=[SimpleSpanProcessor(self.spans)]
        )
        self.obs = OtelServerObserver(self.telemetry)
        app = web.Application()
        instrument_app(app, self.telemetry)

        async def heartbeat(request: web.Request) -> web.Response:
            self.obs.heartbeat_accepted(request.match_info["runner_id"])
            return web.json_response({})

        async def broken(_request: web.Request) -> web.Response:
            raise web.HTTPServiceUnavailable()

        app.router.add_post("/_electric/runners/{runner_id}/heartbeat", heartbeat)
        app.router.add_get("/broken", broken)
        self.server = TestServer(app, host="127.0.0.1", port=0)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    await r.server.start_server()
    yield r
    await r.server.close()
    r.telemetry.shutdown(2)


async def scrape(rig: Rig) -> tuple[str, str]:
    async with ClientSession() as http, http.get(str(rig.server.make_url("/metrics"))) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


def sample(text: str, metric: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == metric:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
    return None


async def test_metrics_route_serves_catalog_gauges_and_counters(rig: Rig) -> None:
    rig.obs.bind(snapshot)
    rig.obs.message_sent("r1")
    rig.obs.message_sent("r1")
    rig.obs.wake_announced("r1")
    rig.obs.claim_answered("r1", ClaimOutcome.ALREADY_CLAIMED)
    rig.obs.completion("r1", CompletionOutcome.FENCED)
    rig.obs.lease_expired("r1")
    rig.obs.request_finished("/x", "GET", 200, 0.01)
    ctype, text = await scrape(rig)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert sample(text, "pullwake_server_streams_open", runner_id="r1", live_mode="sse") == 1
    assert sample(text, "pullwake_server_streams_open", runner_id="r1", live_mode="long-poll") == 0
    assert sample(text, "pullwake_server_subscriptions_pending", runner_id="r1") == 3
    assert sample(text, "pullwake_server_claims_active", runner_id="r1") == 2
    assert sample(text, "pullwake_server_lease_remaining_seconds", runner_id="r2") == -4
    assert sample(text, "pullwake_server_lease_remaining_seconds", runner_id="r3") is None
    assert sample(text, "pullwake_server_stream_mismatch", runner_id="r2") == 1
    assert sample(text, "pullwake_server_stream_mismatch", runner_id="r1") == 0
    assert sample(text, "pullwake_server_messages_total", runner_id="r1") == 2
    assert sample(text, "pullwake_server_wakes_announced_total", runner_id="r1") == 1
    assert sample(text, "pullwake_server_claims_total", outcome="already_claimed") == 1
    assert sample(text, "pullwake_server_completions_total", outcome="fenced") == 1
    assert sample(text, "pullwake_server_claim_lease_expiries_total", runner_id="r1") == 1
    assert sample(text, "pullwake_server_request_duration_seconds_count") == 1


async def test_incoming_traceparent_is_continued(rig: Rig) -> None:
    url = str(rig.server.make_url("/_electric/runners/r1/heartbeat"))
    async with ClientSession() as http, http.post(url, headers={"traceparent": PARENT}) as r:
        assert r.status == 200
    (span,) = rig.spans.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "POST /_electric/runners/{runner_id}/heartbeat"
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    attrs = dict(span.attributes or {})
    assert attrs["runner.id"] == "r1" and attrs["http.response.status_code"] == 200
    _, text = await scrape(rig)
    assert sample(text, "pullwake_server_heartbeats_total", runner_id="r1") == 1
    assert len(rig.spans.get_finished_spans()) == 1  # /metrics is not traced


async def test_server_errors_mark_the_span(rig: Rig) -> None:
    async with ClientSession() as http, http.get(str(rig.server.make_url("/broken"))) as r:
        assert r.status == 503
    (span,) = rig.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["http.response.status_code"] == 503


async def test_disabled_telemetry_serves_a_comment_and_no_spans() -> None:
    t = build_telemetry(SERVICE_SERVER, "srv", env={"OTEL_SDK_DISABLED": "true"})
    OtelServerObserver(t).message_sent("r1")
    app = web.Application()
    instrument_app(app, t)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with ClientSession() as http, http.get(str(server.make_url("/metrics"))) as r:
            assert r.status == 200
            assert "disabled" in await r.text()
    finally:
        await server.close()
