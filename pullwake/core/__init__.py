"""The shared core: wire vocabulary, the metric catalog, telemetry set-up.

Everything else (runner, server, dashboards generator, tools) builds on this
package; it imports nothing above it.
"""
