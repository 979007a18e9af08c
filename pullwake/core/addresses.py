"""`HOST:PORT` parsing, one rule for every listener and upstream option.

The status listener, the alert sink, the fault proxy and `stack wait` all take
addresses on the command line; they share this parser so they accept and
reject the same things, and each caller words its own one-line error.
"""

from __future__ import annotations


def parse_hostport(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); `[::1]:80` gives `::1`.

    With `default_host`, a bare `PORT` or `:PORT` means that host.  Raises
    ValueError (message `expected HOST:PORT, got ...`) for anything else,
    including a port that is not a number in 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if default_host is not None:
        if not sep:
            host, sep, port = default_host, ":", text
        host = host or default_host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
