"""The audit log of recognition and verification calls: who, when, the result; never the image.

Views opt in with `AuditedView` and an `audit_action`, and hand it an `AuditSummary` of their
answer (`self.audit_summary`, e.g. `recognition.audit_summary()`); the event is written after the
response is built, for answers and refusals (their error code) alike. A failure to write the log
never fails the call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings

from .models import ApiKey, AuditEvent, person_ids_field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditSummary:
    """What one call leaves in the audit log: ``result`` (faces found, matches, similarities; small
    and JSON-ready, never an image or embedding) and ``person_ids``, the people it is logged against
    (those a recognition really matched, the person a verification was asked about)."""

    result: dict
    person_ids: tuple[int, ...] = ()


def refusal_summary(data) -> AuditSummary:
    """A refused call (the API's error shape): its error code only."""
    error = data.get("error") if isinstance(data, dict) else None
    return AuditSummary({"error": error.get("code")} if isinstance(error, dict) else {})


def actor_of(request) -> tuple:
    user = getattr(request, "user", None)
    user = user if user is not None and user.is_authenticated else None
    key = request.auth if isinstance(getattr(request, "auth", None), ApiKey) else None
    name = user.get_username() if user else "anonymous"
    if key:
        name = f"{name} / key {key.name!r}"
    return user, key, name[:200]


def record(request, action: str, status_code: int, summary: AuditSummary, duration_ms: int | None = None) -> None:
    try:
        user, key, actor = actor_of(request)
        AuditEvent.objects.create(
            action=action,
            user=user,
            api_key=key,
            actor=actor,
            client_address=request.META.get("REMOTE_ADDR") or None,
            status_code=status_code,
            result=summary.result,
            person_ids=person_ids_field(summary.person_ids),
            duration_ms=duration_ms,
        )
    except Exception:
        log.exception("could not write the audit event of a %s call", action)


class AuditedView:
    """Mixin for an APIView: every call to it is written to the audit log.

    A view that answers sets ``self.audit_summary`` (an ``AuditSummary``) before returning; any
    other response (a refusal, an error) is logged with its error code."""

    audit_action = ""

    def initial(self, request, *args, **kwargs):
        self._audit_started = time.monotonic()
        self.audit_summary = None
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        started = getattr(self, "_audit_started", None)
        duration = None if started is None else int((time.monotonic() - started) * 1000)
        # Calls refused before authentication (401) are counted by throttling, not audited.
        if response.status_code != 401:
            summary = getattr(self, "audit_summary", None) if response.status_code < 400 else None
            if summary is None:
                summary = refusal_summary(getattr(response, "data", None))
            record(request, self.audit_action, response.status_code, summary, duration)
        return response


# ---- live check-in websockets (checkin.consumers) ---------------------------------------------


def checkin_audit_retention_days() -> int:
    """How long a live check-in's audit rows that name a person are kept: no longer than the
    check-in they document, nor than any audit event (the shorter of CHECKIN_RETENTION_DAYS and
    AUDIT_LOG_RETENTION_DAYS, 0 meaning "kept"; 0 only when both keep). The check-in notice states
    it and privacy.services.apply_retention enforces it."""
    periods = [d for d in (settings.CHECKIN_RETENTION_DAYS, settings.AUDIT_LOG_RETENTION_DAYS) if d > 0]
    return min(periods, default=0)


def stream_actor(user=None, api_key: ApiKey | None = None, kiosk=None) -> str:
    """Who a socket acts for, in the audit log's words: the kiosk, the key, the user."""
    parts = []
    if kiosk is not None:
        parts.append(f"kiosk {kiosk.name!r}")
    if user is not None and getattr(user, "is_authenticated", False):
        parts.append(user.get_username())
    if api_key is not None:
        parts.append(f"key {api_key.name!r}")
    return (" / ".join(parts) or "anonymous")[:200]


def record_stream_event(
    action: str,
    *,
    user=None,
    api_key: ApiKey | None = None,
    kiosk=None,
    client_address: str | None = None,
    status_code: int = 200,
    result: dict | None = None,
    person_ids=(),
    duration_ms: int | None = None,
) -> None:
    """One audit row for a live identification decision over a websocket (never an image or frame).

    Used by /ws/identify/ for: ``checkin`` (a check-in made, naming its person, or found again,
    naming only the check-in) and ``stream`` (a socket's summary when it closes: counts, nobody
    named). Rows naming someone expire with the check-ins (AuditEvent.objects.naming_people_at_checkin).
    A failure to write the log never breaks the stream.
    """
    try:
        user = user if user is not None and getattr(user, "is_authenticated", False) else None
        AuditEvent.objects.create(
            action=action,
            user=user,
            api_key=api_key,
            actor=stream_actor(user, api_key, kiosk),
            client_address=client_address or None,
            status_code=status_code,
            result=result or {},
            person_ids=person_ids_field(person_ids),
            duration_ms=duration_ms,
        )
    except Exception:
        log.exception("could not write the audit event of a %s stream event", action)
