"""W3C `traceparent` on HTTP requests, without a span of their own.

The runner's sessions use `runner.otel_http` (a CLIENT span per request, which
its `traceparent` names); this bare injection stays for sessions built
elsewhere.  The header carries the active span (a heartbeat, a wake's
claim/complete step), else the current stream session's span.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, Final

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR: Final = TraceContextTextMapPropagator()


class Traceparent:
    """Injects `traceparent` for requests made on the runner's event loop."""

    def __init__(self, session_span: Callable[[], Span | None]) -> None:
        self._session_span = session_span

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """The active span's context, else the current session's."""
        ctx: otel_context.Context | None = None
        if not trace.get_current_span().get_span_context().is_valid:
            session = self._session_span()
            if session is not None:
                ctx = trace.set_span_in_context(session)
        _PROPAGATOR.inject(headers, context=ctx)

    def request_class(self) -> type[aiohttp.ClientRequest]:
        """An aiohttp request class adding `traceparent` to every request.

        Cheaper than a `TraceConfig` (which makes aiohttp await a dozen signals
        per request and per response chunk): one call while the headers are built.
        """
        inject = self.inject

        class TraceparentRequest(aiohttp.ClientRequest):
            def update_headers(self, headers: Any) -> None:
                super().update_headers(headers)
                inject(self.headers)

        return TraceparentRequest

    def trace_config(self) -> aiohttp.TraceConfig:
        """The same injection as an aiohttp `TraceConfig`, for sessions built elsewhere."""
        config = aiohttp.TraceConfig()

        async def on_request_start(
            _session: aiohttp.ClientSession,
            _ctx: Any,
            params: aiohttp.TraceRequestStartParams,
        ) -> None:
            self.inject(params.headers)

        config.on_request_start.append(on_request_start)
        return config
