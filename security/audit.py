"""The audit log of recognition and verification calls: who, when, the result; never the image.

Views opt in with `AuditedView` and an `audit_action`; the event is written after the response is
built, for answers and refusals alike. A failure to write the log never fails the call.
"""

from __future__ import annotations

import logging
import time

from .models import ApiKey, AuditEvent, person_ids_field

log = logging.getLogger(__name__)


def summarise(action: str, status_code: int, data) -> dict:
    """The parts of a response worth keeping: faces found, matches, similarities, error codes."""
    if not isinstance(data, dict):
        return {}
    if "error" in data and isinstance(data["error"], dict):
        return {"error": data["error"].get("code")}
    if action == "recognize":
        faces = data.get("faces") or []
        return {
            "faces": len(faces),
            "matches": [
                {"person_id": f["match"]["person_id"], "similarity": f["match"]["similarity"]} for f in faces if f.get("match")
            ],
            "threshold": data.get("threshold"),
            "model_version": data.get("model_version"),
        }
    if action == "verify":
        return {
            key: data.get(key) for key in ("verified", "similarity", "threshold", "person_id", "compared_images") if key in data
        }
    return {}


def actor_of(request) -> tuple:
    user = getattr(request, "user", None)
    user = user if user is not None and user.is_authenticated else None
    key = request.auth if isinstance(getattr(request, "auth", None), ApiKey) else None
    name = user.get_username() if user else "anonymous"
    if key:
        name = f"{name} / key {key.name!r}"
    return user, key, name[:200]


def record(request, action: str, status_code: int, data, duration_ms: int | None = None) -> None:
    try:
        user, key, actor = actor_of(request)
        result = summarise(action, status_code, data)
        people = [m["person_id"] for m in result.get("matches", [])]
        if result.get("person_id") is not None:
            people.append(result["person_id"])
        AuditEvent.objects.create(
            action=action,
            user=user,
            api_key=key,
            actor=actor,
            client_address=request.META.get("REMOTE_ADDR") or None,
            status_code=status_code,
            result=result,
            person_ids=person_ids_field(people),
            duration_ms=duration_ms,
        )
    except Exception:
        log.exception("could not write the audit event of a %s call", action)


class AuditedView:
    """Mixin for an APIView: every call to it is written to the audit log."""

    audit_action = ""

    def initial(self, request, *args, **kwargs):
        self._audit_started = time.monotonic()
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        started = getattr(self, "_audit_started", None)
        duration = None if started is None else int((time.monotonic() - started) * 1000)
        # Calls refused before authentication (401) are counted by throttling, not audited.
        if response.status_code != 401:
            record(request, self.audit_action, response.status_code, getattr(response, "data", None), duration)
        return response
