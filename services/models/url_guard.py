"""Fetch operator-supplied download URLs without reaching into private networks (SSRF).

Modelled on runpod 1.12's `rp_ssrf` (not imported: the SDK costs the API process 1.5 s and
63 MB): every hop's host is resolved and must be globally routable, the connection is pinned
to the address that was checked (no DNS rebinding between check and connect), and redirects
are followed by hand so that each one is checked again.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from services.core import errors

CHUNK = 256 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: the IPv4 address in its last 32 bits
_SIIT = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def is_public(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    address = embedded_ipv4(address) or address
    return address.is_global and address not in _CGNAT and not address.is_multicast


def embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to its destination (IPv4-mapped, 6to4, NAT64,
    IPv4-compatible): that address, not the IPv6 form, decides where the connection goes."""
    if address.version == 4:
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address in _NAT64 or address in _NAT64_LOCAL or address in _SIIT:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def split(url: object) -> SplitResult:
    """An http(s) URL with a host and a port that parses, or `UrlNotAllowed`: urllib raises
    ValueError for an unclosed `[`, a port that is no number or above 65535."""
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is not None:
            _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.UrlNotAllowed("only well-formed http(s) URLs with a host can be reached")
    return parts


def port_of(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The host's addresses; any non-public one refuses the whole host (unless allowed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError):  # no such name, a label IDNA cannot encode
        raise errors.UrlNotAllowed(f"cannot resolve host {host[:80]!r}") from None
    ips = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_private:
        for ip in ips:
            if not is_public(ip):
                raise errors.UrlNotAllowed(
                    f"{host} resolves to a private, loopback or link-local address; "
                    "set ALLOW_PRIVATE_DOWNLOADS=1 to allow it"
                )
    return ips


class _PinnedAdapter(HTTPAdapter):
    """Dial the checked address while keeping the URL's host for Host, SNI and certificates."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        super().__init__(max_retries=0)

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str,
        proxies: dict | None = None,
        cert: Any = None,
    ) -> Any:
        pool = super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        parts = urlsplit(request.url)
        if parts.scheme == "https":
            pool.assert_hostname = parts.hostname
            pool.conn_kw = {**(pool.conn_kw or {}), "server_hostname": parts.hostname}
        pool.host = self.ip
        return pool


def get(url: str, headers: dict[str, str], allow_private: bool, timeout: float = 30.0) -> requests.Response:
    """A streamed GET of `url`, following redirects only to addresses that pass the check.
    An Authorization header is dropped when a redirect leaves the first host."""
    current, sent = url, dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        response = _request("GET", current, sent, None, allow_private, timeout)
        if response.status_code not in REDIRECTS:
            return response
        location = response.headers.get("Location", "")
        response.close()
        try:
            following = urljoin(current, location)
        except ValueError:
            raise errors.DownloadFailed("a redirect's Location does not parse") from None
        if split(following).hostname != split(current).hostname:
            sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
        current = following
    raise errors.DownloadFailed("too many redirects")


class Unread(Exception):
    """`read` got no whole body: `reason` is `status` (the server's answer was not 200: `status`),
    `too_large`, `too_slow` or `broken` (the connection broke off or timed out)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


def read(url: str, allow_private: bool, timeout: float, cap: int) -> bytes:
    """The whole body of a checked GET of `url`, at most `cap` bytes within `timeout` seconds.
    Raises UrlNotAllowed, DownloadFailed (no server reached) or Unread."""
    deadline = time.monotonic() + timeout
    with get(url, {}, allow_private, timeout=timeout) as response:
        if response.status_code != 200:
            raise Unread("status", response.status_code)
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > cap:
            raise Unread("too_large")
        data = bytearray()
        try:
            for chunk in response.iter_content(CHUNK):
                data += chunk
                if len(data) > cap:
                    raise Unread("too_large")
                if time.monotonic() > deadline:
                    raise Unread("too_slow")
        except Unread:
            raise
        except Exception:  # requests/urllib3 errors of a connection that broke or timed out
            raise Unread("broken") from None
        return bytes(data)


def post(
    url: str, body: bytes, headers: dict[str, str], allow_private: bool, timeout: float
) -> requests.Response:
    """One streamed POST to the checked address; a redirect is answered, never followed."""
    return _request("POST", url, headers, body, allow_private, timeout)


def _request(
    method: str, url: str, headers: dict[str, str], body: bytes | None, allow_private: bool, timeout: float
) -> requests.Response:
    parts = split(url)
    ips = resolve(parts.hostname, port_of(parts), allow_private)
    session = requests.Session()
    session.trust_env = False  # a proxy would resolve the host itself and undo the pinning
    session.mount(f"{parts.scheme}://", _PinnedAdapter(ips[0]))
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    request_headers = {**headers, "Host": host if parts.port is None else f"{host}:{parts.port}"}
    try:
        response = session.request(
            method,
            url,
            headers=request_headers,
            data=body,
            stream=True,
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        session.close()
        raise errors.DownloadFailed(f"could not connect to {parts.hostname} ({type(exc).__name__})") from None
    return response
