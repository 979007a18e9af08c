"""Where the checkout's files under test are: tests read them by absolute path,
never relative to the directory pytest was started from."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"  # the committed output of `pullwake dashboards build`
DOCS = ROOT / "docs"
