"""The runner diagnostics whitelist as the server applies it (upstream `sanitizeRunnerDiagnostics`).

The rules themselves live once, in `pullwake.core.protocol.sanitize_diagnostics`
(the runner sends exactly what they keep).  The server adds upstream's two
edges: anything but a non-empty object is "no diagnostics", and a result
with nothing left is None, so the stored diagnostics are left as they were.
"""

from __future__ import annotations

from typing import Any

from pullwake.core.protocol import sanitize_diagnostics


def sanitize(diagnostics: Any) -> dict[str, Any] | None:
    if not isinstance(diagnostics, dict) or not diagnostics:
        return None
    return sanitize_diagnostics(diagnostics) or None
