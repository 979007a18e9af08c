"""One HOST:PORT rule for every listener and upstream option."""

import pytest

from pullwake.core.addresses import parse_hostport


def test_host_and_port() -> None:
    assert parse_hostport("127.0.0.1:4437") == ("127.0.0.1", 4437)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    assert parse_hostport("localhost:0") == ("localhost", 0)


def test_default_host_takes_a_bare_port() -> None:
    assert parse_hostport("9000", default_host="127.0.0.1") == ("127.0.0.1", 9000)
    assert parse_hostport(":9000", default_host="127.0.0.1") == ("127.0.0.1", 9000)
    assert parse_hostport("0.0.0.0:9", default_host="127.0.0.1") == ("0.0.0.0", 9)


@pytest.mark.parametrize("bad", ["127.0.0.1", ":80", "h:x", "h:70000", "h:-1", "h:", ""])
def test_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_hostport(bad)


@pytest.mark.parametrize("bad", ["http", "127.0.0.1:http", "h:70000", ""])
def test_rejects_with_default_host(bad: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_hostport(bad, default_host="127.0.0.1")
