"""Counting a runner's series per catalog metric (the series budget tests).

Shared by tests/core/test_series_budget.py (providers in process) and
tests/runner/test_series_budget_faults.py (a runner process through faults).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from pullwake.core.catalog import CATALOG, Budget, Component


def scrape_counts(text: str) -> Counter[str]:
    """Series per catalog metric (and `target_info`) in a Prometheus exposition."""
    names = {s: m.name for m in CATALOG for s in m.prom_series}
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        out[names.get(name, name)] += 1
    return out


def report_table(scrape: Mapping[str, int], otlp: Mapping[str, int]) -> str:
    """Measured series per runner metric on each path next to its budget."""
    rows = [f"{'metric':48} {'/metrics':>8} {'OTLP':>5} {'budget':>9}"]
    for m in (m for m in CATALOG if m.component is Component.RUNNER):
        b = m.budget or Budget(0, 0)
        rows.append(
            f"{m.name:48} {scrape.get(m.name, 0):>8} {otlp.get(m.name, 0):>5}"
            f" {b.scrape:>4}/{b.otlp:<4}"
        )
    return "\n".join(rows)
