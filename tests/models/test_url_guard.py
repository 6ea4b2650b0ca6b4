"""Redirects are checked again: a public host cannot bounce the worker into a private network."""

import pytest

from services.core import errors
from services.models import url_guard
from tests.file_server import FileServer


@pytest.fixture
def server():
    server = FileServer()
    server.files = {"ok.bin": b"x" * 10}
    yield server
    server.stop()


def test_a_redirect_to_a_private_address_is_refused_before_connecting(server, monkeypatch):
    monkeypatch.setattr(
        url_guard, "is_public", lambda ip: ip == "127.0.0.1"
    )  # our loopback server plays a public host
    server.redirect_to = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(errors.UrlNotAllowed):
        url_guard.get(f"{server.url}/redirect/x", {}, allow_private=False)
    server.redirect_to = f"{server.url}/file/ok.bin"
    assert url_guard.get(f"{server.url}/redirect/x", {}, allow_private=False).content == b"x" * 10


def test_the_token_does_not_follow_a_redirect_to_another_host(server):
    server.redirect_to = f"http://localhost:{server.server_address[1]}/file/ok.bin"
    url_guard.get(
        f"{server.url}/redirect/x", {"Authorization": "Bearer t", "Range": "bytes=2-"}, allow_private=True
    )
    first, second = server.requests[-2:]
    assert first["auth"] == "Bearer t" and second["auth"] is None and second["range"] == "bytes=2-"


@pytest.mark.parametrize(
    "ip,public",
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("100.64.1.1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("64:ff9b:1::7f00:1", False),  # local-use NAT64 (RFC 8215) of 127.0.0.1
        ("64:ff9b:1::808:808", True),
        ("::ffff:0:7f00:1", False),  # SIIT (IPv4-translated) of 127.0.0.1
        ("::ffff:0:808:808", True),
        ("2002:a00:1::", False),  # 6to4 of 10.0.0.1
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("::10.0.0.1", False),  # IPv4-compatible
        ("::169.254.169.254", False),
        ("::1", False),
        ("::", False),
        ("2001:4860:4860::8888", True),
        ("fe80::1", False),
        ("nonsense", False),
    ],
)
def test_address_classes(ip, public):
    assert url_guard.is_public(ip) is public


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://[::1/x.png", "http://h:70000/x", "http://h:port/x", "ftp://h/x", "http:///x", 7],
)
def test_a_url_that_does_not_parse_is_refused_with_a_code_not_a_value_error(url):
    with pytest.raises(errors.UrlNotAllowed):
        url_guard.split(url)
    with pytest.raises(errors.UrlNotAllowed):
        url_guard.get(url, {}, allow_private=True)


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..b", "x\x00y"])
def test_a_host_no_resolver_takes_is_refused_with_a_code(host):
    with pytest.raises(errors.UrlNotAllowed):
        url_guard.resolve(host, 80, allow_private=True)
