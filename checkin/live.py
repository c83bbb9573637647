"""The Django side of live check-in: one LiveSession per websocket connection.

The consumer calls the methods here off the event loop. Methods marked "(ORM)" touch the database
and go through ``database_sync_to_async``; ``analyse_frame`` is pure inference over the engine and
runs in a worker thread. Frames live only in memory for the time it takes to analyse them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.events import checkin_created
from recognition import services
from recognition.engine.images import ImageError, ImageLimits, decode_image
from recognition.engine.liveness import HeadTurnChallenge
from recognition.engine.matching import Gallery
from recognition.engine.stream import FaceStream, StreamSettings
from recognition.engine.tracking import FaceTracker, Track
from visitors import live as visitor_faces
from visitors import services as visitors

from .models import CheckIn, Consent, Kiosk
from .services import current_notice


class FrameRefused(Exception):
    """A frame or message the socket answers with an error (the connection stays open)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FrameAnalysis:
    width: int
    height: int
    tracks: list[Track]
    embedded: int
    server_ms: float = 0.0


@dataclass
class MatchingContext:
    gallery: Gallery
    threshold: float
    # the share of strangers' searches expected to name somebody at ``threshold`` in this gallery
    expected_false_accepts_per_search: float | None = None
    gallery_size: int = 0
    kind: str | None = None  # the embedder whose faces the gallery holds (the stream's probes must be its)


def frame_limits() -> ImageLimits:
    return ImageLimits(max_bytes=settings.CHECKIN_MAX_FRAME_BYTES, max_pixels=settings.CHECKIN_MAX_FRAME_PIXELS)


def new_stream(kind: str | None = None) -> FaceStream:
    """A connection's stream state: whole-frame search every few frames, faces followed in between
    (embedded by embedder ``kind``, default the served one)."""
    return FaceStream(
        services.pipeline(kind),
        FaceTracker(reembed_every=settings.CHECKIN_REEMBED_EVERY),
        StreamSettings(
            min_face_size=settings.CHECKIN_MIN_FACE_PX,
            full_every=settings.CHECKIN_FULL_FRAME_EVERY,
            max_faces=settings.FACE_MAX_FACES_PER_IMAGE,
        ),
    )


class RateLimiter:
    """A token bucket: ``rate`` frames per second on average, bursts of up to one second's worth."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class LiveSession:
    """What one connection knows: who it is, its consent, its face tracks."""

    user: object | None = None
    kiosk: Kiosk | None = None
    consent: Consent | None = None
    stream: FaceStream = field(default_factory=lambda: new_stream())
    names: dict[int, str] = field(default_factory=dict)

    @property
    def liveness_required(self) -> bool:
        if self.kiosk is not None:
            return self.kiosk.liveness_required
        return settings.CHECKIN_LIVENESS_FOR_USERS

    @property
    def device(self) -> str:
        return f"kiosk: {self.kiosk.name}" if self.kiosk else f"user: {self.user}"

    @property
    def has_consent(self) -> bool:
        return self.consent is not None and self.consent.is_active

    # ---- consent (ORM) -----------------------------------------------------------------------------

    def record_consent(self, notice_version: str, age_confirmed: bool) -> Consent:
        served = current_notice().version
        if notice_version != served:
            raise FrameRefused(
                "stale_notice",
                f"The notice you agreed to ({notice_version!r}) is not the current one "
                f"({served!r}); reload the page and read it again.",
            )
        if not age_confirmed:
            raise FrameRefused("age_not_confirmed", f"Confirm that you are at least {settings.CONSENT_MIN_AGE} years old.")
        if self.has_consent and self.consent.notice_version == notice_version:
            # Consent given again on the same connection: the one in force stands (one row per
            # consent given, a new one only after a withdrawal), so a repeated message writes nothing.
            return self.consent
        self.consent = Consent.objects.create(
            purpose=Consent.Purpose.CHECKIN,
            user=self.user if self.kiosk is None else None,
            kiosk=self.kiosk,
            notice_version=notice_version,
            age_confirmed=True,
        )
        if self.kiosk is not None:
            Kiosk.objects.filter(pk=self.kiosk.pk).update(last_seen_at=timezone.now())
        return self.consent

    def withdraw_consent(self) -> None:
        if self.consent is not None:
            self.consent.withdraw()
            visitors.forget_consent(self.consent)  # what was kept about unknown faces under it goes too
        self.stream = new_stream()

    # ---- per frame ---------------------------------------------------------------------------------

    def matching_context(self) -> MatchingContext:
        """(ORM) The recognizer and threshold in force, read before a frame is analysed: the active
        version's (the gallery, or its softmax head), searched like a Gallery."""
        served = services.served_now()
        return MatchingContext(
            gallery=served.recognizer,
            threshold=served.threshold,
            expected_false_accepts_per_search=served.expected_far(served.threshold),
            gallery_size=len(served.gallery),
            kind=served.kind,
        )

    def analyse_frame(self, data: bytes, context: MatchingContext) -> FrameAnalysis:
        """JPEG bytes -> tracked faces; embeds only the faces the tracker says need it. No ORM."""
        started = time.perf_counter()
        try:
            rgb = decode_image(data, frame_limits())
        except ImageError as err:
            code = "frame_too_large" if err.code in ("file_too_large", "image_too_large") else err.code
            raise FrameRefused(code, f"Frame refused: {err.message}")
        if context.kind and self.stream.pipeline is not services.pipeline(context.kind):
            # another embedder is served (a switch or a rollback): the faces followed so far were
            # embedded by the old one, so the stream starts again with the new one
            self.stream = new_stream(context.kind)
        frame = self.stream.process(rgb, context.gallery, context.threshold)
        tracks = frame.tracks
        if self.liveness_required:
            for track in tracks:
                challenge = track.state.setdefault("liveness", HeadTurnChallenge())
                challenge.update(track.landmarks)
        if settings.VISITORS_ENABLED:
            for track in tracks:
                visitor_faces.observe(track, rgb)
        height, width = rgb.shape[:2]
        return FrameAnalysis(
            width=width,
            height=height,
            tracks=tracks,
            embedded=frame.embedded,
            server_ms=(time.perf_counter() - started) * 1000.0,
        )

    def ready_to_check_in(self, track: Track) -> bool:
        if track.checked_in or not track.stable(settings.CHECKIN_STABLE_FRAMES):
            return False
        if self.liveness_required:
            challenge = track.state.get("liveness")
            return challenge is not None and challenge.passed
        return True

    def check_in(self, track: Track, threshold: float) -> tuple[CheckIn, bool]:
        """(ORM) Store the check-in, or return the recent one; True if it is new."""
        window = timedelta(minutes=settings.CHECKIN_REPEAT_WINDOW_MINUTES)
        version = services.active_model_version()
        with transaction.atomic():
            recent = CheckIn.objects.select_for_update().recent_for(track.person_id, window).first()
            if recent is not None:
                created = False
                checkin = recent
            else:
                checkin = CheckIn.objects.create(
                    person_id=track.person_id,
                    similarity=float(np.mean(track.agreeing)),
                    threshold=threshold,
                    frames=min(track.streak, 32767),
                    model_version=version,
                    embedder=self.stream.pipeline.embedder_name,
                    kiosk=self.kiosk,
                    user=self.user if self.kiosk is None else None,
                    consent=self.consent,
                    liveness_checked=self.liveness_required,
                    matched_faces=sorted(track.agreeing_faces),
                )
                created = True
                checkin_created(checkin)
        track.checked_in = True
        return checkin, created

    def unknown_visitors_due(self, analysis: FrameAnalysis) -> list[Track]:
        """The tracks that have just stayed unknown long enough to be a visitor's sighting."""
        if not settings.VISITORS_ENABLED:
            return []
        return [track for track in analysis.tracks if visitor_faces.due(track) is not None]

    def record_visitor(self, track: Track):
        """(ORM) Store the track as a sighting of an unknown visitor (visitors.services)."""
        face = visitor_faces.due(track)
        if face is None:
            return None
        face.recorded = True  # one attempt per track, stored or not
        return visitors.record_sighting(face, self.consent, kiosk=self.kiosk, user=self.user if self.kiosk is None else None)

    def load_names(self, person_ids: set[int]) -> dict[int, str]:
        """(ORM) Names of the people shown, cached for the connection."""
        from people.models import Person

        missing = person_ids - self.names.keys()
        if missing:
            self.names.update(Person.objects.filter(pk__in=missing).values_list("id", "name"))
        return self.names

    # ---- what the page is told ---------------------------------------------------------------------

    def describe(self, analysis: FrameAnalysis, frame: int, dropped: int, context: MatchingContext | None = None) -> dict:
        faces = []
        challenge = None
        for track in analysis.tracks:
            known = track.person_id is not None
            face = {
                "track": track.id,
                "box": [int(round(v)) for v in track.box],
                "person_id": track.person_id,
                "name": self.names.get(track.person_id, "") if known else None,
                "similarity": None if track.similarity is None else round(track.similarity, 4),
                "embedded": track.embedded,
                "state": "checked_in" if track.checked_in else ("identifying" if known else "unknown"),
            }
            liveness = track.state.get("liveness")
            if liveness is not None:
                face["liveness"] = {
                    "direction": liveness.direction,
                    "passed": liveness.passed,
                    "progress": round(liveness.progress, 2),
                }
                if known and not liveness.passed and not track.checked_in and challenge is None:
                    challenge = {"track": track.id, "direction": liveness.direction}
            faces.append(face)
        return {
            "type": "faces",
            "frame": frame,
            "width": analysis.width,
            "height": analysis.height,
            "faces": faces,
            "embedded": analysis.embedded,
            "dropped": dropped,
            "challenge": challenge,
            "server_ms": round(analysis.server_ms, 1),
            **(
                {}
                if context is None
                else {
                    "threshold": round(float(context.threshold), 4),
                    "expected_false_accepts_per_search": services.significant(context.expected_false_accepts_per_search),
                    "gallery_size": context.gallery_size,
                }
            ),
        }
