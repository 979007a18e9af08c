"""HTTP semantic conventions (stable names): the values the runner and the server share.

Why pullwake writes these few rules itself instead of using
`opentelemetry-instrumentation-aiohttp-client` / `-server`: those emit the old
names (`http.method`, `http.url`, `http.status_code`) unless the process sets
`OTEL_SEMCONV_STABILITY_OPT_IN=http`; they record through the global providers
without `runner.id`, so their series would escape the catalog (names, labels
and the per-runner series budget live there); the client one cannot parent the
stream GET under its session span, and the server one would time live reads
(hours of SSE) into the request histogram.  The names come from
`opentelemetry-semantic-conventions` constants, stable attributes only
(`url.template` is still experimental, so no route on client metrics).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_plus

import yarl
from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
    HttpRequestMethodValues,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import (
    URL_FULL,
    URL_PATH,
    URL_QUERY,
    URL_SCHEME,
)
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from opentelemetry.semconv.metrics.http_metrics import (
    HTTP_CLIENT_REQUEST_DURATION,
    HTTP_SERVER_REQUEST_DURATION,
)

__all__ = [
    "CLIENT_ADDRESS",
    "ERROR_TYPE",
    "HTTP_CLIENT_REQUEST_DURATION",
    "HTTP_REQUEST_METHOD",
    "HTTP_REQUEST_METHOD_ORIGINAL",
    "HTTP_RESPONSE_STATUS_CODE",
    "HTTP_ROUTE",
    "HTTP_SERVER_REQUEST_DURATION",
    "METHODS",
    "NETWORK_PROTOCOL_VERSION",
    "OTHER",
    "REDACTED",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "URL_FULL",
    "URL_PATH",
    "URL_QUERY",
    "URL_SCHEME",
    "USER_AGENT_ORIGINAL",
    "client_error_type",
    "exception_type",
    "method_of",
    "redacted_query",
    "redacted_url",
    "server_error_type",
]

OTHER: Final = HttpRequestMethodValues.OTHER.value  # "_OTHER"
REDACTED: Final = "REDACTED"
# Every known method, `_OTHER` last: the closed value set of `http.request.method`.
METHODS: Final = (*(m.value for m in HttpRequestMethodValues if m.value != OTHER), OTHER)
_KNOWN: Final = frozenset(METHODS) - {OTHER}
# Query parameters of the Durable Streams protocol, kept as sent; any other
# parameter's value (a token, a signature) is recorded as REDACTED.
_PLAIN_QUERY: Final = frozenset({"offset", "live", "cursor"})


def method_of(method: str) -> str:
    """`http.request.method`: a known method, else `_OTHER` (bounded, per the conventions)."""
    upper = method.upper()
    return upper if upper in _KNOWN else OTHER


def redacted_query(url: yarl.URL) -> str:
    """The URL's raw query with every value outside the protocol's own parameters redacted."""
    parts = []
    for part in url.raw_query_string.split("&"):
        key, sep, _ = part.partition("=")
        plain = unquote_plus(key) in _PLAIN_QUERY
        parts.append(part if plain or not sep else f"{key}={REDACTED}")
    return "&".join(parts)


def redacted_url(url: yarl.URL) -> str:
    """`url.full` without secrets: credentials as REDACTED:REDACTED, no fragment,
    query values outside the protocol's parameters redacted (claim tokens travel in
    an `Authorization` header, which is never recorded)."""
    clean = url.with_fragment(None)
    if url.user is not None or url.password is not None:
        clean = clean.with_user(REDACTED).with_password(REDACTED if url.password else None)
    if url.query_string:
        return str(clean.with_query(None)) + "?" + redacted_query(url)
    return str(clean)


def exception_type(exc: BaseException) -> str:
    """`error.type` for a request that ended with an exception: its class name."""
    return type(exc).__qualname__


def client_error_type(status: int) -> str | None:
    """A client request is an error from 400 on (`error.type` = the status code)."""
    return str(status) if status >= 400 else None


def server_error_type(status: int) -> str | None:
    """A served request is an error only from 500 on: a 4xx is the client's mistake."""
    return str(status) if status >= 500 else None
