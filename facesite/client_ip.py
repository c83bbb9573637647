"""The client's address, trusting X-Forwarded-For only as far as the configured proxies.

One rule for the login lockout (django-axes), the API throttle and the audit log: with
TRUSTED_PROXY_COUNT = 0 (the default) the address is REMOTE_ADDR and X-Forwarded-For is ignored, since
any client can send that header. With N trusted proxies in front of the site, each appends the address
it received the request from, so the client is the N-th address from the right; what a client wrote
further left is never used. This is the same rule as DRF's NUM_PROXIES (settings.py sets both).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """The address to count and log a request under ("" if the server gave none)."""
    meta = request.META
    remote = meta.get("REMOTE_ADDR") or ""
    trusted = getattr(settings, "TRUSTED_PROXY_COUNT", 0)
    forwarded = meta.get("HTTP_X_FORWARDED_FOR")
    if trusted <= 0 or not forwarded:
        return remote
    addresses = [part.strip() for part in forwarded.split(",") if part.strip()]
    if not addresses:
        return remote
    return addresses[-min(trusted, len(addresses))]
