"""docs/metrics.md is generated from the catalog; a stale file fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pullwake.core.catalog import CATALOG
from pullwake.tools.docs import render_metrics
from tests.support.repo import ROOT


def test_committed_metrics_doc_is_current() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == render_metrics(), "docs/metrics.md is stale: run `pullwake docs metrics`"


def test_every_metric_and_label_value_is_documented() -> None:
    text = render_metrics()
    for m in CATALOG:
        assert f"`{m.name}`" in text and f"`{m.prom_name}`" in text
        for attr in m.attributes[1:]:
            for value in m.allowed_values(attr) or ():
                assert f"`{value}`" in text


def test_cli_check_and_write(tmp_path: Path) -> None:
    out = tmp_path / "metrics.md"
    run = [sys.executable, "-m", "pullwake", "docs", "metrics", "--output", str(out)]
    stale = subprocess.run([*run, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert stale.returncode == 2
    assert stale.stderr.count("\n") == 1 and "Traceback" not in stale.stderr
    assert subprocess.run(run, capture_output=True, cwd=ROOT).returncode == 0
    assert out.read_text(encoding="utf-8") == render_metrics()
    ok = subprocess.run([*run, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    out.write_text("edited\n", encoding="utf-8")
    again = subprocess.run([*run, "--check"], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and "stale" in again.stderr


def test_default_output_is_docs_metrics_md_under_the_current_directory(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "pullwake", "docs", "metrics"]
    missing = subprocess.run([*run, "--check"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "docs/metrics.md" in missing.stderr
    assert subprocess.run(run, capture_output=True, cwd=tmp_path).returncode == 0
    assert (tmp_path / "docs" / "metrics.md").read_text(encoding="utf-8") == render_metrics()
    ok = subprocess.run([*run, "--check"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
