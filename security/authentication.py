"""`Authorization: Token <key>` for role-limited API keys (security.models.ApiKey).

Keys are looked up by hash. A key that is not an ApiKey falls through to DRF's TokenAuthentication
(the per-user token from /api/v1/auth/token/, which carries the user's own rights).
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

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
