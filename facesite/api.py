"""What the API shares across apps: one error shape for every app
({"error": {"code": "...", "message": "...", "fields": {...}}}) and who may read the roster, face
metadata and model versions."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import DatabaseError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.response import Response
from rest_framework.views import exception_handler

from recognition.engine.images import ImageError
from security.models import ApiKey, Role
from security.permissions import required_scope

log = logging.getLogger(__name__)


# ---- who may read ----------------------------------------------------------------------------------


def is_staff(request) -> bool:
    user = request.user
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


def may_read(request, scope: str | None, permissions: str | tuple[str, ...] = ()) -> bool:
    """Whether the caller has a read role, whatever the request's method: staff; an API key whose
    role grants ``scope`` (a client key, or a staff-role key of a non-staff account, for "read");
    or an account given, in the admin, one of the Django ``permissions``. A signed-in user's own
    session or token has none otherwise."""
    if is_staff(request):
        return True
    user = request.user
    if not (user and user.is_authenticated):
        return False
    key = request.auth
    if isinstance(key, ApiKey):
        return key.allows(scope)
    return any(user.has_perm(name) for name in ((permissions,) if isinstance(permissions, str) else permissions))


def may_read_people(request) -> bool:
    """Whether the caller may read the roster (GET /api/v1/people/): see ``may_read``."""
    return may_read(request, "read", "people.view_person")


class IsStaffOrReadRole(BasePermission):
    """Staff change and read everything; reading otherwise needs an explicit role.

    The people, their photos' metadata and the model versions (with their metrics) are biometric
    records: an account made only to use /checkin/ must not list them, so a signed-in user's own
    session or token reads nothing here. An explicit role may read: an API key whose role grants
    the view's read scope ("read": a client key, or a staff-role key of a non-staff account), or an
    account given, in the admin, a Django permission the view names in `read_permission` (one name
    or several, any of which will do). Writes always need a staff user: a key acts for its user,
    never beyond.
    """

    message = "Only staff, or an API key or account with a read role, may see this."

    def has_permission(self, request, view):
        if is_staff(request):
            return True
        if request.method not in SAFE_METHODS:
            return False
        return may_read(request, required_scope(request, view), getattr(view, "read_permission", ()))


class EdgeSyncKey(BasePermission):
    """A kiosk-role API key bound to an active kiosk (scope "edge_sync"), or staff.

    A key never has more rights than its user: any other key with the scope (a staff-role key)
    passes only if its user is active staff, as the user's own token would. A deactivated kiosk's
    key is refused here as on /ws/identify/, so that withdrawing a stolen kiosk also stops its edge
    sync (gallery, label map, model files) and its check-in uploads."""

    message = "Only a kiosk API key (bound to an active kiosk) or staff may use the edge sync API."

    def has_permission(self, request, view):
        key = request.auth
        if not isinstance(key, ApiKey):
            return is_staff(request)
        if not key.allows("edge_sync"):
            return False
        if key.role == Role.KIOSK:
            return key.kiosk_id is not None and key.kiosk.is_active
        return is_staff(request)


class StaffHoldsPermission(BasePermission):
    """What the admin asks of staff, asked over the API too where a request erases a person, exports
    a whole record or sends recognitions elsewhere: the Django permission the view names for the
    request's method (``staff_permissions``, e.g. ``{"DELETE": "people.delete_person"}``). A
    superuser holds every permission; a key acts with its user's. Staff status alone is what a
    reception account needs for the live feed and the dashboard; it erases and exports nobody."""

    def has_permission(self, request, view):
        wanted = getattr(view, "staff_permissions", {})
        # HEAD runs the GET handler (the export is built, only its body dropped): it asks what GET asks
        needed = wanted.get(request.method) or (wanted.get("GET") if request.method == "HEAD" else None)
        if needed is None:
            return True
        if request.user and request.user.has_perm(needed):
            return True
        self.message = f"This needs the permission {needed!r}, given in the admin (a superuser has it)."
        return False


WEBHOOK_PERMISSIONS = {
    "GET": "integrations.view_webhook",
    "HEAD": "integrations.view_webhook",
    "OPTIONS": "integrations.view_webhook",
    "POST": "integrations.add_webhook",
    "PUT": "integrations.change_webhook",
    "PATCH": "integrations.change_webhook",
    "DELETE": "integrations.delete_webhook",
}


# ---- one error shape -------------------------------------------------------------------------------


class ApiError(exceptions.APIException):
    """A 4xx with a machine-readable code, raised by views and services."""

    def __init__(self, code: str, message: str, status_code: int = status.HTTP_400_BAD_REQUEST, fields: dict | None = None):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.message = message
        self.fields = fields


# Codes whose HTTP status is not 400.
_IMAGE_STATUS = {"file_too_large": 413, "image_too_large": 413, "unsupported_format": 415}


def image_error(err: ImageError, field: str | None = None) -> ApiError:
    message = f"{field}: {err.message}" if field else err.message
    return ApiError(err.code, message, _IMAGE_STATUS.get(err.code, 400), fields={field: [err.message]} if field else None)


def request_limit_error(exc: Exception) -> ApiError | None:
    """Django's upload limits, raised while DRF parses a body: 413/400 rather than a 500."""
    from django.conf import settings

    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return ApiError("request_too_large", f"The request's form data is larger than {limit:,} bytes.", 413)
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return ApiError("too_many_fields", f"The request has more than {limit:,} form fields.")
    if isinstance(exc, TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return ApiError("too_many_files", f"The request has more than {limit:,} files.")
    return None


def api_exception_handler(exc, context):
    exc = request_limit_error(exc) or exc
    if isinstance(exc, ImageError):
        exc = image_error(exc)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RecursionError):
        # JSON nested thousands deep makes the parser recurse out of stack: the body is at fault.
        exc = exceptions.ParseError("The request body is nested too deeply.")
    response = exception_handler(exc, context)
    if response is None and _is_outage(exc):
        # The database or Redis is down or restarting: say so, and let the client retry.
        log.warning("service unavailable in %s: %s", context.get("view").__class__.__name__, exc)
        return Response(
            {"error": {"code": "service_unavailable", "message": "A back-end service is briefly unavailable; retry shortly."}},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    if response is None:
        # An unexpected error: log it with its trace, answer without one.
        log.exception("unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
        return Response(
            {"error": {"code": "server_error", "message": "The server could not complete the request."}},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, ApiError):
        body = {"code": exc.error_code, "message": exc.message}
        if exc.fields:
            body["fields"] = exc.fields
    elif isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        first_field, first_errors = next(iter(fields.items()), ("", [""]))
        first = first_errors[0] if isinstance(first_errors, list) and first_errors else first_errors
        body = {
            "code": "invalid",
            "message": f"{first_field}: {first}" if first_field != "non_field_errors" else str(first),
            "fields": fields,
        }
    else:
        codes = exc.get_codes() if hasattr(exc, "get_codes") else "error"
        code = codes if isinstance(codes, str) else "error"
        body = {"code": code, "message": str(exc.detail) if hasattr(exc, "detail") else str(exc)}
    response.data = {"error": body}
    return response


def _is_outage(exc: Exception) -> bool:
    if isinstance(exc, DatabaseError) and exc.__class__.__name__ in ("OperationalError", "InterfaceError"):
        return True
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return False
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError))
