"""What a locked-out login attempt gets back (django-axes' AXES_LOCKOUT_CALLABLE).

The API answers 429 in its error shape; the HTML login forms (/accounts/login/, /admin/login/) a page
saying why and for how long. Both carry Retry-After: the whole cool-off, since every further attempt
during a lockout starts it again (AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT, axes' default).
"""

from __future__ import annotations

import math
from datetime import timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

LOCKED_OUT_CODE = "locked_out"


def retry_after_seconds() -> int:
    return max(1, math.ceil(settings.LOGIN_LOCKOUT_MINUTES * 60))


def lockout_message() -> str:
    minutes = settings.LOGIN_LOCKOUT_MINUTES
    span = f"{minutes:g} minute{'s' if minutes != 1 else ''}"
    return (
        f"Too many failed sign-in attempts: signing in is locked for {span}. "
        "Each further attempt during the lock starts it again."
    )


def lockout_response(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    retry_after = str(retry_after_seconds())
    if request.path.startswith("/api/"):
        response = JsonResponse({"error": {"code": LOCKED_OUT_CODE, "message": lockout_message()}}, status=429)
    else:
        context = {"message": lockout_message(), "minutes": settings.LOGIN_LOCKOUT_MINUTES}
        response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = retry_after
    return response


def failure_limit(request=None, credentials=None) -> int:
    """AXES_FAILURE_LIMIT: read at each attempt, so LOGIN_FAILURE_LIMIT is the one setting."""
    return settings.LOGIN_FAILURE_LIMIT


def cool_off(request=None) -> timedelta:
    """AXES_COOLOFF_TIME: read at each attempt, so LOGIN_LOCKOUT_MINUTES is the one setting."""
    return timedelta(minutes=settings.LOGIN_LOCKOUT_MINUTES)
