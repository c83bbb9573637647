"""Scope checks for role-limited API keys."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from .models import ApiKey


def required_scope(request, view) -> str | None:
    """The scope a view needs: `token_scope`, or `token_scope_read` / `token_scope_write` by method."""
    if request.method in SAFE_METHODS and hasattr(view, "token_scope_read"):
        return view.token_scope_read
    if request.method not in SAFE_METHODS and hasattr(view, "token_scope_write"):
        return view.token_scope_write
    return getattr(view, "token_scope", None)


class TokenScope(BasePermission):
    """An API key may only call views within its role; users' own tokens and sessions pass through.

    A view that declares no scope is open to staff keys only.
    """

    message = "This API key's role does not allow this call."

    def has_permission(self, request, view):
        key = request.auth
        if not isinstance(key, ApiKey):
            return True
        return key.allows(required_scope(request, view))
