"""`new Date(string)` for the strings a heartbeat may carry (pure).

Upstream turns `liveness_lease_expires_at` into a Date and stores it; an
unparsable value fails the request with a 500.  This accepts what V8 accepts
in practice for such values: ISO 8601 (date-only = UTC; a date-time without
an offset = local time, our servers run in UTC) and RFC 2822 dates.
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime

MAX_MS = 8_640_000_000_000_000  # the ECMAScript time value range

_ISO = re.compile(
    r"^([+-]\d{6}|\d{4})(?:-(\d{2})(?:-(\d{2}))?)?"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?$"
)


def parse_ms(text: str) -> int | None:
    """Unix milliseconds, or None where `new Date(text)` is an Invalid Date."""
    m = _ISO.match(text.strip())
    try:
        if m is not None:
            year, month, day, hh, mi, ss, frac, tz = m.groups()
            if hh is not None and tz is None and day is None:
                return None
            dt = datetime(
                int(year),
                int(month or 1),
                int(day or 1),
                int(hh or 0),
                int(mi or 0),
                int(ss or 0),
                tzinfo=UTC,
            )
            ms = int(dt.timestamp() * 1000) + int((frac or "0").ljust(3, "0")[:3])
            if tz not in (None, "Z"):
                sign = 1 if tz[0] == "+" else -1
                ms -= sign * (int(tz[1:3]) * 60 + int(tz[4:6])) * 60_000
        else:
            parsed = email.utils.parsedate_to_datetime(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            ms = int(parsed.timestamp() * 1000)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    return ms if abs(ms) <= MAX_MS else None
