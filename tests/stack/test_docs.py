"""docs/stack.md stays true to the files it describes."""

from __future__ import annotations

import re

from tests.stack.repo import ROOT, services

DOC = (ROOT / "docs" / "stack.md").read_text()


def test_every_compose_service_and_pinned_image_is_documented() -> None:
    for name, svc in services().items():
        assert f"`{name}`" in DOC, f"docs/stack.md does not mention service {name}"
        assert f"`{svc['image']}`" in DOC, f"docs/stack.md does not pin {svc['image']}"


def test_documented_localhost_ports_are_published() -> None:
    published = {p.split(":")[0] for s in services().values() for p in s.get("ports", [])}
    for port in re.findall(r"localhost:(\d+)", DOC):
        assert port in published, f"docs/stack.md names localhost:{port}, compose publishes none"


def test_documented_stack_up_command_lines_parse() -> None:
    from pullwake.cli import build_parser

    lines = [
        ln.split("#")[0].split() for ln in DOC.splitlines() if ln.startswith("pullwake stack up")
    ]
    assert len(lines) >= 2
    for argv in lines:
        build_parser().parse_args(argv[1:])  # SystemExit fails the test
