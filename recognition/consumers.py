"""/ws/identify/: a browser's camera frames in, the faces found (and check-ins) out; and
/ws/checkins/: the staff feed of check-ins as they are recorded (recognition.checkin_feed).

Protocol. The client sends JSON text messages ``{"type": "consent", "notice_version", "age_confirmed"}``
and ``{"type": "withdraw"}``, and each camera frame as one binary message of JPEG bytes. The server
answers with JSON: ``ready`` on connect, ``consent_recorded``/``consent_withdrawn``, ``faces`` per
processed frame, ``checked_in``, and ``error`` (``{"code", "message"}``) for anything refused.

Who may connect: a signed-in user or a registered kiosk (both carried by the browser's session), or
a non-browser client sending ``Authorization: Token <key>`` (a kiosk- or staff-role API key, or a
user's token) and an ``Origin`` header from ALLOWED_HOSTS.

The consumer keeps up with the camera instead of queueing: it processes the newest frame and drops
any that arrived while the previous one was being analysed (each ``faces`` reply says how many were
dropped). Inference and the ORM run off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from . import checkin_feed
from .live import FrameRefused, LiveSession, RateLimiter
from .models import Kiosk

log = logging.getLogger(__name__)

KIOSK_SESSION_KEY = "checkin_kiosk_id"
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_NOT_STAFF = 4403
STREAM_SCOPE = "stream"  # the API-key scope (security.models.ROLE_SCOPES) that may use this socket


@database_sync_to_async
def _kiosk_from_session(session) -> Kiosk | None:
    kiosk_id = session.get(KIOSK_SESSION_KEY) if session is not None else None
    if kiosk_id is None:
        return None
    return Kiosk.objects.filter(pk=kiosk_id, is_active=True).first()


@database_sync_to_async
def _user_from_token_header(headers) -> object | None:
    """A non-browser client's ``Authorization: Token <key>``: a kiosk- or staff-role API key, or a
    user's API token. Browsers cannot set the header; they use their session."""
    from rest_framework.authtoken.models import Token
    from rest_framework.exceptions import AuthenticationFailed

    from security.authentication import authenticate_key

    keyword, _, raw = dict(headers or []).get(b"authorization", b"").decode("latin-1").partition(" ")
    raw = raw.strip()
    if keyword.lower() != "token" or not raw:
        return None
    try:
        key = authenticate_key(raw)
    except AuthenticationFailed:
        return None  # revoked
    if key is not None:
        return key.user if key.allows(STREAM_SCOPE) else None
    token = Token.objects.select_related("user").filter(key=raw, user__is_active=True).first()
    return token.user if token else None


class IdentifyConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        kiosk = await _kiosk_from_session(self.scope.get("session"))
        if kiosk is None and not (user is not None and user.is_authenticated):
            user = await _user_from_token_header(self.scope.get("headers"))
        await self.accept()
        if kiosk is None and not (user is not None and user.is_authenticated):
            # Accept first so the page can show why, then close with an application code.
            await self.send_error("not_authenticated", "Sign in, or open check-in on a registered kiosk, to use the camera.")
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        self.session = LiveSession(user=user if kiosk is None else None, kiosk=kiosk)
        self.limiter = RateLimiter(settings.CHECKIN_MAX_FPS)
        self.latest: tuple[int, bytes] | None = None  # the newest frame not yet analysed
        self.worker: asyncio.Task | None = None
        self.received = 0
        self.dropped = 0
        self.last_rate_error = 0.0
        await self.send_json(
            {
                "type": "ready",
                "device": self.session.device,
                "notice_version": settings.CONSENT_NOTICE_VERSION,
                "liveness": self.session.liveness_required,
                "limits": {"max_frame_bytes": settings.CHECKIN_MAX_FRAME_BYTES, "max_fps": settings.CHECKIN_MAX_FPS},
            }
        )

    async def disconnect(self, code):
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.cancel()
        self.latest = None

    async def receive(self, text_data=None, bytes_data=None):
        if not hasattr(self, "session"):
            return  # refused in connect(); the close is on its way
        if bytes_data is not None:
            await self.receive_frame(bytes_data)
            return
        try:
            message = json.loads(text_data)
            kind = message.get("type") if isinstance(message, dict) else None
        except (TypeError, ValueError):
            await self.send_error("invalid_message", "Text messages must be JSON objects with a 'type'.")
            return
        if kind == "consent":
            await self.receive_consent(message)
        elif kind == "withdraw":
            await database_sync_to_async(self.session.withdraw_consent)()
            self.latest = None
            await self.send_json({"type": "consent_withdrawn"})
        else:
            await self.send_error("unknown_message", f"Unknown message type {kind!r}; expected 'consent' or 'withdraw'.")

    async def receive_consent(self, message: dict):
        try:
            consent = await database_sync_to_async(self.session.record_consent)(
                str(message.get("notice_version", "")), message.get("age_confirmed") is True
            )
        except FrameRefused as err:
            await self.send_error(err.code, err.message)
            return
        await self.send_json({"type": "consent_recorded", "consent_id": consent.pk, "notice_version": consent.notice_version})

    async def receive_frame(self, data: bytes):
        if not self.session.has_consent:
            await self.send_error("consent_required", "Frames are refused until consent is given on this connection.")
            return
        if len(data) > settings.CHECKIN_MAX_FRAME_BYTES:
            await self.send_error(
                "frame_too_large",
                f"The frame is {len(data):,} bytes; the limit is {settings.CHECKIN_MAX_FRAME_BYTES:,} bytes. "
                "Send smaller JPEG frames (e.g. 640x480).",
            )
            return
        if not self.limiter.allow():
            # Said at most once a second: a client far over the rate would otherwise be flooded.
            now = time.monotonic()
            if now - self.last_rate_error >= 1.0:
                self.last_rate_error = now
                await self.send_error(
                    "rate_limited",
                    f"Frames are arriving faster than {settings.CHECKIN_MAX_FPS:g} per second; extra frames are dropped.",
                )
            return
        self.received += 1
        if self.latest is not None:
            self.dropped += 1  # superseded before it was analysed
        self.latest = (self.received, data)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self.process_frames())

    async def process_frames(self):
        """Analyse the newest frame, then the newest one that came in meanwhile, until none is left."""
        while self.latest is not None:
            frame, data = self.latest
            self.latest = None
            dropped, self.dropped = self.dropped, 0
            try:
                await self.process(frame, data, dropped)
            except FrameRefused as err:
                await self.send_error(err.code, err.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live frame %s failed", frame)
                await self.send_error("server_error", "The server could not analyse this frame.")

    async def process(self, frame: int, data: bytes, dropped: int):
        session = self.session
        context = await database_sync_to_async(session.matching_context)()
        analysis = await sync_to_async(session.analyse_frame, thread_sensitive=False)(data, context)
        if not session.has_consent:
            return  # withdrawn while the frame was analysed: say nothing about it
        greetings = []
        for track in analysis.tracks:
            if session.ready_to_check_in(track):
                checkin, created = await database_sync_to_async(session.check_in)(track, context.threshold)
                greetings.append((track, checkin, created))
        person_ids = {t.person_id for t in analysis.tracks if t.person_id is not None}
        if person_ids - session.names.keys():
            await database_sync_to_async(session.load_names)(person_ids)
        await self.send_json(session.describe(analysis, frame, dropped))
        for track, checkin, created in greetings:
            name = session.names.get(checkin.person_id, "")
            if created:
                # check_in() has committed: tell staff screens on every worker. Before the greeting,
                # and shielded: a kiosk that closes as soon as it is greeted cancels this task, and
                # the announcement used to be lost with it (the cross-process feed test caught it).
                await asyncio.shield(checkin_feed.announce(checkin, name))
            await self.send_json(
                {
                    "type": "checked_in",
                    "track": track.id,
                    "person_id": checkin.person_id,
                    "name": name,
                    "similarity": round(checkin.similarity, 4),
                    "checked_in_at": checkin.checked_in_at.isoformat(),
                    "already": not created,
                }
            )

    async def send_json(self, content: dict):
        await self.send(text_data=json.dumps(content))

    async def send_error(self, code: str, message: str):
        await self.send_json({"type": "error", "code": code, "message": message})


class CheckInFeedConsumer(AsyncWebsocketConsumer):
    """Staff only (a signed-in ``is_staff`` session): ``ready`` with today's latest check-ins, then one
    ``checkin`` message per check-in recorded anywhere. Read-only: text from the client is refused."""

    joined = False

    async def connect(self):
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_NOT_AUTHENTICATED, "not_authenticated", "Sign in with a staff account to see check-ins.")
            return
        if not (user.is_active and user.is_staff):
            await self.refuse(CLOSE_NOT_STAFF, "not_staff", "Only staff may see the check-in feed.")
            return
        await self.channel_layer.group_add(checkin_feed.FEED_GROUP, self.channel_name)
        self.joined = True
        recent = await database_sync_to_async(checkin_feed.recent)()
        await self.send_json({"type": "ready", "recent": recent})

    async def disconnect(self, code):
        if self.joined:
            await self.channel_layer.group_discard(checkin_feed.FEED_GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.send_json({"type": "error", "code": "read_only", "message": "This feed takes no messages."})

    async def checkin_recorded(self, event: dict):
        await self.send_json({"type": "checkin", **event["checkin"]})

    async def refuse(self, close_code: int, code: str, message: str):
        # Accepted first so the page can say why, as /ws/identify/ does.
        await self.send_json({"type": "error", "code": code, "message": message})
        await self.close(code=close_code)

    async def send_json(self, content: dict):
        await self.send(text_data=json.dumps(content))
