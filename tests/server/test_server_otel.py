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
        instrument_app(app, self.telemetry, self.obs)

        async def heartbeat(request: web.Request) -> web.Response:
            self.obs.heartbeat_accepted(request.match_info["runner_id"])
            return web.json_response({})

        async def broken(_request: web.Request) -> web.Response:
            raise web.HTTPServiceUnavailable()

        async def crashing(_request: web.Request) -> web.Response:
            raise KeyError("a bug")

        async def stream(request: web.Request) -> web.Response:
            return web.Response(text="tail")

        app.router.add_post("/_electric/runners/{runner_id}/heartbeat", heartbeat)
        app.router.add_get("/broken", broken)
        app.router.add_get("/crashing", crashing)
        app.router.add_get("/v1/stream/{tail:.*}", stream)
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
    rig.obs.request_finished("/x", "GET", 200, 0.01)  # timed by the middleware instead
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
    assert "pullwake_server_request_duration" not in text
    assert sample(text, "http_server_request_duration_seconds_count") is None


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


# --- HTTP semantic conventions: SERVER spans and http.server.request.duration -----------
DURATION = "http_server_request_duration_seconds_count"


async def get(rig: Rig, path: str, method: str = "GET") -> int:
    async with ClientSession() as http, http.request(method, str(rig.server.make_url(path))) as r:
        await r.read()
        return r.status


async def test_spans_and_durations_name_the_route_template_never_the_path(rig: Rig) -> None:
    assert await get(rig, "/_electric/runners/r%2F1/heartbeat", "POST") == 200
    assert await get(rig, "/v1/stream/runners/r1/wake?offset=-1&token=s3cret") == 200
    spans = {dict(s.attributes or {})["http.route"]: s for s in rig.spans.get_finished_spans()}
    hb = spans["/_electric/runners/{runner_id}/heartbeat"]
    assert hb.name == "POST /_electric/runners/{runner_id}/heartbeat"
    a = dict(hb.attributes or {})
    assert a["http.request.method"] == "POST" and a["url.scheme"] == "http"
    assert a["url.path"] in (
        "/_electric/runners/r%2F1/heartbeat",
        "/_electric/runners/r/1/heartbeat",
    )
    assert a["http.response.status_code"] == 200 and "error.type" not in a
    assert hb.status.status_code is StatusCode.UNSET
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == rig.server.port
    assert a["client.address"] == "127.0.0.1" and a["network.protocol.version"] == "1.1"
    assert str(a["user_agent.original"]).startswith("Python/")
    stream = spans["/v1/stream/{tail}"]
    assert stream.name == "GET /v1/stream/{tail}"
    assert dict(stream.attributes or {})["url.query"] == "offset=-1&token=REDACTED"
    _, text = await scrape(rig)
    assert (
        sample(
            text,
            DURATION,
            http_request_method="POST",
            url_scheme="http",
            http_route="/_electric/runners/{runner_id}/heartbeat",
            http_response_status_code="200",
        )
        == 1
    )
    assert sample(text, DURATION, http_route="/v1/stream/{tail}") == 1
    timed = "\n".join(ln for ln in text.splitlines() if ln.startswith(DURATION))
    assert "r/1" not in timed and "r%2F1" not in timed and "runners/r1/wake" not in timed
    assert 'error_type="' not in timed


async def test_5xx_and_exceptions_are_errors_4xx_and_unmatched_paths_are_not(rig: Rig) -> None:
    assert await get(rig, "/broken") == 503
    assert await get(rig, "/crashing") == 500
    assert await get(rig, "/no/such/path/r1") == 404
    assert await get(rig, "/broken", "PURGE") == 405
    by_name = {s.name: s for s in rig.spans.get_finished_spans()}
    broken = by_name["GET /broken"]
    assert broken.status.status_code is StatusCode.ERROR
    assert dict(broken.attributes or {})["error.type"] == "503"
    crashing = by_name["GET /crashing"]
    assert crashing.status.status_code is StatusCode.ERROR
    assert dict(crashing.attributes or {})["error.type"] == "KeyError"
    assert dict(crashing.attributes or {})["http.response.status_code"] == 500
    unmatched = by_name["GET"]  # no route: the method alone, no http.route
    assert "http.route" not in dict(unmatched.attributes or {})
    assert unmatched.status.status_code is StatusCode.UNSET
    other = by_name["HTTP"]  # an unknown method is _OTHER (kept as sent aside); 405: no route
    assert dict(other.attributes or {})["http.request.method"] == "_OTHER"
    assert dict(other.attributes or {})["http.request.method_original"] == "PURGE"
    _, text = await scrape(rig)
    assert sample(text, DURATION, http_route="/broken", error_type="503") == 1
    assert sample(text, DURATION, http_route="/crashing", error_type="KeyError") == 1
    assert sample(text, DURATION, http_request_method="_OTHER", http_response_status_code="405")
    unrouted = [ln for ln in text.splitlines() if ln.startswith(DURATION) and "404" in ln]
    # no http.route attribute (the Prometheus text shows an absent label as empty)
    assert len(unrouted) == 1 and 'http_route=""' in unrouted[0]
    assert "no/such" not in text


async def test_live_reads_are_traced_but_not_timed(rig: Rig) -> None:
    assert await get(rig, "/v1/stream/runners/r1/wake?offset=-1&live=long-poll") == 200
    (span,) = rig.spans.get_finished_spans()
    assert dict(span.attributes or {})["pullwake.live.mode"] == "long-poll"
    _, text = await scrape(rig)
    assert sample(text, DURATION) is None
