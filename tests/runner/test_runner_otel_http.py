"""HTTP semantic conventions on the runner's requests (`runner.otel_http`).

Real loopback sockets throughout: a real `Runner` against the scripted fake
server (stream GET, register, heartbeat, claim, completion callback), and
single requests through the observer's `TraceConfig` for a 5xx, a refused
connection, a URL carrying secrets, a timeout and a stop.  Spans land in an
in-memory exporter, metric points in an in-memory reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.metrics.export import (
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    InMemoryMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pullwake.core.protocol import H_NEXT_OFFSET, HeartbeatOutcome, LiveMode
from pullwake.core.telemetry import SERVICE_RUNNER, Telemetry, build_telemetry
from pullwake.runner import Runner
from pullwake.runner.api import ServerAPI
from pullwake.runner.config import RunnerConfig
from pullwake.runner.observe import SessionInfo
from pullwake.runner.otel import HEARTBEAT_SPAN, SESSION_SPAN, OtelRunnerObserver
from pullwake.runner.tailprobe import TailProbe
from tests.support.fakeserver import FakeServer, forever, serving, sse_headers
from tests.support.procs import refused_port
from tests.support.waits import until

DURATION = "http.client.request.duration"


class Rig:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.telemetry: Telemetry = build_telemetry(
            SERVICE_RUNNER,
            "r1",
            env={},
            span_processors=[SimpleSpanProcessor(self.spans)],
            metric_readers=[self.reader],
        )
        self.obs = OtelRunnerObserver(self.telemetry, "r1")

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def clients(self) -> list[ReadableSpan]:
        """The HTTP CLIENT spans: the only CLIENT spans (pullwake's own are INTERNAL)."""
        return [s for s in self.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]

    def points(self) -> list[tuple[dict[str, Any], int]]:
        """`http.client.request.duration` data points: (attributes, count).

        Read by an in-memory reader: the metric is budgeted as OTLP-only (not on
        `/metrics`), and both export paths get the same points.
        """
        data = self.reader.get_metrics_data()
        out: list[tuple[dict[str, Any], int]] = []
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == DURATION:
                        out += [
                            (dict(p.attributes or {}), p.count)
                            for p in m.data.data_points
                            if isinstance(p, HistogramDataPoint | ExponentialHistogramDataPoint)
                        ]
        return out


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.telemetry.shutdown(2)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def session_info() -> SessionInfo:
    return SessionInfo(number=1, mode=LiveMode.SSE, start_offset="-1", started_at=time.time())


@contextlib.asynccontextmanager
async def traced(rig: Rig) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trace_configs=[rig.obs.trace_config()]) as http:
        yield http


# --- a real runner: every request it makes -------------------------------------------
async def one_wake_then_keepalives(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=sse_headers("0.2"))
    await resp.prepare(request)
    await resp.write(b'event: data\ndata: [{"type":"wake","subscription_id":"s1"}]\n\n')
    with contextlib.suppress(ConnectionResetError):  # the runner stopped
        while True:
            await asyncio.sleep(0.1)
            await resp.write(b": keepalive\n\n")
    return resp


async def test_every_runner_request_is_a_client_span_with_stable_attributes(rig: Rig) -> None:
    fake = FakeServer(one_wake_then_keepalives)
    app_runner, base = await fake.start()
    port = int(base.rsplit(":", 1)[1])
    r = Runner(
        server=base, runner_id="r1", observer=rig.obs, heartbeat_interval=0.2, backoff_max=0.2
    )
    rig.obs.bind(r.snapshot)
    r.trace_configs.append(rig.obs.trace_config())  # as instrument_runner does
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: fake.completed and rig.finished(HEARTBEAT_SPAN), what="a wake done")
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()

    by_id = {s.context.span_id: s for s in rig.finished()}

    def parent_name(s: ReadableSpan) -> str:
        assert s.parent is not None, s.name
        return by_id[s.parent.span_id].name if s.parent.span_id in by_id else "(open)"

    clients = rig.clients()
    assert {s.name for s in clients} == {"GET", "POST"}  # no pullwake.* span is a CLIENT
    for s in clients:
        a = attrs(s)
        assert s.name == a["http.request.method"] in ("GET", "POST")
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == port
        assert a["url.full"].startswith(f"{base}/")
        assert isinstance(a["http.response.status_code"], int)
        assert "error.type" not in a and s.status.status_code is StatusCode.UNSET
    paths = {attrs(s)["url.full"].split("?")[0][len(base) :]: s for s in clients}
    register = paths["/_electric/runners"]
    assert attrs(register)["http.response.status_code"] == 201
    # the stream GET: a child of its session span, the protocol's query kept
    (stream,) = [s for s in clients if s.name == "GET"][:1]
    assert parent_name(stream) in (SESSION_SPAN, "(open)")
    assert "offset=" in attrs(stream)["url.full"] and "live=sse" in attrs(stream)["url.full"]
    heartbeats = [s for s in clients if attrs(s)["url.full"].endswith("/heartbeat")]
    assert heartbeats and all(parent_name(s) == HEARTBEAT_SPAN for s in heartbeats)
    (claim,) = [s for s in clients if attrs(s)["url.full"].endswith("/claim")]
    assert parent_name(claim) == "pullwake.wake.claim"
    (done,) = [s for s in clients if "/_electric/wake-callbacks/" in attrs(s)["url.full"]]
    assert parent_name(done) == "pullwake.wake.complete"
    # the claim token went as a Bearer header: no attribute of any span carries it
    (_, authorization, _) = fake.callbacks[0]
    token = authorization.removeprefix("Bearer ")
    assert token and all(token not in str(attrs(s)) for s in rig.finished())

    points = rig.points()
    counts = {(a["http.request.method"], a["http.response.status_code"]): n for a, n in points}
    assert counts[("POST", 201)] >= 1 and counts[("GET", 200)] >= 1
    assert counts[("POST", 200)] >= 3  # heartbeat(s), claim, completion
    for a, _ in points:
        assert set(a) == {
            "runner.id",
            "http.request.method",
            "server.address",
            "server.port",
            "http.response.status_code",
        }
        assert a["runner.id"] == "r1"
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == port


# --- single requests: errors, secrets, deadlines ----------------------------------------
async def test_a_5xx_is_an_error_with_its_status_as_error_type(rig: Rig) -> None:
    async def down(_request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503)

    async with serving(down) as base, traced(rig) as http, http.post(f"{base}/x") as resp:
        assert resp.status == 503
    (span,) = rig.clients()
    assert span.name == "POST" and span.status.status_code is StatusCode.ERROR
    assert attrs(span)["http.response.status_code"] == 503
    assert attrs(span)["error.type"] == "503"
    ((a, count),) = rig.points()
    assert count == 1
    assert a["error.type"] == "503" and a["http.response.status_code"] == 503


async def test_a_4xx_is_an_error_for_a_client(rig: Rig) -> None:
    async def gone(_request: web.Request) -> web.Response:
        return web.Response(status=404)

    async with serving(gone) as base, traced(rig) as http, http.get(f"{base}/x") as resp:
        assert resp.status == 404
    (span,) = rig.clients()
    assert span.status.status_code is StatusCode.ERROR and attrs(span)["error.type"] == "404"


async def test_a_refused_connection_is_an_error_named_by_its_exception(rig: Rig) -> None:
    with refused_port() as port:
        async with traced(rig) as http:
            with pytest.raises(aiohttp.ClientConnectorError) as raised:
                await http.post(f"http://127.0.0.1:{port}/_electric/runners/r1/heartbeat")
    (span,) = rig.clients()
    a = attrs(span)
    assert span.status.status_code is StatusCode.ERROR
    assert a["error.type"] == type(raised.value).__qualname__ == "ClientConnectorError"
    assert "http.response.status_code" not in a
    assert a["server.port"] == port and a["server.address"] == "127.0.0.1"
    assert [e.name for e in span.events] == ["exception"]
    ((a, count),) = rig.points()
    assert count == 1 and a["error.type"] == "ClientConnectorError"
    assert "http.response.status_code" not in a and a["server.port"] == port


async def test_url_full_carries_no_credentials_or_query_secrets(rig: Rig) -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(text="ok")

    async with serving(echo) as base, traced(rig) as http:
        host = base.removeprefix("http://")
        url = f"http://someone:pa55word@{host}/v1/stream/s?offset=-1&token=t0ken#frag"
        async with http.get(url) as resp:
            assert resp.status == 200
        headers = {"Authorization": "Bearer c1aim-token"}  # a callback's claim token
        async with http.post(f"{base}/_electric/wake-callbacks/c1", headers=headers) as resp:
            assert resp.status == 200
    assert seen[1] == "Bearer c1aim-token"
    with_credentials, callback = rig.clients()
    assert (
        attrs(with_credentials)["url.full"]
        == f"http://REDACTED:REDACTED@{host}/v1/stream/s?offset=-1&token=REDACTED"
    )
    assert attrs(callback)["url.full"] == f"{base}/_electric/wake-callbacks/c1"
    text = str([attrs(s) for s in rig.clients()])
    assert "pa55word" not in text and "t0ken" not in text and "c1aim" not in text


async def test_a_request_past_its_deadline_is_a_timeout_a_stopped_one_is_no_outcome(
    rig: Rig,
) -> None:
    arrived: list[str] = []

    async def hang(request: web.Request) -> web.Response:
        arrived.append(request.path)
        await forever()
        raise AssertionError

    async with serving(hang) as base, traced(rig) as http:
        api = ServerAPI(http, RunnerConfig(server=base, runner_id="r1", heartbeat_timeout=0.2))
        with pytest.raises(TimeoutError):
            await api.heartbeat("-1", {})
        (timed_out,) = rig.clients()
        assert attrs(timed_out)["error.type"] == "TimeoutError"
        assert timed_out.status.status_code is StatusCode.ERROR
        # an outer deadline (the heartbeat loop's) firing first is a timeout too
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await api.claim({"subscription_id": "s0"})  # its own deadline: 10 s
        # (settled once the cancel has run its course: after this task step)
        outer = await until(lambda: [s for s in rig.clients() if s is not timed_out])
        assert [attrs(s).get("error.type") for s in outer] == ["TimeoutError"]

        stopped = asyncio.create_task(api.claim({"subscription_id": "s1"}))
        await until(lambda: len(arrived) == 3, what="the claim at the server")
        stopped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopped
    cancelled = [s for s in rig.clients() if attrs(s).get("pullwake.cancelled")]
    assert len(cancelled) == 1
    assert attrs(cancelled[0])["pullwake.cancelled"] is True
    assert cancelled[0].status.status_code is StatusCode.UNSET
    ((a, count),) = rig.points()  # only the timeouts were measured
    assert count == 2 and a["error.type"] == "TimeoutError"


async def test_a_hung_heartbeat_is_a_timeout_whichever_deadline_fires(rig: Rig) -> None:
    """The heartbeat loop's own deadline (around register + request) fires before the
    request's: the cancel it absorbs still makes the request a TimeoutError."""
    fake = FakeServer(one_wake_then_keepalives)
    fake.hang_heartbeats = True
    app_runner, base = await fake.start()
    r = Runner(
        server=base,
        runner_id="r1",
        observer=rig.obs,
        heartbeat_interval=0.2,
        heartbeat_timeout=0.3,
        backoff_max=0.2,
    )
    r.trace_configs.append(rig.obs.trace_config())
    task = asyncio.create_task(r.run())

    def timed_out() -> list[ReadableSpan]:
        return [
            s
            for s in rig.clients()
            if attrs(s)["url.full"].endswith("/heartbeat")
            and attrs(s).get("error.type") == "TimeoutError"
        ]

    try:
        await until(lambda: len(timed_out()) >= 2, what="two timed-out heartbeat requests")
    finally:
        r.stop()
        async with asyncio.timeout(10):
            await task
        await app_runner.cleanup()
    hb_requests = [s for s in rig.clients() if attrs(s)["url.full"].endswith("/heartbeat")]
    # at most the one the stop cancelled is no outcome; every other one timed out
    assert len([s for s in hb_requests if attrs(s).get("pullwake.cancelled")]) <= 1
    for s in timed_out():
        assert s.status.status_code is StatusCode.ERROR
        assert "http.response.status_code" not in attrs(s)
        assert "pullwake.cancelled" not in attrs(s)
    timeouts = [a for a, _ in rig.points() if a.get("error.type") == "TimeoutError"]
    assert timeouts and all(a["http.request.method"] == "POST" for a in timeouts)


async def test_a_tail_probe_is_a_head_client_span_under_the_session(rig: Rig) -> None:
    async def tail(request: web.Request) -> web.Response:
        return web.Response(headers={H_NEXT_OFFSET: "0000000000000001_0000000000000007"})

    rig.obs.session_started(session_info())
    async with serving(tail) as base, traced(rig) as http:
        probe = TailProbe(http, f"{base}/runners/r1/wake", 2.0)
        assert await probe.tail() == "0000000000000001_0000000000000007"
    (span,) = rig.clients()
    current = rig.obs._current
    assert current is not None and span.parent is not None
    assert span.parent.span_id == current.get_span_context().span_id
    assert span.name == "HEAD" and attrs(span)["http.response.status_code"] == 200
    assert attrs(span)["url.full"] == f"{base}/runners/r1/wake"


async def test_traceparent_names_the_client_span_under_the_active_span(rig: Rig) -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.Response(text="ok")

    async with serving(echo) as base, traced(rig) as http:
        with rig.obs.span("heartbeat", {}):
            async with http.post(f"{base}/x") as resp:
                await resp.read()
        rig.obs.heartbeat(HeartbeatOutcome.OK, 0.001, None)
    (client,) = rig.clients()
    (hb,) = rig.finished(HEARTBEAT_SPAN)
    assert client.parent is not None and client.parent.span_id == hb.context.span_id
    _, trace_id, parent_id, _ = seen[0].split("-")
    assert trace_id == f"{hb.context.trace_id:032x}"
    assert parent_id == f"{client.context.span_id:016x}"
