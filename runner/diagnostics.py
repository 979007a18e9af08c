"""The runner's view of itself, derived - never copied - from where each fact lives.

* the machine (`runner.machine.Machine`): the phase (connected means
  ``running.streaming``, nothing else), the session number, the reconnect
  count and why the last session ended;
* the current session's record (`observe.SessionInfo`): when it connected;
* the heartbeat record (`heartbeat.HeartbeatRecord`): how heartbeats went;
* the dispatcher's stats: claims and events;
* `Diagnostics` itself keeps only what has no other home: the start time,
  the last error, when the last byte was read and the current idle bound.

Heartbeats, `/status` and gauges all read these through `RunnerView`, so
what the runner says about its stream is what its machine did.  Heartbeats
carry only what the real agents-server keeps (`wire_diagnostics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pullwake.core.protocol import RunnerState, sanitize_diagnostics
from pullwake.runner.config import RunnerConfig
from pullwake.runner.observe import RunnerSnapshot, SessionInfo

if TYPE_CHECKING:
    from pullwake.runner.dispatch import DispatchStats
    from pullwake.runner.heartbeat import HeartbeatRecord
    from pullwake.runner.machine import Machine

STATUS_WORDS = {
    RunnerState.STOPPED: "stopped",
    RunnerState.CONNECTING: "connecting",
    RunnerState.STREAMING: "streaming",
    RunnerState.RECONNECTING: "reconnecting",
    RunnerState.STOPPING: "stopping",
}

# the dispatcher's words -> the agents-server's `last_claim_result` enum
CLAIM_RESULT_WORDS = {
    "claimed": "claimed",
    "skipped": "no_work",
    "no_work": "no_work",
    "error": "error",
    "failed": "error",
}


def iso(ts: float | None) -> str | None:
    """Unix time -> RFC 3339 UTC with milliseconds and `Z`, as the original sends."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def claim_result_word(result: str | None) -> str | None:
    """`failed: 503` -> `error`; None stays None; anything unknown -> `error`."""
    if result is None:
        return None
    return CLAIM_RESULT_WORDS.get(result.split(":", 1)[0].strip(), "error")


class Diagnostics:
    """The facts that belong to no other part of the runner."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_byte_mono: float | None = None
        self.idle_timeout_s = 0.0

    def __repr__(self) -> str:
        return f"<Diagnostics last_error={self.last_error!r}>"

    def got_bytes(self) -> None:
        self.last_byte_mono = time.monotonic()

    def error(self, text: str) -> None:
        self.last_error, self.last_error_at = text[:500], time.time()

    def idle_seconds(self) -> float:
        if self.last_byte_mono is None:
            return 0.0
        return time.monotonic() - self.last_byte_mono


class RunnerView:
    """Every derived view of the runner, computed on demand from the sources above."""

    def __init__(
        self,
        config: RunnerConfig,
        diag: Diagnostics,
        machine: Callable[[], Machine],
        session: Callable[[], SessionInfo | None],
        heartbeats: Callable[[], HeartbeatRecord],
        stats: Callable[[], DispatchStats | None],
    ) -> None:
        self.config = config
        self.diag = diag
        self._machine = machine
        self._session = session
        self._heartbeats = heartbeats
        self._stats = stats

    def __repr__(self) -> str:
        return f"<RunnerView {self._machine()!r}>"

    # --- derived facts --------------------------------------------------------------
    def connected_since(self, m: Machine) -> float | None:
        """When the current session connected, while the machine says it is streaming."""
        info = self._session()
        if not m.connected or info is None or info.number != m.session:
            return None
        return info.connected_at

    def idle_timeout_s(self) -> float:
        return self.diag.idle_timeout_s if self.config.profile.idle_watchdog else 0.0

    # --- views ------------------------------------------------------------------------
    def snapshot(self, committed: str) -> RunnerSnapshot:
        m, hb = self._machine(), self._heartbeats()
        since = self.connected_since(m)
        return RunnerSnapshot(
            runner_id=self.config.runner_id,
            state=m.phase,
            stream_connected=m.connected,
            stream_connected_since=since,
            stream_age_s=max(0.0, time.time() - since) if since is not None else 0.0,
            stream_idle_s=self.diag.idle_seconds(),
            idle_timeout_s=self.idle_timeout_s(),
            reconnect_count=m.reconnects,
            consecutive_heartbeat_failures=hb.consecutive_failures,
            last_heartbeat_success_at=hb.last_success_at,
            last_heartbeat_ok=hb.last_ok,
            last_reconnect_reason=m.last_end,
            session_number=m.session,
            committed_offset=committed,
        )

    def as_dict(self) -> dict[str, Any]:
        """The original's sixteen fields, then pullwake's own (for /status)."""
        m, hb, stats, d = self._machine(), self._heartbeats(), self._stats(), self.diag
        return {
            "status": STATUS_WORDS[m.phase],
            "started_at": iso(d.started_at),
            "stream_connected": m.connected,
            "stream_connected_since": iso(self.connected_since(m)),
            "reconnect_count": m.reconnects,
            "last_error": d.last_error,
            "last_error_at": iso(d.last_error_at),
            "last_heartbeat_at": iso(hb.last_at),
            "last_heartbeat_ok": hb.last_ok,
            "last_claim_at": iso(stats.last_claim_at) if stats else None,
            "last_claim_result": claim_result_word(stats.last_claim_result) if stats else None,
            "last_dispatch_at": iso(stats.last_dispatch_at) if stats else None,
            "events_received": stats.events_received if stats else 0,
            "claims_succeeded": stats.claims_succeeded if stats else 0,
            "claims_skipped": stats.claims_skipped if stats else 0,
            "claims_failed": stats.claims_failed if stats else 0,
            "state": m.phase.value,
            "stream_idle_seconds": round(d.idle_seconds(), 3),
            "consecutive_heartbeat_failures": hb.consecutive_failures,
            "last_reconnect_reason": m.last_end.value if m.last_end else None,
            "profile": self.config.profile.name,
            "live_mode": self.config.live_mode.value,
        }

    def wire(self) -> dict[str, Any]:
        """What a heartbeat carries: only what the real server keeps, typed as it wants.

        `last_heartbeat_ok` is a boolean there: before the first heartbeat it is
        sent as false (as the original runner does), never null.
        """
        d = self.as_dict()
        if d["last_heartbeat_ok"] is None:
            d["last_heartbeat_ok"] = False
        return sanitize_diagnostics(d)

    def detectors(self, resume_threshold: float | None) -> dict[str, Any]:
        c, p = self.config, self.config.profile
        ka = c.keepalive
        return {
            "idle_watchdog": p.idle_watchdog,
            "idle_timeout_s": self.diag.idle_timeout_s if p.idle_watchdog else None,
            "idle_timeout_configured_s": c.idle_timeout,
            "heartbeat_bridge": p.heartbeat_bridge,
            "heartbeat_failure_threshold": c.bridge_threshold,
            "heartbeat_interval_s": c.heartbeat_interval,
            "heartbeat_timeout_s": c.hb_timeout,
            "resume_threshold_s": resume_threshold,
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
            "tail_probe": (
                {"interval_s": c.tail_probe_interval, "grace_s": c.tail_probe_grace}
                if p.tail_probe and c.tail_probe_interval > 0
                else None
            ),
            "hidden_retry": p.hidden_retry,
            "backoff_max_s": c.backoff_max,
        }

    def status(
        self,
        reconnects: list[dict[str, Any]],
        *,
        committed: str,
        read: str,
        queued: int,
        resume_threshold: float | None,
    ) -> dict[str, Any]:
        m, hb = self._machine(), self._heartbeats()
        since = self.connected_since(m)
        return {
            "runner_id": self.config.runner_id,
            "state": m.phase.value,
            "profile": self.config.profile.name,
            "live_mode": self.config.live_mode.value,
            "session": m.session,
            "stream_age_seconds": round(time.time() - since, 3) if since is not None else 0.0,
            "committed_offset": committed,
            "read_offset": read,
            "queued_wakes": queued,
            "last_heartbeat_success_at": iso(hb.last_success_at),
            "diagnostics": self.as_dict(),
            "detectors": self.detectors(resume_threshold),
            "reconnects": reconnects,
        }
