"""/api/v1/edge/: what an offline edge kiosk (edge/ in the repo) syncs with a kiosk API key.

``manifest/`` names the active model version's files and their sha256 sums (on a fused site also
dlib's network, the second .tflite), the consent notice, the check-in rule (stable frames,
re-embedding, repeat window) and the ids of the people deactivated since the device's label map was
trained (the kiosk masks them until the next retrain drops them), so the kiosk applies the server's
rules. ``gallery/`` is the gallery for nearest-neighbour serving in bounded pages: a full sync, then
deltas (faces changed since a signed cursor, and the people whose faces to replace, from the gallery
change log), with the served embedder's templates (FaceNet's 128-d or the fused 256-d).
Kiosk keys need the "edge_sync" scope (security.models.ROLE_SCOPES); staff may call these too.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from facesite.api import ApiError, EdgeSyncKey
from integrations.models import Webhook
from security.audit import checkin_audit_retention_days
from security.models import ApiKey


def checkin_notice() -> dict:
    """What the check-in notice says is processed, why, what is kept for how long and who else
    receives it: the same words on the browser page and the edge kiosk. The periods are the ones
    apply_retention enforces; the audit entries are those checkin.consumers writes."""
    return {
        "what": "pictures of the face in front of the camera, a few per second, and the identity they match "
        "among the people enrolled here.",
        "why": "to recognize enrolled people and record that they checked in.",
        "kept": f"A check-in record is kept ({_period(settings.CHECKIN_RETENTION_DAYS)}): the name, the time, how sure "
        "the match was and this device. The site's security log notes the same check-in with this device's network "
        f"address ({_period(checkin_audit_retention_days())}); a check-in staff reject as the wrong person is no "
        "longer named there. Someone recognized but not checked in is not recorded: when the camera stops, the "
        "log counts the faces seen, never whose." + recipients_notice() + visitor_notice(),
    }


def _period(days: int) -> str:
    return f"for {days} days, then deleted" if days > 0 else "until staff delete it"


def recipients_notice() -> str:
    """Who else receives a check-in: the systems staff connected (a webhook subscribed to check-in
    events, the MQTT broker; integrations.events). The sentence is there exactly while one is."""
    webhooks = any(Webhook.objects.subscribed_to(event) for event in ("checkin.created", "checkin.rejected"))
    if not (webhooks or settings.MQTT_URL):
        return ""
    return (
        " Each check-in (the name, the time, how sure the match was and this device) is also sent at once to "
        "the other systems this site is connected to; staff can tell you which."
    )


def visitor_notice() -> str:
    """What the check-in page keeps about a face that matches nobody (visitors app), and why."""
    if not settings.VISITORS_ENABLED:
        return ""
    days = settings.VISITOR_RETENTION_DAYS
    crop = " and one small picture of the face" if settings.VISITOR_KEEP_CROP else " (never a picture)"
    return (
        f" If your face matches nobody enrolled here, the check-in page keeps a numeric description of it (a face "
        f"embedding){crop}, with the time and this device, for {days} days, then deletes it: so that staff can tell "
        "a returning visitor and enroll you if you ask them to. Stop deletes it at once."
    )


def notice_version() -> str:
    """The version of the check-in notice served now: CONSENT_NOTICE_VERSION and the first 8 hex
    digits of the sha256 of the notice's text (``2026-12-2+1a2b3c4d``). What the notice says also
    follows the configuration (retention periods, VISITORS_*, the minimum age, a webhook subscribed
    to check-ins, MQTT_URL): a different text is a different version, so consent given to the old
    one is asked again rather than counted for the new one (live.record_consent, the manifest's
    version the kiosk compares, services.notice_in_force)."""
    configured = settings.CONSENT_NOTICE_VERSION
    digest = hashlib.sha256(_rendered_notice(configured).encode()).hexdigest()[:8]
    # 40 characters where versions are stored (Consent, NoticeVersion); the text, and so the
    # digest, names the whole configured version
    return f"{configured[:31]}+{digest}"


def notice_text(version: str | None = None) -> str:
    """The check-in page's consent notice as plain text (the kiosk shows it before the camera
    starts), naming ``version`` (notice_version(), computed when not given)."""
    return _rendered_notice(version or notice_version())


def _rendered_notice(version: str) -> str:
    html = render_to_string(
        "consent_notice.html",
        {
            **checkin_notice(),
            "notice_version": version,
            "min_age": settings.CONSENT_MIN_AGE,
            "start_label": "",
        },
    )
    lines = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", line)).strip() for line in re.split(r"</p>|</h2>|</label>", html)]
    return "\n".join(line for line in lines if line)


def inactive_people(active, held: str | None) -> list[int]:
    """The people a device must never name although its label map may: those deactivated since the
    oldest of the active version and the one the device holds (``held``, its number; ``0``: none) was
    queued for training. A label map only names people active when it was trained, so the list is
    bounded by the deactivations since, not by every person ever deactivated. A device that does not
    say (an older client), or holds a version the server no longer knows, gets every one.

    A deactivation is a ``save()`` (it queues a retrain and logs the gallery change), so
    ``updated_at`` is at or after it; an hour's margin covers clocks of several web hosts."""
    from people.models import Person
    from training.models import ModelVersion

    since = active.created_at if active is not None else None
    if held in (None, ""):
        since = None
    else:
        try:
            number = int(held)
        except ValueError:
            raise ApiError(
                "invalid", "version must be a model version number (0: none).", fields={"version": ["Invalid."]}
            ) from None
        if not number and active is None:
            return []  # no label map here or there: nobody to mask (the gallery delta drops their faces)
        if number:
            theirs = ModelVersion.objects.filter(number=number).values_list("created_at", flat=True).first()
            since = None if theirs is None else min(since or theirs, theirs)
    people = Person.objects.filter(is_active=False)
    if since is not None:
        people = people.filter(updated_at__gte=since - timedelta(hours=1))
    return sorted(people.values_list("pk", flat=True))


class EdgeManifestView(APIView):
    """GET ?version=<number of the version the device holds, 0: none>: the active version's files
    (URLs, sha256), the consent notice, the check-in rule and ``inactive_people``, the ids of the
    people deactivated since that version or the active one was queued (``inactive_people()``)."""

    permission_classes = [EdgeSyncKey]
    token_scope = "edge_sync"

    @extend_schema(
        parameters=[OpenApiParameter("version", int, description="The model version the device holds (0: none)")],
        responses={200: OpenApiTypes.OBJECT},
        summary="The active model's files, the consent notice and the check-in rule",
    )
    def get(self, request):
        from training.models import ModelVersion

        from .services import current_notice

        notice = current_notice().version  # the notice history starts when a version is first served
        version = ModelVersion.objects.active()
        model = None
        if version is not None and version.tflite and version.labels:
            model = {
                "id": version.pk,
                "number": version.number,
                "recogniser": version.recognizer,
                "tflite_sha256": version.tflite_sha256,
                "labels_sha256": version.labels_sha256,
                "tflite_url": request.build_absolute_uri(reverse("model-tflite", args=[version.pk])),
                "labels_url": request.build_absolute_uri(reverse("model-labels", args=[version.pk])),
            }
            if version.dlib_tflite:  # a fused site's second file (a FaceNet site's manifest is unchanged)
                model["dlib_tflite_sha256"] = version.dlib_tflite_sha256
                model["dlib_tflite_url"] = request.build_absolute_uri(reverse("model-dlib-tflite", args=[version.pk]))
        key = request.auth if isinstance(request.auth, ApiKey) else None
        kiosk = getattr(key, "kiosk", None) if key else None
        return Response(
            {
                "model": model,
                "kiosk": kiosk.name if kiosk else (key.name if key else None),
                "consent": {
                    "notice_version": notice,
                    "min_age": settings.CONSENT_MIN_AGE,
                    "text": notice_text(notice),
                },
                "inactive_people": inactive_people(version, request.query_params.get("version")),
                "checkin": {
                    "stable_frames": settings.CHECKIN_STABLE_FRAMES,
                    "reembed_every": settings.CHECKIN_REEMBED_EVERY,
                    "full_frame_every": settings.CHECKIN_FULL_FRAME_EVERY,
                    "min_face_px": settings.CHECKIN_MIN_FACE_PX,
                    "repeat_window_minutes": settings.CHECKIN_REPEAT_WINDOW_MINUTES,
                },
            }
        )


class EdgeGalleryView(APIView):
    """GET ?since=<cursor>&limit=<n>: the gallery for nearest-neighbour serving on the device, in
    bounded pages (checkin/edge_gallery.py). An answer::

        {"cursor": "...", "more": false, "full": false, "start": false,
         "embedder": "facenet-...", "dim": 128, "people": [12], "faces": [{"id", "person_id", "name",
         "embedding"}]}

    ``embedding`` is base64 of ``dim`` little-endian float32 (128 FaceNet, 256 fused), made by the
    served ``embedder`` (a label map of another embedder cannot use them). At most ``limit`` faces
    (default and cap EDGE_GALLERY_PAGE_FACES; a person whose faces alone exceed it is sent whole).

    Without ``since``, or when the cursor cannot be followed (its change-log position is older than
    GALLERY_CHANGE_KEEP_HOURS allows, the log holds a bulk import or an embedder switch, another
    embedder is served, a cursor of an older server), a **full sync** starts: ``start`` and ``full``
    are true, and the device's gallery becomes exactly the faces of this page and the pages that
    follow (``full`` true on each) until one says ``more: false``. Otherwise the answer is a
    **delta**: first drop every face you hold of the people in ``people`` (the change log touched
    them: a photo deleted or rejected, a person deactivated or erased), then add or replace
    ``faces`` (the faces of ``people`` in the gallery now, then faces changed since the cursor).
    Ask again with ``since=cursor`` while ``more`` is true; apply the pages together, so a failed
    page leaves the previous gallery in use. An erased or deactivated person is thus gone from the
    device after its next complete sync, on every path.

    The cursor is opaque and signed: a cursor that is not one this endpoint returned is
    ``400 invalid`` (the device then starts over without one), as is a ``limit`` below 1."""

    permission_classes = [EdgeSyncKey]
    token_scope = "edge_sync"

    @extend_schema(
        parameters=[
            OpenApiParameter("since", str, description="A cursor from a previous answer; empty for a full sync"),
            OpenApiParameter("limit", int, description="Faces per answer, at most EDGE_GALLERY_PAGE_FACES (the default)"),
        ],
        responses={200: OpenApiTypes.OBJECT},
        summary="Gallery faces (embeddings) changed since the cursor, in bounded pages",
    )
    def get(self, request):
        from recognition.engine.fused import FUSED_EMBEDDER
        from recognition.pipelines import pipeline_config, served_kind

        from .edge_gallery import face_json, gallery_page, page_limit

        kind = served_kind()
        if kind not in ("facenet", FUSED_EMBEDDER):
            # an edge device makes FaceNet's or the fused templates (training exports nothing else):
            # another embedder's gallery could not be matched by it, so none is sent
            raise ApiError(
                "edge_unavailable",
                f"The served embedder is {kind}; edge devices make FaceNet's or the fused ({FUSED_EMBEDDER}) templates "
                "only, which cannot be matched against its gallery.",
                status_code=status.HTTP_409_CONFLICT,
            )
        config = pipeline_config(kind)
        if request.query_params.get("pages") != "1":
            return self.whole_answer(request, config)
        limit = page_limit(request.query_params.get("limit"))
        page = gallery_page(request.query_params.get("since") or None, limit, config.embedder_name)
        return Response(
            {
                **{key: page[key] for key in ("cursor", "more", "full", "start", "people")},
                "embedder": config.embedder_name,
                "dim": config.dim,
                "faces": [face_json(face) for face in page["faces"]],
            },
            status=status.HTTP_200_OK,
        )

    @staticmethod
    def whole_answer(request, config) -> Response:
        """An edge client from before the pages (it sends no ``pages=1``): the old answer, every face
        changed since its bare-time cursor and the id of every face in the gallery (it drops the
        others: that is how an erasure reaches it). Served while the gallery holds at most
        EDGE_GALLERY_PAGE_FACES faces, so it stays as bounded as a page. A larger gallery answers
        ``403 permission_denied``, which such a client treats as a refusal: it erases its copy and
        stops recognising until it is upgraded, rather than keep erased people's faces it can no
        longer be told about."""
        from people.models import FaceImage

        from .edge_gallery import face_json

        faces = FaceImage.objects.in_gallery()
        ids = sorted(faces.values_list("id", flat=True)[: settings.EDGE_GALLERY_PAGE_FACES + 1])
        if len(ids) > settings.EDGE_GALLERY_PAGE_FACES:
            raise ApiError(
                "permission_denied",
                "This edge client is older than the paged gallery and this gallery is too large for its one-answer "
                "sync: upgrade the device's edge client (edge/ in the repository). The device erases its copy.",
                status_code=status.HTTP_403_FORBIDDEN,
            )
        since_text = request.query_params.get("since") or ""
        changed = faces
        if since_text:
            try:
                since = datetime.fromisoformat(since_text)
                if timezone.is_naive(since):
                    raise ValueError("no time zone")
                since = since.astimezone(UTC)  # years 1-9999 in UTC, or the query overflows
            except (ValueError, OverflowError):
                raise ApiError(
                    "invalid", "since must be a cursor this endpoint returned.", fields={"since": ["Invalid cursor."]}
                ) from None
            changed = faces.filter(updated_at__gt=since)
        rows = list(changed.select_related("person").order_by("updated_at", "id"))
        # the cursor from the rows sent (none changed: the one given), never from a second query
        cursor = rows[-1].updated_at.astimezone(UTC).isoformat() if rows else (since_text or None)
        return Response(
            {
                "cursor": cursor,
                "full": not since_text,
                "embedder": config.embedder_name,
                "dim": config.dim,
                "faces": [face_json(face) for face in rows],
                "ids": ids,
            }
        )
