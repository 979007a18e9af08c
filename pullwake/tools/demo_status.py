"""The demo's status line: pure formatting of a runner's `/status` JSON.

Kept apart from `pullwake.demo` (which owns processes and sockets) so the
wording is tested without either.  Every field is ``key=value`` so a test or
a `grep` can read the line back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _age_s(iso: object, now: datetime) -> float | None:
    if not isinstance(iso, str) or not iso:
        return None
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def wakes_delivered(status: dict[str, Any]) -> int:
    """Wakes the runner handled (claimed and dispatched), from whichever field it reports."""
    wakes = status.get("wakes")
    if isinstance(wakes, dict) and isinstance(wakes.get("handled"), int):
        return int(wakes["handled"])
    diag = status.get("diagnostics") or {}
    for key in ("wakes_handled", "claims_succeeded"):
        if isinstance(diag.get(key), int):
            return int(diag[key])
    return 0


def format_status(
    elapsed: float,
    status: dict[str, Any] | None,
    published: int,
    server: str,
    with_runner: bool = True,
    now: datetime | None = None,
    publish_errors: int = 0,
    health: str | None = None,
    label: str | None = None,
) -> str:
    """One line: state, stream age, idle, reconnects, last heartbeat, wakes delivered,
    then the server's health verdict on the runner and the publisher's counts."""
    now = now or datetime.now(UTC)
    head = f"[{elapsed:5.0f}s]"
    if label:  # several runners side by side: which one this line is about
        head = f"{head} {label:<8}"
    tail = f"published={published} server={server}"
    if publish_errors:  # publishes refused while the server was down (chaos)
        tail = f"published={published} publish_errors={publish_errors} server={server}"
    if not with_runner:
        return f"{head} runner=absent {tail}"
    if status is None:
        return f"{head} state=? (runner status unavailable) {tail}"
    diag: dict[str, Any] = status.get("diagnostics") or {}
    connected = diag.get("stream_connected") is True
    age = status.get("stream_age_seconds")
    if not isinstance(age, int | float):
        age = _age_s(diag.get("stream_connected_since"), now)
    age = float(age) if connected and age is not None else None
    idle = diag.get("stream_idle_seconds")
    hb_ok = diag.get("last_heartbeat_ok")
    hb_age = _age_s(diag.get("last_heartbeat_at"), now)
    hb = "-" if hb_ok is None else f"{'ok' if hb_ok else 'FAIL'}/{_secs(hb_age)}"
    reason = diag.get("last_reconnect_reason")
    return " ".join(
        [
            head,
            f"state={status.get('state', '?')}",
            f"connected={'yes' if connected else 'no'}",
            f"age={_secs(age)}",
            f"idle={_secs(float(idle)) if isinstance(idle, int | float) else '-'}",
            f"reconnects={diag.get('reconnect_count', 0)}" + (f"({reason})" if reason else ""),
            f"heartbeat={hb}",
            f"delivered={wakes_delivered(status)}",
            f"health={health or '-'}",  # the server's view, e.g. degraded on a stream mismatch
            tail,
        ]
        # the seed's lie, said out loud: the stream "fine" while the heartbeats fail
        + (["<- LIE: connected while heartbeats fail"] if connected and hb_ok is False else [])
    )
