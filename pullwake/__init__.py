"""pullwake: a pull-wake runner that never lies about its stream.

One import name, in rooms: `pullwake.core` (the shared vocabulary: protocol,
metric catalog, telemetry set-up), `pullwake.runner`, `pullwake.server` and
`pullwake.dashboards` on top of it, `pullwake.tools` (demo, stack, proxy, sink,
docs, chaos) on top of those, and `pullwake.cli` dispatching the subcommands.
docs/architecture.md lists every module.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
