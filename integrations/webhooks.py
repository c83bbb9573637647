"""Signing and sending one webhook POST safely: public addresses only, pinned, bounded in time and size.

The address is checked when an endpoint is registered and again at every send, because DNS may have
changed in between: every address the name resolves to must be public (unless WEBHOOK_ALLOW_PRIVATE),
and the connection goes to an address that was checked, never through a second lookup. Redirects are
not followed, and at most RESPONSE_READ_LIMIT bytes of the answer are read.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

RESPONSE_READ_LIMIT = 4096  # bytes of a receiver's answer kept (and read) at most
USER_AGENT = "facesite-webhooks/1"


class UnsafeUrl(ValueError):
    """The URL cannot be used: bad form, no address, or an address that is not public."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]  # checked addresses, in resolver order


@dataclass(frozen=True)
class Answer:
    status: int | None  # HTTP status, None when no answer came
    error: str  # "" on a 2xx

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def signature(secret: str, body: bytes) -> str:
    """The X-Facesite-Signature header value: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# NAT64's well-known prefix (RFC 6052): the IPv4 address is the last 32 bits. A DNS64 resolver on an
# IPv6-only network answers public IPv4 hosts with it, so it is decoded, not refused.
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
# IPv6 forms that lead to an IPv4 address that cannot be checked from the address alone, or that no
# resolver should return: refused outright. (Teredo, 2001::/32, is refused too: ``.teredo``.)
REFUSED_IPV6 = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215): where the IPv4 sits is the network's choice
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible ::a.b.c.d (deprecated, RFC 4291); also :: and ::1
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), which is where it leads."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None or any(ip in network for network in REFUSED_IPV6):
            return False
        # Judged by the IPv4 address it embeds (Python's is_global for these prefixes varies by version).
        ip = _embedded_ipv4(ip) or ip
    return ip.is_global and not ip.is_multicast


def resolve(url: str) -> Target:
    """Parse and resolve ``url``; raise UnsafeUrl unless every address is allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        raise UnsafeUrl(f"Not a valid URL: {err}.") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("Only http:// and https:// URLs are accepted.")
    if not parts.hostname:
        raise UnsafeUrl("The URL has no host.")
    if parts.username or parts.password:
        raise UnsafeUrl("Credentials in the URL are not accepted; the signature authenticates deliveries.")
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise UnsafeUrl(f"The host {parts.hostname!r} does not resolve: {err}.") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeUrl(f"The host {parts.hostname!r} has no address.")
    if not settings.WEBHOOK_ALLOW_PRIVATE:
        refused = [a for a in addresses if not _is_public(a)]
        if refused:
            raise UnsafeUrl(
                f"The host {parts.hostname!r} resolves to a private, loopback or reserved address ({refused[0]}); "
                "webhooks may only call public addresses."
            )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path, addresses)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address while the Host header keeps the name."""

    def __init__(self, address: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a checked address, verifying the certificate against the URL's host name (SNI too)."""

    def __init__(self, address: str, *args, **kwargs):
        super().__init__(*args, context=ssl.create_default_context(), **kwargs)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _Deadline:
    """Shuts ``connection``'s socket down after ``seconds`` (at once if none are left)."""

    def __init__(self, connection: http.client.HTTPConnection, seconds: float):
        self.passed = False
        self._connection = connection
        self._timer = threading.Timer(max(seconds, 0.0), self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        self.passed = True
        sock = self._connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def cancel(self) -> None:
        self._timer.cancel()


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST ``body`` to ``url`` once. Never raises for network or receiver trouble: it is in the Answer."""
    try:
        target = resolve(url)
    except UnsafeUrl as err:
        return Answer(None, str(err))
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    error = ""
    deadline = time.monotonic() + settings.WEBHOOK_DEADLINE_SECONDS
    for address in target.addresses:
        connection = connection_class(address, target.host, target.port, timeout=timeout)
        # WEBHOOK_TIMEOUT_SECONDS bounds each socket operation; a receiver trickling a byte at a
        # time would keep one delivery (and the worker running it) for as long as it likes. At
        # the deadline the socket is shut down under whatever read or write is waiting.
        cut = _Deadline(connection, deadline - time.monotonic())
        try:
            connection.request("POST", target.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(RESPONSE_READ_LIMIT)
        except ConnectionRefusedError as err:
            error = f"{address}: {err}"
            continue  # the next address may answer
        except (OSError, ValueError, http.client.HTTPException) as err:  # ValueError: InvalidURL
            if cut.passed:
                return Answer(None, f"The receiver took more than {settings.WEBHOOK_DEADLINE_SECONDS:g} s in all: cut off.")
            return Answer(None, f"{type(err).__name__}: {err}"[:500])
        finally:
            cut.cancel()
            connection.close()
        if 300 <= response.status < 400:
            return Answer(response.status, f"Redirect to {response.getheader('Location', '?')[:200]} not followed.")
        if not 200 <= response.status < 300:
            return Answer(response.status, f"The receiver answered {response.status} {response.reason}"[:500])
        return Answer(response.status, "")
    return Answer(None, f"No address accepted the connection ({error}).")
