"""`HOST:PORT` as flags and Sidecar endpoints write it: one parser for all of them."""

from __future__ import annotations

import pytest

from controlplane.addresses import InvalidAddress, host_for_url, parse_host_port


@pytest.mark.parametrize(
    ("text", "default_port", "expected"),
    [
        ("127.0.0.1:8080", None, ("127.0.0.1", 8080)),
        ("cp.example:15010", None, ("cp.example", 15010)),
        (":8080", None, ("", 8080)),
        ("[::]:9000", None, ("::", 9000)),
        ("[fd00::5]:9000", None, ("fd00::5", 9000)),
        ("localhost", 18001, ("localhost", 18001)),
        ("fd00::5", 18001, ("fd00::5", 18001)),
        ("[fd00::5]", 18001, ("fd00::5", 18001)),
        ("[fd00::5]:443", 18001, ("fd00::5", 443)),
    ],
)
def test_host_and_port(text: str, default_port: int | None, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default_port) == expected


@pytest.mark.parametrize(
    ("text", "default_port"),
    [
        ("localhost", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:70000", None),
        ("host:port", None),
        ("host:port", 80),
        ("a/b:80", None),
        ("fd00::5", None),
    ],
)
def test_what_is_not_host_and_port(text: str, default_port: int | None) -> None:
    with pytest.raises(InvalidAddress):
        parse_host_port(text, default_port)


def test_ipv6_hosts_go_in_brackets_before_a_port() -> None:
    assert [host_for_url(h) for h in ("::1", "127.0.0.1", "cp")] == ["[::1]", "127.0.0.1", "cp"]
