"""Per-token request rates (DRF throttling) shared by every worker through the cache (Redis in production)."""

from __future__ import annotations

import logging

from rest_framework.throttling import SimpleRateThrottle

from facesite.client_ip import client_ip

from .models import ApiKey, Role

log = logging.getLogger(__name__)


class TokenRateThrottle(SimpleRateThrottle):
    """Counts requests per user (all of the user's API keys, tokens and sessions together), per kiosk
    for kiosk keys, else per client address.

    The rate comes from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] by role: an API key's role, "staff"
    for staff users' own tokens and sessions, "client" for other users, "anon" for anonymous callers.
    """

    def _role(self, request) -> str:
        if isinstance(request.auth, ApiKey):
            return request.auth.role
        user = request.user
        if user and user.is_authenticated:
            return Role.STAFF if user.is_staff else Role.CLIENT
        return "anon"

    def allow_request(self, request, view):
        self.scope = self._role(request)
        self.rate = self.THROTTLE_RATES.get(self.scope)
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except Exception as err:
            # The shared cache (Redis) is down or restarting: serve rather than refuse everyone.
            log.warning("throttling skipped, the cache is unavailable: %s", err)
            return True

    def get_rate(self):
        return None  # chosen per request in allow_request

    def get_ident(self, request) -> str:
        # Not DRF's: with NUM_PROXIES unset that trusts any client's X-Forwarded-For. The address is
        # taken through TRUSTED_PROXY_COUNT proxies only, as for the login lockout and the audit log.
        return client_ip(request)

    def get_cache_key(self, request, view):
        key = request.auth if isinstance(request.auth, ApiKey) else None
        # A kiosk key stands for a device: each kiosk keeps its own count, however many kiosks one
        # account holds keys for. Any other key counts against its user, so that issuing oneself
        # more keys does not multiply one's rate.
        if key is not None and key.role == Role.KIOSK:
            ident = f"kiosk-{key.kiosk_id}" if key.kiosk_id is not None else f"key-{key.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"addr-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class ScopedTokenThrottle(TokenRateThrottle):
    """A view's own rate, besides the role's: the ``throttle_scope`` it names (a key of
    REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]), counted as the role's rate is (per user, per kiosk for
    kiosk keys, else per address). For
    the requests that cost far more than an ordinary one: a photo stored and processed, a whole
    record zipped, a site-wide scan, a report of every person-day."""

    bound_scope: str | None = None  # set by ``scoped_throttle``: the scope, whatever the view names

    def allow_request(self, request, view):
        self._scope = self.bound_scope or getattr(view, "throttle_scope", None)
        return super().allow_request(request, view)

    def _role(self, request) -> str:
        return self._scope or ""


def scoped_throttle(scope: str) -> type[ScopedTokenThrottle]:
    """A ScopedTokenThrottle counting under ``scope`` itself, for a view that throttles some of its
    requests only (``get_throttles`` by method) and so names no ``throttle_scope`` of its own."""
    return type(f"{scope.title()}TokenThrottle", (ScopedTokenThrottle,), {"bound_scope": scope})
