"""docs/stack.md stays true to the files it describes."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.tools.repo import ROOT, published, services

DOC = (ROOT / "docs" / "stack.md").read_text()


def test_every_compose_service_and_pinned_image_is_documented() -> None:
    for name, svc in services().items():
        assert f"`{name}`" in DOC, f"docs/stack.md does not mention service {name}"
        assert f"`{svc['image']}`" in DOC, f"docs/stack.md does not pin {svc['image']}"


def test_the_dockerfile_base_image_is_documented() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    base = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert base and all(f"`{b}`" in DOC for b in base), base


def test_documented_localhost_ports_are_published() -> None:
    host_ports = {str(port) for s in services().values() for _, port, _ in published(s)}
    for port in re.findall(r"localhost:(\d+)", DOC):
        assert port in host_ports, f"docs/stack.md names localhost:{port}, compose publishes none"


def test_documented_stack_up_command_lines_parse() -> None:
    from pullwake.cli import build_parser

    lines = [
        ln.split("#")[0].split() for ln in DOC.splitlines() if ln.startswith("pullwake stack up")
    ]
    assert len(lines) >= 2
    for argv in lines:
        build_parser().parse_args(argv[1:])  # SystemExit fails the test


def dashboards() -> list[dict[str, Any]]:
    folder = ROOT / "deploy" / "grafana" / "dashboards"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def panel_titles(panels: list[dict[str, Any]]) -> set[str]:
    out = set()
    for p in panels:
        out.add(p.get("title", ""))
        out |= panel_titles(p.get("panels", []))
    return out


def test_named_dashboards_and_panels_exist() -> None:
    """'What to look at first' sends people to **dashboards** and *panels* by name."""
    section = DOC.split("### What to look at first", 1)[1].split("\n#", 1)[0]
    text = " ".join(section.split())  # names may wrap across lines
    boards = {d["title"]: d for d in dashboards()}
    bold = set(re.findall(r"\*\*([^*]+)\*\*", text))
    italic = set(re.findall(r"(?<!\*)\*([^*\s][^*]*)\*(?!\*)", text))
    assert bold and italic
    assert bold <= set(boards), bold - set(boards)
    panels = set().union(*(panel_titles(d["panels"]) for d in boards.values()))
    assert italic <= panels, italic - panels
    home = re.search(r"home dashboard, \*\*([^*]+)\*\*", text)
    assert home, "docs/stack.md names Grafana's home dashboard"
    path = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    on_disk = ROOT / "deploy" / "grafana" / "dashboards" / path.rsplit("/", 1)[1]
    assert json.loads(on_disk.read_text())["title"] == home.group(1)


def test_named_alerts_exist() -> None:
    rules = ROOT / "deploy" / "prometheus" / "rules"
    alerts = {
        r["alert"]
        for f in rules.glob("*.yml")
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    named = set(re.findall(r"PullWake\w+", DOC))
    assert named and named <= alerts, named - alerts


def test_readme_points_at_the_stack_doc() -> None:
    assert "docs/stack.md" in (ROOT / "README.md").read_text()
