"""pullwake: a pull-wake runner that never lies about its stream.

Shared pieces live here (wire vocabulary, metric catalog, telemetry setup,
CLI); the runner, the server and the dashboards generator are their own
top-level packages: `runner`, `wakeserver`, `dashboards`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
