"""The runner's own view of itself: one set of fields behind heartbeats, /status
and gauges, so every reader sees the same truth."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pullwake.core.protocol import EndReason, RunnerState
from pullwake.runner.config import RunnerConfig
from pullwake.runner.observe import RunnerSnapshot

if TYPE_CHECKING:
    from pullwake.runner.dispatch import DispatchStats
    from pullwake.runner.machine import Machine

STATUS_WORDS = {
    RunnerState.STOPPED: "stopped",
    RunnerState.CONNECTING: "connecting",
    RunnerState.STREAMING: "streaming",
    RunnerState.RECONNECTING: "reconnecting",
    RunnerState.STOPPING: "stopping",
}


def iso(ts: float | None) -> str | None:
    """Unix time -> RFC 3339 UTC with milliseconds and `Z`, as the original sends."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


class Diagnostics:
    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.stream_connected = False
        self.connected_since: float | None = None
        self.reconnect_count = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_heartbeat_at: float | None = None
        self.last_heartbeat_ok: bool | None = None
        self.last_heartbeat_success_at: float | None = None
        self.consecutive_heartbeat_failures = 0
        self.session_failures = 0  # heartbeat failures since the current session opened
        self.last_reconnect_reason: EndReason | None = None
        self.last_byte_mono: float | None = None
        self.idle_timeout_s = 0.0

    def __repr__(self) -> str:
        return (
            f"<Diagnostics connected={self.stream_connected} reconnects={self.reconnect_count}"
            f" hb_failures={self.consecutive_heartbeat_failures}>"
        )

    # --- updates ---------------------------------------------------------------------
    def connected(self) -> None:
        self.stream_connected = True
        self.connected_since = time.time()

    def disconnected(self, reason: EndReason) -> None:
        self.stream_connected = False
        self.connected_since = None
        self.last_reconnect_reason = reason

    def got_bytes(self) -> None:
        self.last_byte_mono = time.monotonic()

    def error(self, text: str) -> None:
        self.last_error, self.last_error_at = text[:500], time.time()

    # --- reads -----------------------------------------------------------------------
    def idle_seconds(self) -> float:
        if self.last_byte_mono is None:
            return 0.0
        return time.monotonic() - self.last_byte_mono

    def snapshot(self, m: Machine, committed: str) -> RunnerSnapshot:
        now = time.time()
        since = self.connected_since if self.stream_connected else None
        return RunnerSnapshot(
            runner_id=self.config.runner_id,
            state=m.phase,
            stream_connected=self.stream_connected,
            stream_connected_since=since,
            stream_age_s=max(0.0, now - since) if since is not None else 0.0,
            stream_idle_s=self.idle_seconds(),
            idle_timeout_s=self.idle_timeout_s if self.config.profile.idle_watchdog else 0.0,
            reconnect_count=self.reconnect_count,
            consecutive_heartbeat_failures=self.consecutive_heartbeat_failures,
            last_heartbeat_success_at=self.last_heartbeat_success_at,
            last_heartbeat_ok=self.last_heartbeat_ok,
            last_reconnect_reason=self.last_reconnect_reason,
            session_number=m.session,
            committed_offset=committed,
        )

    def as_dict(self, m: Machine, stats: DispatchStats | None) -> dict[str, Any]:
        reason = self.last_reconnect_reason
        d: dict[str, Any] = {
            "status": STATUS_WORDS[m.phase],
            "started_at": iso(self.started_at),
            "stream_connected": self.stream_connected,
            "stream_connected_since": iso(self.connected_since) if self.stream_connected else None,
            "reconnect_count": self.reconnect_count,
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "last_heartbeat_at": iso(self.last_heartbeat_at),
            "last_heartbeat_ok": self.last_heartbeat_ok,
            "last_claim_at": iso(stats.last_claim_at) if stats else None,
            "last_claim_result": stats.last_claim_result if stats else None,
            "last_dispatch_at": iso(stats.last_dispatch_at) if stats else None,
            "events_received": stats.events_received if stats else 0,
            "claims_succeeded": stats.claims_succeeded if stats else 0,
            "claims_skipped": stats.claims_skipped if stats else 0,
            "claims_failed": stats.claims_failed if stats else 0,
            "state": m.phase.value,
            "stream_idle_seconds": round(self.idle_seconds(), 3),
            "consecutive_heartbeat_failures": self.consecutive_heartbeat_failures,
            "last_reconnect_reason": reason.value if reason else None,
            "profile": self.config.profile.name,
            "live_mode": self.config.live_mode.value,
        }
        return d

    def detectors(self) -> dict[str, Any]:
        c, p = self.config, self.config.profile
        ka = c.keepalive
        return {
            "idle_watchdog": p.idle_watchdog,
            "idle_timeout_s": self.idle_timeout_s if p.idle_watchdog else None,
            "idle_timeout_configured_s": c.idle_timeout,
            "heartbeat_bridge": p.heartbeat_bridge,
            "heartbeat_failure_threshold": c.bridge_threshold,
            "heartbeat_interval_s": c.heartbeat_interval,
            "heartbeat_timeout_s": c.hb_timeout,
            "tcp_keepalive": (
                {
                    "idle_s": ka.idle_s,
                    "interval_s": ka.interval_s,
                    "count": ka.count,
                    "user_timeout_ms": ka.user_timeout_ms,
                }
                if p.tcp_keepalive
                else None
            ),
            "connect_timeout_s": c.connect_timeout if p.timeouts else None,
            "hidden_retry": p.hidden_retry,
            "backoff_max_s": c.backoff_max,
        }

    def status(
        self,
        m: Machine,
        diagnostics: dict[str, Any],
        reconnects: list[dict[str, Any]],
        *,
        committed: str,
        read: str,
        queued: int,
    ) -> dict[str, Any]:
        now = time.time()
        return {
            "runner_id": self.config.runner_id,
            "state": m.phase.value,
            "profile": self.config.profile.name,
            "live_mode": self.config.live_mode.value,
            "session": m.session,
            "stream_age_seconds": (
                round(now - self.connected_since, 3)
                if self.stream_connected and self.connected_since
                else 0.0
            ),
            "committed_offset": committed,
            "read_offset": read,
            "queued_wakes": queued,
            "last_heartbeat_success_at": iso(self.last_heartbeat_success_at),
            "diagnostics": diagnostics,
            "detectors": self.detectors(),
            "reconnects": reconnects,
        }
