"""/ws/identify/: a browser's camera frames in, the faces found (and check-ins) out; and
/ws/checkins/: the staff feed of check-ins as they are recorded (checkin.feed).

Protocol. The client sends JSON text messages ``{"type": "consent", "notice_version", "age_confirmed"}``
and ``{"type": "withdraw"}``, and each camera frame as one binary message of JPEG bytes. The server
answers with JSON: ``ready`` on connect, ``consent_recorded``/``consent_withdrawn``, ``faces`` per
processed frame, ``checked_in``, and ``error`` (``{"code", "message"}``) for anything refused.
Consent given again while the connection's consent is in force answers ``consent_recorded`` with
the same ``consent_id`` and records nothing: a new Consent row only after a ``withdraw``.

Error codes. The connection stays open after: ``invalid_message`` (a text message that is not JSON,
is nested too deep, is not an object, is over 4 KiB or has an unknown ``type``), ``consent_required``,
``stale_notice``, ``age_not_confirmed``, ``frame_too_large`` (over CHECKIN_MAX_FRAME_BYTES or
CHECKIN_MAX_FRAME_PIXELS; the ASGI servers accept messages up to 16 MiB so that the consumer can say
so), ``invalid_image``, ``rate_limited`` (frames over CHECKIN_MAX_FPS, text messages over
CHECKIN_MAX_TEXT_PER_SECOND: the message is dropped), ``server_error``. The connection is closed after:
``not_authenticated`` (4401), ``kiosk_not_bound`` (4403: a kiosk-role API key not tied to a kiosk),
``too_many_connections`` (4429: over CHECKIN_MAX_SOCKETS_PER_KIOSK, _PER_KEY or CHECKIN_MAX_SOCKETS;
see checkin.socket_limits), ``flooding`` (4429: more frames refused by the rate limit within three
seconds than three times CHECKIN_MAX_FPS, see ``flood_limit``; the same for text messages and
CHECKIN_MAX_TEXT_PER_SECOND), ``too_many_consents`` (4429: consent asked for again after
CHECKIN_MAX_CONSENTS_PER_SOCKET records on this connection, each given and withdrawn) and
``idle_timeout`` (4408: nothing sent for CHECKIN_IDLE_SECONDS).

Who may connect: a signed-in user or a registered kiosk (both carried by the browser's session), or
a non-browser client sending ``Authorization: Token <key>`` (a kiosk-role API key, which acts as the
kiosk it is bound to; a staff-role key; or a user's token) and an ``Origin`` header from ALLOWED_HOSTS.
``ready`` names the device (the kiosk, "api key", or a signed-in user's own name), never a key's owner.

Audit (security.audit.record_stream_event; never images): ``checkin`` for each check-in made (naming
the person) or found again within the repeat window (the check-in's id only), and ``stream`` when the
socket closes (frames analysed, faces tracked, how many people were named, check-ins, close code:
counts, nobody named). A person who is only seen, never checked in, is named in no audit row; the rows
that name someone expire with the check-ins (privacy.services.apply_retention), as the notice says.

The consumer keeps up with the camera instead of queueing: it processes the newest frame and drops
any that arrived while the previous one was being analysed (each ``faces`` reply says how many were
dropped). Inference and the ORM run off the event loop; inference in a small pool shared by every
connection of the process and served round-robin (checkin.scheduling), so streams share the CPU
fairly and leave some to the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone

from security.audit import record_stream_event

from . import feed
from .edge_api import notice_version
from .live import FrameRefused, LiveSession, RateLimiter
from .models import Kiosk
from .scheduling import inference_pool
from .socket_limits import HEARTBEAT_SECONDS, Slots

log = logging.getLogger(__name__)

KIOSK_SESSION_KEY = "checkin_kiosk_id"
# The hash of the token the device signed in with: a kiosk given a new token no longer matches it,
# so the devices signed in with the old one are signed out (pages at once, open sockets at the recheck).
KIOSK_TOKEN_SESSION_KEY = "checkin_kiosk_token"
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_NOT_STAFF = 4403
CLOSE_FORBIDDEN = 4403
CLOSE_IDLE = 4408
CLOSE_TOO_MANY = 4429
MAX_TEXT_CHARS = 4096  # consent and withdraw messages are a few dozen characters
STREAM_SCOPE = "stream"  # the API-key scope (security.models.ROLE_SCOPES) that may use this socket


def sign_in_kiosk(session, kiosk: Kiosk) -> None:
    """Make a browser's session stand for ``kiosk``, tied to the kiosk's current token."""
    session[KIOSK_SESSION_KEY] = kiosk.pk
    session[KIOSK_TOKEN_SESSION_KEY] = kiosk.token_hash


def sign_out_kiosk(session) -> None:
    session.pop(KIOSK_SESSION_KEY, None)
    session.pop(KIOSK_TOKEN_SESSION_KEY, None)


def session_kiosk(session) -> Kiosk | None:
    """The kiosk a browser's session stands for: still active and still holding the token the
    session signed in with (see Kiosk.objects.signed_in); None otherwise."""
    if session is None:
        return None
    return Kiosk.objects.signed_in(session.get(KIOSK_SESSION_KEY), session.get(KIOSK_TOKEN_SESSION_KEY))


_kiosk_from_session = database_sync_to_async(session_kiosk)


@dataclass
class Caller:
    """Who a socket acts for. ``refused`` is (code, message) for a credential that is known but unusable."""

    user: object | None = None  # the session user, the token's user, or the key's owner
    api_key: object | None = None  # security.models.ApiKey
    kiosk: Kiosk | None = None
    device: str = ""  # what ``ready`` says: never the owner of a key
    refused: tuple[str, str] | None = None


def _client_address(scope) -> str | None:
    """The client's address by the site's one rule (facesite.client_ip: X-Forwarded-For only through
    TRUSTED_PROXY_COUNT proxies), for the audit log."""
    from facesite.client_ip import client_ip

    meta = {"REMOTE_ADDR": (scope.get("client") or [""])[0] or ""}
    forwarded = dict(scope.get("headers") or []).get(b"x-forwarded-for")
    if forwarded:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded.decode("latin-1")
    return client_ip(SimpleNamespace(META=meta)) or None


@database_sync_to_async
def _touch_kiosk(kiosk: Kiosk) -> None:
    Kiosk.objects.filter(pk=kiosk.pk).update(last_seen_at=timezone.now())


@database_sync_to_async
def _user_from_token_header(headers) -> Caller | None:
    """A non-browser client's ``Authorization: Token <key>``: a kiosk-role API key (acting as its
    kiosk), a staff-role key, or a user's API token. Browsers cannot set the header; they use their
    session. None if there is no usable credential."""
    from rest_framework.exceptions import AuthenticationFailed

    from security.authentication import authenticate_key, user_for_token
    from security.models import Role

    keyword, _, raw = dict(headers or []).get(b"authorization", b"").decode("latin-1").partition(" ")
    raw = raw.strip()
    if keyword.lower() != "token" or not raw:
        return None
    try:
        key = authenticate_key(raw)
    except AuthenticationFailed:
        return None  # revoked
    if key is not None:
        if not key.allows(STREAM_SCOPE):
            return None
        if key.role != Role.KIOSK:
            return Caller(user=key.user, api_key=key, device="api key")
        if key.kiosk_id is None:
            return Caller(
                api_key=key,
                refused=(
                    "kiosk_not_bound",
                    "This kiosk API key is not bound to a kiosk: staff must choose its kiosk in the admin.",
                ),
            )
        kiosk = Kiosk.objects.filter(pk=key.kiosk_id, is_active=True).first()
        if kiosk is None:
            return Caller(api_key=key, refused=("not_authenticated", "The kiosk this API key belongs to is deactivated."))
        return Caller(user=key.user, api_key=key, kiosk=kiosk, device=f"kiosk: {kiosk.name}")
    user = user_for_token(raw)  # the API's expiry applies on the socket too
    return Caller(user=user, device="api token") if user is not None else None


FLOOD_WINDOW_SECONDS = 3.0


def flood_limit(max_fps: float) -> int:
    """Frames refused by the rate limit within FLOOD_WINDOW_SECONDS past which the socket is closed:
    the allowed rate's worth per second again (at least 20), i.e. a client sending over twice the
    rate for seconds, or a burst of hundreds; a camera merely a little over the rate is not cut off."""
    return max(20, int(FLOOD_WINDOW_SECONDS * max_fps))


class IdentifyConsumer(AsyncWebsocketConsumer):
    closing = False

    async def connect(self):
        self.slots = Slots()
        self.last_active = time.monotonic()
        caller = await self.identify_caller()
        await self.accept()
        if caller is None:
            # Accept first so the page can show why, then close with an application code.
            await self.send_error("not_authenticated", "Sign in, or open check-in on a registered kiosk, to use the camera.")
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        if caller.refused is not None:
            code, message = caller.refused
            await self.send_error(code, message)
            await self.close(code=CLOSE_NOT_AUTHENTICATED if code == "not_authenticated" else CLOSE_FORBIDDEN)
            return
        if not await self.claim_slots(caller):
            await self.send_error(
                "too_many_connections", "Too many check-in connections are open for this device or key; close one and retry."
            )
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.caller = caller
        if caller.kiosk is not None:
            await _touch_kiosk(caller.kiosk)
        self.session = LiveSession(user=caller.user if caller.kiosk is None else None, kiosk=caller.kiosk)
        self.limiter = RateLimiter(settings.CHECKIN_MAX_FPS)
        # Text messages (consent, withdraw) each cost database work and an answer: a page sends two
        # per connection, so their own small budget, cut off for flooding like frames.
        self.text_limiter = RateLimiter(settings.CHECKIN_MAX_TEXT_PER_SECOND)
        self.consents = 0  # consent records made on this connection (CHECKIN_MAX_CONSENTS_PER_SOCKET)
        self.latest: tuple[int, bytes] | None = None  # the newest frame not yet analysed
        self.worker: asyncio.Task | None = None
        self.received = 0
        self.dropped = 0
        self.last_rate_error = 0.0
        self.refused: deque[float] = deque()  # when frames were refused by the rate limit, last few seconds
        self.refused_texts: deque[float] = deque()  # the same for text messages
        self.opened = time.monotonic()
        self.analysed = 0
        self.tracks_seen: set[int] = set()
        self.identified: set[int] = set()  # person ids named on this socket: counted in the audit, never listed
        self.checkins = 0
        self.visitor_sightings = 0
        self.watcher = asyncio.create_task(self.watch())
        await self.send_json(
            {
                "type": "ready",
                "device": caller.device,
                "notice_version": await database_sync_to_async(notice_version)(),
                "liveness": self.session.liveness_required,
                "limits": {
                    "max_frame_bytes": settings.CHECKIN_MAX_FRAME_BYTES,
                    "max_fps": settings.CHECKIN_MAX_FPS,
                    "idle_seconds": settings.CHECKIN_IDLE_SECONDS,
                },
            }
        )

    async def identify_caller(self) -> Caller | None:
        user = self.scope.get("user")
        kiosk = await _kiosk_from_session(self.scope.get("session"))
        if kiosk is not None:
            return Caller(kiosk=kiosk, device=f"kiosk: {kiosk.name}")
        if user is not None and user.is_authenticated:
            return Caller(user=user, device=f"user: {user}")  # a signed-in user sees their own name
        return await _user_from_token_header(self.scope.get("headers"))

    async def claim_slots(self, caller: Caller) -> bool:
        """A slot in every cap that applies; none held if any is full."""
        caps = []
        if caller.kiosk is not None:
            caps.append((f"kiosk:{caller.kiosk.pk}", settings.CHECKIN_MAX_SOCKETS_PER_KIOSK))
        if caller.api_key is not None:
            caps.append((f"key:{caller.api_key.pk}", settings.CHECKIN_MAX_SOCKETS_PER_KEY))
        elif caller.user is not None:
            caps.append((f"user:{caller.user.pk}", settings.CHECKIN_MAX_SOCKETS_PER_KEY))
        claimed = await self.slots.claim_process(settings.CHECKIN_MAX_SOCKETS)
        for group, limit in caps:
            claimed = claimed and await self.slots.claim(group, limit)
        if not claimed:
            await self.slots.release()
        return claimed

    async def watch(self):
        """Close the socket when the client has sent nothing for CHECKIN_IDLE_SECONDS (a frame being
        analysed counts as activity) or when its credential no longer admits it (checked again every
        CHECKIN_ACCESS_RECHECK_SECONDS), and keep this connection's slots alive meanwhile."""
        idle = settings.CHECKIN_IDLE_SECONDS
        recheck = settings.CHECKIN_ACCESS_RECHECK_SECONDS
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        next_check = time.monotonic() + recheck if recheck > 0 else float("inf")
        while True:
            now = time.monotonic()
            if self.worker is not None and not self.worker.done():
                self.last_active = now
            if idle > 0 and now - self.last_active >= idle:
                await self.send_error("idle_timeout", f"Nothing was sent for {idle:g} seconds; the connection is closed.")
                await self.close(code=CLOSE_IDLE)
                return
            if now >= next_check:
                refused = await self.access_lost() or await self.notice_changed()
                if refused is not None:
                    await self.cut_off(*refused)
                    return
                next_check = now + recheck
            wait = min(next_beat, next_check) - now
            if idle > 0:
                wait = min(wait, self.last_active + idle - now)
            await asyncio.sleep(max(0.05, wait))
            if time.monotonic() >= next_beat:
                await self.slots.refresh()
                next_beat += HEARTBEAT_SECONDS

    async def access_lost(self) -> tuple[str, str] | None:
        """Why the credential this socket was opened with no longer admits it, or None: an API key
        or token revoked or expired, its kiosk deactivated; a kiosk or user session ended."""
        caller = self.caller
        if caller.api_key is not None or caller.device == "api token":
            fresh = await _user_from_token_header(self.scope.get("headers"))
            if fresh is None:
                return "not_authenticated", "The API key or token was revoked or has expired."
            if fresh.refused is not None:
                return fresh.refused
            if caller.kiosk is not None and (fresh.kiosk is None or fresh.kiosk.pk != caller.kiosk.pk):
                return "not_authenticated", "The kiosk this API key belongs to changed or was deactivated."
            return None
        kiosk_id = caller.kiosk.pk if caller.kiosk is not None else None
        user_id = getattr(caller.user, "pk", None)
        return await database_sync_to_async(session_access_lost)(self.scope.get("session"), kiosk_id, user_id)

    async def notice_changed(self) -> tuple[str, str] | None:
        """Why the consent this socket streams under no longer covers what it does, or None: the
        notice's text changed since it was given (a webhook subscribed to check-ins, MQTT_URL, a
        retention period: edge_api.notice_version), so check-ins would be sent or kept as the notice
        the person read did not say. The page, reloaded, shows the new notice and asks again."""
        consent = self.session.consent
        if consent is None:
            return None
        served = await database_sync_to_async(notice_version)()
        if consent.notice_version == served:
            return None
        return "stale_notice", "The notice has changed since consent was given; reload the page and read it again."

    async def cut_off(self, code: str, message: str):
        """Stop analysing (a frame in progress is not answered) and close with the refusal."""
        self.closing = True
        if self.worker is not None:
            self.worker.cancel()
        await self.send_error(code, message)
        await self.close(code=CLOSE_NOT_AUTHENTICATED if code == "not_authenticated" else CLOSE_FORBIDDEN)

    async def disconnect(self, code):
        for task in (getattr(self, "worker", None), getattr(self, "watcher", None)):
            if task is not None:
                task.cancel()
        self.latest = None
        # Shielded: the slots must be given back even if this task is being cancelled.
        await asyncio.shield(self.slots.release())
        if hasattr(self, "session"):
            await self.audit(
                "stream",
                {
                    "frames": self.analysed,
                    "faces": len(self.tracks_seen),
                    "identified": len(self.identified),
                    "checkins": self.checkins,
                    "visitor_sightings": self.visitor_sightings,
                    "seconds": round(time.monotonic() - self.opened, 1),
                    "close_code": code,
                },
                (),
                status_code=code if isinstance(code, int) and 0 < code < 32768 else 1000,
            )

    async def audit(self, action: str, result: dict, person_ids, status_code: int = 200):
        caller = self.caller
        await database_sync_to_async(record_stream_event)(
            action,
            user=caller.user,
            api_key=caller.api_key,
            kiosk=caller.kiosk,
            client_address=_client_address(self.scope),
            status_code=status_code,
            result=result,
            person_ids=person_ids,
        )

    async def receive(self, text_data=None, bytes_data=None):
        self.last_active = time.monotonic()
        if not hasattr(self, "session") or self.closing:
            return  # refused in connect(), or cut off for flooding; the close is on its way
        if bytes_data is not None:
            await self.receive_frame(bytes_data)
            return
        if not self.text_limiter.allow():
            await self.over_rate(
                self.refused_texts, settings.CHECKIN_MAX_TEXT_PER_SECOND, "text messages", "Text messages are arriving"
            )
            return
        message = self.parse(text_data)
        kind = message.get("type") if message is not None else None
        if kind == "consent":
            await self.receive_consent(message)
        elif kind == "withdraw":
            await database_sync_to_async(self.session.withdraw_consent)()
            self.latest = None
            await self.send_json({"type": "consent_withdrawn"})
        else:
            detail = "" if message is None else f" (got type {str(kind)[:40]!r})"
            await self.send_error(
                "invalid_message",
                f"Text messages must be JSON objects under {MAX_TEXT_CHARS} characters with a 'type' of "
                f"'consent' or 'withdraw'{detail}; camera frames are binary messages.",
            )

    @staticmethod
    def parse(text: str | None) -> dict | None:
        """The message as a dict, or None if it is not a small JSON object."""
        if not text or len(text) > MAX_TEXT_CHARS:
            return None
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
            return None
        return message if isinstance(message, dict) else None

    async def receive_consent(self, message: dict):
        if not self.session.has_consent and self.consents >= settings.CHECKIN_MAX_CONSENTS_PER_SOCKET:
            # Consent given and withdrawn over and over writes a row each time: a page does it a few
            # times per connection (Stop, then Start), a script thousands.
            await self.send_error(
                "too_many_consents",
                f"Consent was given {self.consents} times on this connection; reconnect to give it again.",
            )
            await self.close(code=CLOSE_TOO_MANY)
            return
        before = self.session.consent
        try:
            consent = await database_sync_to_async(self.session.record_consent)(
                str(message.get("notice_version", "")), message.get("age_confirmed") is True
            )
        except FrameRefused as err:
            await self.send_error(err.code, err.message)
            return
        if consent is not before:
            self.consents += 1
        await self.send_json({"type": "consent_recorded", "consent_id": consent.pk, "notice_version": consent.notice_version})

    async def receive_frame(self, data: bytes):
        if len(data) > settings.CHECKIN_MAX_FRAME_BYTES:
            await self.send_error(
                "frame_too_large",
                f"The frame is {len(data):,} bytes; the limit is {settings.CHECKIN_MAX_FRAME_BYTES:,} bytes. "
                "Send smaller JPEG frames (e.g. 640x480).",
            )
            return
        if not self.session.has_consent:
            await self.send_error("consent_required", "Frames are refused until consent is given on this connection.")
            return
        if not self.limiter.allow():
            await self.over_rate(self.refused, settings.CHECKIN_MAX_FPS, "frames", "Frames are arriving")
            return
        self.received += 1
        if self.latest is not None:
            self.dropped += 1  # superseded before it was analysed
        self.latest = (self.received, data)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self.process_frames())

    async def over_rate(self, refused: deque[float], rate: float, what: str, arriving: str):
        """A frame or text message refused by its rate limit (``rate`` per second): dropped with a
        ``rate_limited`` error, or, past flood_limit(rate) refusals within FLOOD_WINDOW_SECONDS, the
        socket is closed for ``flooding``."""
        now = time.monotonic()
        refused.append(now)
        while refused and now - refused[0] > FLOOD_WINDOW_SECONDS:
            refused.popleft()
        if len(refused) > flood_limit(rate):
            # Every refused message is still read and parsed by this process's event loop, which
            # also serves the other sockets and the HTTP API: a client sending several times the
            # allowed rate (measured: 1,000 frames/s took /healthz/ p95 over 200 ms) is cut off.
            self.latest = None
            await self.send_error(
                "flooding",
                f"Over {flood_limit(rate)} {what} in {FLOOD_WINDOW_SECONDS:g} seconds beyond "
                f"the limit of {rate:g} per second; the connection is closed.",
            )
            await self.close(code=CLOSE_TOO_MANY)
            self.closing = True
            return
        # Said at most once a second: a client far over the rate would otherwise be flooded.
        if now - self.last_rate_error >= 1.0:
            self.last_rate_error = now
            await self.send_error("rate_limited", f"{arriving} faster than {rate:g} per second; extra {what} are dropped.")

    async def process_frames(self):
        """Analyse the newest frame, then the newest one that came in meanwhile, until none is left.
        Frames are analysed in the process's shared inference pool, one turn per connection in
        arrival order (checkin.scheduling), so a stream that sends more cannot take more."""
        pool = inference_pool()
        while self.latest is not None:
            frame = None
            try:
                context = await database_sync_to_async(self.session.matching_context)()
                async with pool.turn():
                    if self.latest is None:
                        return  # consent withdrawn while waiting for a turn
                    # Picked when the turn comes: the newest frame, whatever arrived while waiting.
                    frame, data = self.latest
                    self.latest = None
                    dropped, self.dropped = self.dropped, 0
                    analysis = await pool.run(self.session.analyse_frame, data, context)
                await self.answer(frame, analysis, dropped, context)
            except FrameRefused as err:
                await self.send_error(err.code, err.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live frame %s failed", frame)
                await self.send_error("server_error", "The server could not analyse this frame.")

    async def answer(self, frame: int, analysis, dropped: int, context):
        session = self.session
        if not session.has_consent:
            return  # withdrawn while the frame was analysed: say nothing about it
        self.analysed += 1
        self.tracks_seen.update(t.id for t in analysis.tracks)
        # Counted for the socket's summary only: someone named but never checked in is not logged.
        self.identified.update(t.person_id for t in analysis.tracks if t.person_id is not None)
        greetings = []
        for track in analysis.tracks:
            if session.ready_to_check_in(track):
                checkin, created = await database_sync_to_async(session.check_in)(track, context.threshold)
                greetings.append((track, checkin, created))
                self.checkins += 1
                # A new check-in names its person (it expires with the check-in); a repeat within the
                # window names only the check-in it found, so it names nobody once that one is gone.
                result = {"checkin_id": checkin.pk, "already": not created, "liveness_checked": checkin.liveness_checked}
                if created:
                    result |= {"person_id": checkin.person_id, "similarity": round(checkin.similarity, 4)}
                await self.audit("checkin", result, [checkin.person_id] if created else ())
        person_ids = {t.person_id for t in analysis.tracks if t.person_id is not None}
        if person_ids - session.names.keys():
            await database_sync_to_async(session.load_names)(person_ids)
        await self.send_json(session.describe(analysis, frame, dropped, context))
        await self.record_visitors(analysis)
        for track, checkin, created in greetings:
            name = session.names.get(checkin.person_id, "")
            if created:
                # check_in() has committed: tell staff screens on every worker. Before the greeting,
                # and shielded: a kiosk that closes as soon as it is greeted cancels this task, and
                # the announcement used to be lost with it (the cross-process feed test caught it).
                await asyncio.shield(feed.announce(checkin, name))
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

    async def record_visitors(self, analysis):
        """Faces that stayed unknown become visitor sightings (after the frame's answer is sent). A
        failure here is logged and never breaks check-in."""
        for track in self.session.unknown_visitors_due(analysis):
            try:
                sighting = await database_sync_to_async(self.session.record_visitor)(track)
            except Exception:
                log.exception("could not record an unknown visitor's sighting (track %s)", track.id)
                continue
            if sighting is not None:
                self.visitor_sightings += 1

    async def send_json(self, content: dict):
        await self.send(text_data=json.dumps(content))

    async def send_error(self, code: str, message: str):
        await self.send_json({"type": "error", "code": code, "message": message})


def session_access_lost(session, kiosk_id: int | None, user_id: int | None, staff: bool = False) -> tuple[str, str] | None:
    """Why a socket opened with a session may no longer stay open, or None; (code, message) otherwise.
    A browser's session is read again from its store: a kiosk signed out, deactivated or given a
    new token since the session signed in; a user logged out, expired, deactivated or with a changed
    password (Django resolves the session's user and checks its auth hash, as for a request), or,
    for ``staff``, no longer staff. A session with
    no key (a test's plain dict) is taken as it is and the rows alone are read again."""
    from importlib import import_module

    from django.contrib.auth import get_user, get_user_model

    key = getattr(session, "session_key", None)
    if key:
        session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    if kiosk_id is not None:
        kiosk = session_kiosk(session)
        if kiosk is None or kiosk.pk != kiosk_id:
            return "not_authenticated", "This kiosk was signed out, deactivated or given a new token."
        return None
    if key:
        user = get_user(SimpleNamespace(session=session))
        if not user.is_authenticated or user.pk != user_id:
            return "not_authenticated", "You are signed out; sign in again."
    else:
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None or not user.is_active:
            return "not_authenticated", "This account can no longer sign in."
    if staff and not (user.is_active and user.is_staff):
        return "not_staff", "Only staff may see the check-in feed."
    return None


class CheckInFeedConsumer(AsyncWebsocketConsumer):
    """Staff only (a signed-in ``is_staff`` session): ``ready`` with today's latest check-ins, then one
    ``checkin`` message per check-in recorded anywhere and one ``removed`` per check-in rejected.
    Read-only: text from the client is refused.

    The feed carries people's names, so access is not decided once: every CHECKIN_ACCESS_RECHECK_SECONDS
    the socket checks again that its session is still signed in (not logged out, expired, or
    invalidated by a password change) and its user still active staff, and closes itself otherwise
    (4401 / 4403). At most CHECKIN_MAX_FEED_SOCKETS_PER_USER feeds per account (4429)."""

    joined = False
    watcher: asyncio.Task | None = None
    slots: Slots | None = None

    async def connect(self):
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_NOT_AUTHENTICATED, "not_authenticated", "Sign in with a staff account to see check-ins.")
            return
        if not (user.is_active and user.is_staff):
            await self.refuse(CLOSE_NOT_STAFF, "not_staff", "Only staff may see the check-in feed.")
            return
        self.slots = Slots()
        if not await self.slots.claim(f"feed-user:{user.pk}", settings.CHECKIN_MAX_FEED_SOCKETS_PER_USER):
            self.slots = None
            await self.refuse(
                CLOSE_TOO_MANY, "too_many_connections", "Too many check-in feeds are open for this account; close one and retry."
            )
            return
        self.user_id = user.pk
        await self.channel_layer.group_add(feed.FEED_GROUP, self.channel_name)
        self.joined = True
        recent = await database_sync_to_async(feed.recent)()
        await self.send_json({"type": "ready", "recent": recent})
        self.watcher = asyncio.create_task(self.watch())

    async def watch(self):
        """Check the account's access again every CHECKIN_ACCESS_RECHECK_SECONDS (closing the socket when
        it is gone), and keep this socket's slot in the per-account cap alive meanwhile."""
        recheck = settings.CHECKIN_ACCESS_RECHECK_SECONDS
        next_beat = next_check = time.monotonic()
        next_beat += HEARTBEAT_SECONDS
        next_check += recheck
        while True:
            await asyncio.sleep(max(0.05, min(next_beat, next_check) - time.monotonic()))
            now = time.monotonic()
            if recheck > 0 and now >= next_check:
                refused = await database_sync_to_async(session_access_lost)(
                    self.scope.get("session"), None, self.user_id, staff=True
                )
                if refused is not None:
                    await self.leave()
                    code, message = refused
                    await self.refuse(CLOSE_NOT_STAFF if code == "not_staff" else CLOSE_NOT_AUTHENTICATED, code, message)
                    return
                next_check = now + recheck
            if now >= next_beat:
                await self.slots.refresh()
                next_beat += HEARTBEAT_SECONDS

    async def leave(self):
        """Off the feed's group and out of the cap: nothing more reaches this socket."""
        if self.joined:
            self.joined = False
            await self.channel_layer.group_discard(feed.FEED_GROUP, self.channel_name)
        if self.slots is not None:
            await self.slots.release()

    async def disconnect(self, code):
        if self.watcher is not None and self.watcher is not asyncio.current_task():
            self.watcher.cancel()
        await self.leave()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send_json({"type": "error", "code": "read_only", "message": "This feed takes no messages."})

    async def checkin_recorded(self, event: dict):
        if self.joined:  # not after access was withdrawn (an event already in the channel's queue)
            await self.send_json({"type": "checkin", **event["checkin"]})

    async def checkin_removed(self, event: dict):
        # staff rejected it ("not this person"): the screens drop its row
        if self.joined:
            await self.send_json({"type": "removed", "id": event["checkin_id"]})

    async def refuse(self, close_code: int, code: str, message: str):
        # Accepted first so the page can say why, as /ws/identify/ does.
        await self.send_json({"type": "error", "code": code, "message": message})
        await self.close(code=close_code)

    async def send_json(self, content: dict):
        await self.send(text_data=json.dumps(content))
