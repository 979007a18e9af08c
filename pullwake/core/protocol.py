"""The wire vocabulary shared by the runner, the server and the telemetry.

One place for header names, paths, offsets, event shapes, the diagnostics
whitelist and the closed enums (states, end reasons, outcomes).  The server
validates diagnostics against these enums, the runner emits them and the
metric catalog uses them as the allowed attribute values, so a value is never
typed twice.  No I/O here.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

# --- paths -------------------------------------------------------------------
RUNNERS_PREFIX: Final = "/_electric/runners"


def wake_stream_path(runner_id: str) -> str:
    """Default wake stream path of a runner (the original's convention)."""
    return f"/runners/{runner_id}/wake"


RUNNER_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# --- headers -----------------------------------------------------------------
H_PRINCIPAL: Final = "electric-principal"
H_RUNNER_ID: Final = "electric-runner-id"
H_NEXT_OFFSET: Final = "Stream-Next-Offset"
H_UP_TO_DATE: Final = "Stream-Up-To-Date"
H_CLOSED: Final = "Stream-Closed"
H_CURSOR: Final = "Stream-Cursor"
H_KEEPALIVE: Final = "Stream-Keepalive-Interval"
DEV_PRINCIPAL: Final = "system:dev-local"
PRINCIPAL_KINDS: Final = ("user", "agent", "service", "system")

# --- offsets -------------------------------------------------------------------
OFFSET_START: Final = "-1"
OFFSET_NOW: Final = "now"
_OFFSET_RE: Final = re.compile(r"^(\d{16})_(\d{16})$")


def format_offset(epoch: int, seq: int) -> str:
    """Offsets are opaque to clients but sortable as strings: `%016d_%016d`."""
    return f"{epoch:016d}_{seq:016d}"


def parse_offset(text: str) -> tuple[int, int]:
    """Parse a concrete offset; raises ValueError for anything else."""
    m = _OFFSET_RE.match(text)
    if m is None:
        raise ValueError(f"bad offset {text!r}")
    return int(m.group(1)), int(m.group(2))


# --- cursor ------------------------------------------------------------------
CURSOR_EPOCH: Final = datetime(2024, 10, 9, tzinfo=UTC)
CURSOR_INTERVAL_S: Final = 20


def current_cursor(now: datetime | None = None) -> str:
    """Number of 20 s intervals since 2024-10-09T00:00Z (cache buster)."""
    now = now or datetime.now(UTC)
    return str(int((now - CURSOR_EPOCH).total_seconds() // CURSOR_INTERVAL_S))


# --- live modes ----------------------------------------------------------------
class LiveMode(enum.StrEnum):
    SSE = "sse"
    LONG_POLL = "long-poll"


# --- runner states (the machine's states, as they appear on the wire) ----------
class RunnerState(enum.StrEnum):
    STOPPED = "stopped"
    CONNECTING = "running.connecting"
    STREAMING = "running.streaming"
    RECONNECTING = "running.reconnecting"
    STOPPING = "stopping"


# --- why a stream session ended (the `reason` of every session end) ------------
class EndReason(enum.StrEnum):
    EOF = "eof"  # the body ended cleanly (FIN, handler returned)
    ROTATED = "rotated"  # the server's planned SSE rotation / long-poll cycle end
    CLOSED = "closed"  # Stream-Closed: the stream itself ended
    ERROR = "error"  # payload/network error mid-stream (RST, truncated chunk)
    HTTP_ERROR = "http_error"  # non-2xx answer (500/503/404/410 ...)
    PROTOCOL_ERROR = "protocol_error"  # malformed SSE/JSON/control event
    CONNECT_ERROR = "connect_error"  # refused, unreachable, DNS
    CONNECT_TIMEOUT = "connect_timeout"  # connect or response headers too slow
    IDLE_TIMEOUT = "idle_timeout"  # no byte for idle_timeout (watchdog)
    HEARTBEAT_FAILURES = "heartbeat_failures"  # K consecutive heartbeat failures
    TAIL_AHEAD = "tail_ahead"  # tail probe: the stream's tail is past the idle live read
    STOPPED = "stopped"  # the runner was asked to stop
    RESUMED = "resumed"  # the system slept (boot clock ran ahead of the monotonic one)
    STALLED = "stalled"  # the process or its event loop was frozen (a timer fired late)
    FORCED = "forced"  # asked to reconnect now (POST /reconnect, SIGHUP)

    @property
    def is_failure(self) -> bool:
        """Failures mark spans ERROR and count toward reconnect storms.

        A resume or a forced reconnect is the runner's own decision about a
        stream nothing proved dead; a stall is a runner that could not run.
        """
        return self not in (
            EndReason.ROTATED,
            EndReason.STOPPED,
            EndReason.CLOSED,
            EndReason.RESUMED,
            EndReason.FORCED,
        )

    @property
    def reconnects_at_once(self) -> bool:
        """Ends followed by an immediate reconnect with a fresh backoff, healthy or not."""
        return self in (EndReason.ROTATED, EndReason.RESUMED, EndReason.STALLED, EndReason.FORCED)


class HeartbeatOutcome(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"


class HeartbeatErrorType(enum.StrEnum):
    CONNECT = "connect"  # refused / unreachable
    TIMEOUT = "timeout"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    OTHER = "other"


class WakeOutcome(enum.StrEnum):
    RECEIVED = "received"
    CLAIMED = "claimed"
    SKIPPED = "skipped"  # 204 / 409 from the claim
    HANDLED = "handled"
    FAILED = "failed"  # handler failed: the claim is left to expire
    DUPLICATE = "duplicate"  # same wake id seen again, dropped (pre-subscription servers)
    DEFERRED = "deferred"  # its subscription's claim was in flight: claimed again after it
    FENCED = "fenced"  # the claim was lost (lease expired): the server announces it again


class ClaimResult(enum.StrEnum):
    """What one claim request of the runner got (runner side of `POST .../claim`)."""

    CLAIMED = "claimed"  # 200 notification
    DONE = "done"  # 200 {"done":true}: entity paused/stopped, nothing to do
    SKIPPED = "skipped"  # 204, 409 ALREADY_CLAIMED / NO_PENDING_WORK
    NOT_RUNNING = "not_running"  # 409 NOT_RUNNING (runner disabled): retried
    FAILED = "failed"  # no answer, 5xx, other 4xx: retried


class CallbackOutcome(enum.StrEnum):
    """A request to the claim's `callback` URL (lease heartbeat or completion)."""

    OK = "ok"
    FENCED = "fenced"  # 502 WAKE_CALLBACK_FAILED ... FENCED: the claim is lost
    REJECTED = "rejected"  # other definitive refusal (token, offset, unknown consumer)
    FAILED = "failed"  # no answer / other 5xx: may be retried within the lease


class ClaimOutcome(enum.StrEnum):
    """Server-side answers to `POST /_electric/runners/:id/claim`."""

    CLAIMED = "claimed"  # 200 notification
    DONE = "done"  # 200 {"done":true}: entity paused/stopped, DS released the wake
    ALREADY_CLAIMED = "already_claimed"  # 409: another claim holds the subscription
    NO_PENDING_WORK = "no_pending_work"  # 409: nothing un-acked
    UNKNOWN = "unknown"  # 204: no such subscription
    NOT_RUNNING = "not_running"  # 409: runner disabled


class CompletionOutcome(enum.StrEnum):
    """Server-side answers to `POST /_electric/wake-callbacks/:consumerId` acks."""

    DONE = "done"  # {epoch, acks, done:true} accepted: the claim is complete
    EXTENDED = "extended"  # {epoch} / partial ack accepted: lease extended
    FENCED = "fenced"  # 502 ... FENCED: stale generation (lease expired, already done)
    REJECTED = "rejected"  # 502 other DS refusal (token, offset, unknown subscription)


# --- events on the wake stream ---------------------------------------------------
WAKE_EVENT_TYPE: Final = "wake"
WAKE_EVENT_FIELDS: Final = ("type", "wake_id", "subscription_id", "stream", "generation", "ts")

# --- diagnostics: whitelist and types (server stores only these) -----------------
# Each value is the tuple of accepted Python types after JSON decoding; `None`
# (JSON null) is always accepted.  Enum-valued fields are checked separately.
DIAGNOSTIC_FIELDS: Final[dict[str, tuple[type, ...]]] = {
    "status": (str,),
    "started_at": (str,),
    "stream_connected": (bool,),
    "stream_connected_since": (str,),
    "reconnect_count": (int,),
    "last_error": (str,),
    "last_error_at": (str,),
    "last_heartbeat_at": (str,),
    "last_heartbeat_ok": (bool,),
    "last_claim_at": (str,),
    "last_claim_result": (str,),
    "last_dispatch_at": (str,),
    "events_received": (int,),
    "claims_succeeded": (int,),
    "claims_skipped": (int,),
    "claims_failed": (int,),
    # pullwake additions
    "state": (str,),
    "stream_idle_seconds": (int, float),
    "consecutive_heartbeat_failures": (int,),
    "last_reconnect_reason": (str,),
    "profile": (str,),
    "live_mode": (str,),
}
DIAGNOSTIC_ENUMS: Final[dict[str, frozenset[str]]] = {
    "state": frozenset(s.value for s in RunnerState),
    "last_reconnect_reason": frozenset(r.value for r in EndReason),
    "live_mode": frozenset(m.value for m in LiveMode),
}


# --- diagnostics as the real agents-server keeps them (upstream-protocol.md s. 3) ---
# `sanitizeRunnerDiagnostics`: everything else is dropped silently, so a runner
# sends exactly these and nothing more (its extras live on its own /status).
UPSTREAM_DIAG_STATUS: Final = frozenset(
    ("stopped", "starting", "connecting", "streaming", "reconnecting", "stopping")
)
UPSTREAM_DIAG_CLAIM_RESULTS: Final = frozenset(("claimed", "no_work", "error"))
UPSTREAM_DIAG_BOOLS: Final = ("stream_connected", "last_heartbeat_ok")
UPSTREAM_DIAG_STRINGS: Final = (
    "started_at",
    "stream_connected_since",
    "last_error",
    "last_error_at",
    "last_heartbeat_at",
    "last_claim_at",
    "last_dispatch_at",
)
UPSTREAM_DIAG_COUNTS: Final = (
    "reconnect_count",
    "events_received",
    "claims_succeeded",
    "claims_skipped",
    "claims_failed",
)


def sanitize_diagnostics(raw: Mapping[str, object]) -> dict[str, object]:
    """What the real server would keep of `raw`, in its order; the rest is dropped."""
    out: dict[str, object] = {}
    status = raw.get("status")
    if isinstance(status, str) and status in UPSTREAM_DIAG_STATUS:
        out["status"] = status
    for key in UPSTREAM_DIAG_BOOLS:
        if isinstance(raw.get(key), bool):
            out[key] = raw[key]
    if "last_claim_result" in raw:
        result = raw["last_claim_result"]
        if result is None or (isinstance(result, str) and result in UPSTREAM_DIAG_CLAIM_RESULTS):
            out["last_claim_result"] = result
    for key in UPSTREAM_DIAG_STRINGS:
        if key in raw and (raw[key] is None or isinstance(raw[key], str)):
            out[key] = raw[key]
    for key in UPSTREAM_DIAG_COUNTS:
        value = raw.get(key)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= 0
        ):
            out[key] = value
    return out


# --- error codes -----------------------------------------------------------------
class ErrorCode(enum.StrEnum):
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    NOT_RUNNING = "NOT_RUNNING"
    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_OFFSET = "INVALID_OFFSET"
    OFFSET_GONE = "OFFSET_GONE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    ALREADY_CLAIMED = "ALREADY_CLAIMED"
    NO_PENDING_WORK = "NO_PENDING_WORK"
    INVALID_CLAIM_TOKEN = "INVALID_CLAIM_TOKEN"
    WAKE_CALLBACK_FAILED = "WAKE_CALLBACK_FAILED"
    WAKE_CALLBACK_NOT_FOUND = "WAKE_CALLBACK_NOT_FOUND"
    FENCED = "FENCED"
    INTERNAL = "INTERNAL"


MAX_BODY_BYTES: Final = 1024 * 1024


def utc_now_iso() -> str:
    """RFC 3339 UTC with milliseconds and a `Z`, as the original emits."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
