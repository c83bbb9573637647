"""The browser pages: live check-in (/checkin/), the staff check-in feed (/checkin/feed/) and face
verification (/verify/).

Both show the consent notice before any camera or photo is used. Check-in records consent over its
websocket (checkin.consumers); verification records it here, before the photos are sent.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from .consumers import KIOSK_SESSION_KEY, session_kiosk, sign_in_kiosk, sign_out_kiosk
from .edge_api import _period, checkin_notice, notice_version
from .models import Consent, Kiosk


def _notice_context(version: str) -> dict:
    return {
        "notice_version": version,
        "checkin_notice": checkin_notice(),
        "min_age": settings.CONSENT_MIN_AGE,
        # What the page's script needs, passed with json_script.
        "page_config": {
            "noticeVersion": version,
            "socketPath": "/ws/identify/",
            "consentUrl": reverse("verify-consent"),
            "verifyUrl": reverse("verify"),
        },
    }


@require_GET
def checkin(request):
    """The check-in page: sign in or register the kiosk, read the notice, consent, then the camera."""
    kiosk = session_kiosk(request.session)
    can_stream = kiosk is not None or request.user.is_authenticated
    context = {"kiosk": kiosk, "can_stream": can_stream}
    if kiosk is None and request.session.get(KIOSK_SESSION_KEY):
        context["kiosk_error"] = (
            "This device was signed out as a kiosk (a new token, or the kiosk deactivated): enter its token again."
        )
    return render(request, "checkin.html", {**context, **_notice_context(notice_version())})


@staff_member_required
@require_GET
def checkin_feed(request):
    """Staff: check-ins from every kiosk as they happen, over /ws/checkins/ (checkin.feed)."""
    config = {"socketPath": "/ws/checkins/", "rejectUrl": reverse("checkin-reject", args=[0])}
    return render(request, "checkin_feed.html", {"page_config": config})


@require_POST
def kiosk_sign_in(request):
    """Staff type a kiosk's token once on the device; the session then stands for the kiosk."""
    kiosk = Kiosk.objects.by_token(request.POST.get("token", "").strip())
    if kiosk is None:
        context = {"kiosk": None, "can_stream": request.user.is_authenticated, "kiosk_error": "That kiosk token is not valid."}
        return render(request, "checkin.html", {**context, **_notice_context(notice_version())}, status=400)
    request.session.cycle_key()
    sign_in_kiosk(request.session, kiosk)
    return redirect("checkin")


@require_POST
def kiosk_sign_out(request):
    sign_out_kiosk(request.session)
    return redirect("checkin")


def verify_kept() -> str:
    """What the verification notice says is kept, and for how long (the periods apply_retention enforces)."""
    return (
        "The photos, the faces found in them and the result are not kept. The site's security log notes that "
        f"your account compared two photos, when, from which network address and whether it worked "
        f"({_period(settings.AUDIT_LOG_RETENTION_DAYS)}), and the record of this consent (your account, the time, "
        f"this notice's version) is kept ({_period(settings.CHECKIN_RETENTION_DAYS)})."
    )


def verify_notice_version() -> str:
    """The verification notice's version: CONSENT_NOTICE_VERSION and the first 8 hex digits of the
    sha256 of what it says by configuration (what is kept for how long, the age of consent), as
    the check-in notice's (edge_api.notice_version): a changed period is a new version, and
    consent given to the old text is asked again rather than reused."""
    said = f"{verify_kept()}\n{settings.CONSENT_MIN_AGE}"
    return f"{settings.CONSENT_NOTICE_VERSION[:31]}+{hashlib.sha256(said.encode()).hexdigest()[:8]}"


@login_required
@require_GET
def verify(request):
    """Compare two faces: the page posts both photos to /api/v1/verify/ after consent. Neither the
    photos nor the result are stored; the notice says what is (recognition.answers.Verification)."""
    return render(request, "verify.html", {**_notice_context(verify_notice_version()), "verify_kept": verify_kept()})


@login_required
@require_POST
def verify_consent(request):
    """Record consent to the verification page's processing; answers JSON for the page's script."""
    version = verify_notice_version()
    if request.POST.get("notice_version") != version:
        return JsonResponse(
            {"error": {"code": "stale_notice", "message": "The notice has changed; reload the page and read it again."}},
            status=400,
        )
    if request.POST.get("age_confirmed") != "yes":
        return JsonResponse(
            {"error": {"code": "age_not_confirmed", "message": f"Confirm that you are at least {settings.CONSENT_MIN_AGE}."}},
            status=400,
        )
    given = {"purpose": Consent.Purpose.VERIFY, "user": request.user, "notice_version": version}
    hours = settings.VERIFY_CONSENT_REUSE_HOURS
    if hours > 0:
        # Every visit to the page posts consent: within the period the account's record of consent to
        # this notice stands (200, the same id), so repeated posts cannot pile up rows.
        since = timezone.now() - timedelta(hours=hours)
        recent = Consent.objects.filter(**given, withdrawn_at=None, given_at__gte=since).order_by("-given_at", "-id").first()
        if recent is not None:
            return JsonResponse({"consent_id": recent.pk}, status=200)
    consent = Consent.objects.create(**given, age_confirmed=True)
    return JsonResponse({"consent_id": consent.pk}, status=201)
