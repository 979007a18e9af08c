"""Health derivation: pure functions from stored facts to status and issues.

Mirrors the original's issue set and meaning (status starts `healthy` and only
escalates), plus the server-side detector of the seed bug: the client's last
diagnostics say `stream_connected` but the server has had no open read of its
wake stream for longer than the grace period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pullwake.server.live import ServerView

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
ONLINE, OFFLINE, EXPIRED = "online", "offline", "expired"
MISMATCH_ISSUE = "Client reports stream connected but server has no open stream"
RECONNECT_ISSUE_OVER = 5


def liveness_status(admin_status: str, lease_expires_at_ms: int | None, now_ms: int) -> str:
    """`offline` (disabled or never leased), `online` (lease ahead), `expired`."""
    if admin_status == "disabled" or lease_expires_at_ms is None:
        return OFFLINE
    return ONLINE if lease_expires_at_ms > now_ms else EXPIRED


def stream_mismatch(
    diagnostics: Mapping[str, Any] | None, liveness: str, view: ServerView, grace: float
) -> bool:
    """The client claims a connected stream; the server sees none (beyond grace)."""
    if liveness != ONLINE or not diagnostics or diagnostics.get("stream_connected") is not True:
        return False
    return not view.stream_open and (view.closed_for is None or view.closed_for >= grace)


@dataclass(frozen=True)
class Health:
    status: str
    issues: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "issues": list(self.issues)}


def derive_health(
    *,
    admin_status: str,
    liveness: str,
    lease_expires_at_ms: int | None,
    last_seen_at_ms: int | None,
    diagnostics: Mapping[str, Any] | None,
    mismatch: bool,
    now_ms: int,
) -> Health:
    status = HEALTHY
    issues: list[str] = []

    def escalate(floor: str, issue: str) -> None:
        nonlocal status
        if floor == UNHEALTHY:
            status = UNHEALTHY
        elif status == HEALTHY:
            status = DEGRADED
        issues.append(issue)

    if admin_status == "disabled":
        escalate(UNHEALTHY, "Runner is disabled")
    if liveness == EXPIRED:
        # Math.round as the original: halves round up (Python's round() goes to even)
        ago = math.floor((now_ms - (lease_expires_at_ms or now_ms)) / 1000 + 0.5)
        escalate(UNHEALTHY, f"Heartbeat lease expired {ago}s ago")
    if liveness == OFFLINE and admin_status == "enabled":
        escalate(DEGRADED, "Runner has never sent a heartbeat")
    if diagnostics:
        if diagnostics.get("stream_connected") is False:
            escalate(DEGRADED, "Client reports stream disconnected")
        if diagnostics.get("last_heartbeat_ok") is False:
            escalate(DEGRADED, "Client reports last heartbeat failed")
        count = diagnostics.get("reconnect_count")
        if isinstance(count, int) and not isinstance(count, bool) and count > RECONNECT_ISSUE_OVER:
            escalate(DEGRADED, f"Client has reconnected {count} times")
    elif last_seen_at_ms is not None:
        escalate(DEGRADED, "No client diagnostics available")
    if mismatch:
        escalate(DEGRADED, MISMATCH_ISSUE)
    return Health(status, tuple(issues))
