"""Redirects are checked again: a public host cannot bounce the worker into a private network."""

import pytest

from services import errors, url_guard
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
        ("fe80::1", False),
        ("nonsense", False),
    ],
)
def test_address_classes(ip, public):
    assert url_guard.is_public(ip) is public
