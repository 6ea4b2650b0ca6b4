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
