"""The runner diagnostics whitelist, exactly as upstream `sanitizeRunnerDiagnostics`.

Kept: `status` (six states), `stream_connected` / `last_heartbeat_ok`
(booleans), `last_claim_result` (null or claimed/no_work/error), seven
string-or-null fields, five finite non-negative numbers.  Everything else
is dropped silently.  The result keeps upstream's key order (it shows in
heartbeat answers and health), and is None when nothing survived (then the
stored diagnostics are left as they were).
"""

from __future__ import annotations

import math
from typing import Any

STATUSES = ("stopped", "starting", "connecting", "streaming", "reconnecting", "stopping")
CLAIM_RESULTS = ("claimed", "no_work", "error")
STRING_OR_NULL = (
    "started_at",
    "stream_connected_since",
    "last_error",
    "last_error_at",
    "last_heartbeat_at",
    "last_claim_at",
    "last_dispatch_at",
)
NUMBERS = (
    "reconnect_count",
    "events_received",
    "claims_succeeded",
    "claims_skipped",
    "claims_failed",
)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def sanitize(diagnostics: Any) -> dict[str, Any] | None:
    if not isinstance(diagnostics, dict) or not diagnostics:
        return None
    out: dict[str, Any] = {}
    status = diagnostics.get("status")
    if isinstance(status, str) and status in STATUSES:
        out["status"] = status
    for key in ("stream_connected", "last_heartbeat_ok"):
        if isinstance(diagnostics.get(key), bool):
            out[key] = diagnostics[key]
    if "last_claim_result" in diagnostics:
        result = diagnostics["last_claim_result"]
        if result is None or (isinstance(result, str) and result in CLAIM_RESULTS):
            out["last_claim_result"] = result
    for key in STRING_OR_NULL:
        if key in diagnostics and (diagnostics[key] is None or isinstance(diagnostics[key], str)):
            out[key] = diagnostics[key]
    for key in NUMBERS:
        if _number(diagnostics.get(key)):
            out[key] = diagnostics[key]
    return out or None
