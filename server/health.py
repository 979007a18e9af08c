"""Runner health, exactly as upstream `GET /_electric/runners/:id/health` derives it.

Pure functions from stored facts.  `health.status` starts `healthy` and only
escalates; the seven issue strings and their order are upstream's.  The
server's own view of the wake stream (is it being read right now) is not part
of this answer upstream, so it is not here either: see `pullwake.server.view`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
ONLINE, OFFLINE, EXPIRED = "online", "offline", "expired"
RECONNECT_ISSUE_OVER = 5


def liveness_status(admin_status: str, lease_expires_at_ms: int | None, now_ms: int) -> str:
    """`offline` (disabled or never leased), `online` (lease ahead), `expired`."""
    if admin_status == "disabled" or lease_expires_at_ms is None:
        return OFFLINE
    return ONLINE if lease_expires_at_ms > now_ms else EXPIRED


def js_round(x: float) -> int:
    """`Math.round`: halves round up (Python's round() goes to even)."""
    return math.floor(x + 0.5)


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
    client: Mapping[str, Any] | None,
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
        ago = js_round((now_ms - lease_expires_at_ms) / 1000) if lease_expires_at_ms else 0
        escalate(UNHEALTHY, f"Heartbeat lease expired {ago}s ago")
    if liveness == OFFLINE and admin_status == "enabled":
        escalate(DEGRADED, "Runner has never sent a heartbeat")
    if client:
        if client.get("stream_connected") is False:
            escalate(DEGRADED, "Client reports stream disconnected")
        if client.get("last_heartbeat_ok") is False:
            escalate(DEGRADED, "Client reports last heartbeat failed")
        count = client.get("reconnect_count")
        if (
            isinstance(count, int | float)
            and not isinstance(count, bool)
            and count > RECONNECT_ISSUE_OVER
        ):
            escalate(DEGRADED, f"Client has reconnected {js_number(count)} times")
    elif last_seen_at_ms is not None:
        escalate(DEGRADED, "No client diagnostics available")
    return Health(status, tuple(issues))


def js_number(value: float) -> str:
    """A number as JavaScript prints it in a template string (7.0 -> 7)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)
