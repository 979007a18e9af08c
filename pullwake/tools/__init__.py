"""Tools on top of the runner and the server: demo, stack, fault proxy, alert sink, docs.

A tool imports what it drives; nothing below imports a tool.
"""
