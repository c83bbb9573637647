"""`Authorization: Token <key>`: role-limited API keys (security.models.ApiKey) and users' own tokens.

API keys are looked up by hash. A key that is not an ApiKey falls through to
ExpiringTokenAuthentication: the per-user token from /api/v1/auth/token/, which carries the user's
own rights, lasts API_TOKEN_TTL_HOURS and is deleted when the user's password changes or the
account is deactivated (security/signals.py). API keys are machine keys with explicit revocation
and do not expire.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from .models import ApiKey, hash_key
from .permissions import TokenScope, required_scope

# last_used_at is written at most this often per key, not on every request.
_TOUCH_EVERY = timedelta(minutes=1)


def authenticate_key(raw: str) -> ApiKey | None:
    """The usable ApiKey for a raw key, None if it is not an ApiKey; AuthenticationFailed if revoked."""
    key = ApiKey.objects.select_related("user").filter(key_hash=hash_key(raw)).first()
    if key is None:
        return None
    if key.is_revoked or not key.user.is_active:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > _TOUCH_EVERY:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


class ApiKeyAuthentication(TokenAuthentication):
    def authenticate(self, request):
        result = super().authenticate(request)
        # The role is enforced here as well as by the TokenScope permission, so that a view which
        # sets its own permission classes without TokenScope is still closed to a key outside its
        # role (a view naming no scope is open to staff keys only).
        view = (getattr(request, "parser_context", None) or {}).get("view")
        if result is not None and view is not None and not result[1].allows(required_scope(request, view)):
            raise exceptions.PermissionDenied(TokenScope.message)
        return result

    def authenticate_credentials(self, raw):
        key = authenticate_key(raw)
        if key is None:
            return None  # not one of ours: let the next authentication class try
        return key.user, key


TOKEN_EXPIRED = "This token has expired; ask /api/v1/auth/token/ for a new one."


def token_expired(token: Token) -> bool:
    """True once a user token is older than API_TOKEN_TTL_HOURS (0: tokens never expire)."""
    hours = settings.API_TOKEN_TTL_HOURS
    return hours > 0 and timezone.now() - token.created >= timedelta(hours=hours)


def issue_token(user) -> Token:
    """The user's token, a fresh one if theirs has expired (what /api/v1/auth/token/ hands out)."""
    token, created = Token.objects.get_or_create(user=user)
    if not created and token_expired(token):
        token.delete()
        token = Token.objects.create(user=user)
    return token


def user_for_token(raw: str) -> object | None:
    """The active user a raw user token stands for; None if unknown, expired (then deleted) or inactive.

    For callers outside DRF (the websocket consumers), applying the same expiry as the API."""
    token = Token.objects.select_related("user").filter(key=raw).first()
    if token is None or not token.user.is_active:
        return None
    if token_expired(token):
        token.delete()
        return None
    return token.user


class ExpiringTokenAuthentication(TokenAuthentication):
    """DRF's per-user token, refused (and deleted) once older than API_TOKEN_TTL_HOURS."""

    def authenticate_credentials(self, key):
        user, token = super().authenticate_credentials(key)
        if token_expired(token):
            token.delete()
            raise exceptions.AuthenticationFailed(TOKEN_EXPIRED)
        return user, token
