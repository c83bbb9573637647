"""The staff check-in feed: each check-in recorded by any kiosk, on any web worker, pushed at once to
the staff screens that have /ws/checkins/ open (e.g. the reception desk).

Check-ins are announced to one channel-layer group. With REDIS_URL the layer is channels-redis, so a
check-in made through one worker process reaches staff connected to another; the embedded in-memory
layer reaches only its own process's connections.

An event carries the check-in's id, the person's id and name, the time and the device (kiosk or
account) and how sure the match was: never images or embeddings. A check-in staff reject ("not this
person", checkin.corrections) is announced by id alone, and the screens drop its row.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

from .models import CheckIn

log = logging.getLogger(__name__)

FEED_GROUP = "checkin-feed"
EVENT_TYPE = "checkin.recorded"  # handled by CheckInFeedConsumer.checkin_recorded
REMOVED_EVENT_TYPE = "checkin.removed"  # handled by CheckInFeedConsumer.checkin_removed
RECENT_ON_CONNECT = 20
SEND_TIMEOUT_SECONDS = 5.0


def describe(checkin: CheckIn, name: str) -> dict:
    """What staff see of one check-in (JSON-ready). ``checkin.kiosk``/``user`` should be loaded."""
    return {
        "id": checkin.pk,
        "person_id": checkin.person_id,
        "name": name,
        "checked_in_at": timezone.localtime(checkin.checked_in_at).isoformat(),
        "kiosk": checkin.kiosk.name if checkin.kiosk_id else None,
        "device": checkin.device,
        "similarity": round(checkin.similarity, 4),
    }


def recent(limit: int = RECENT_ON_CONNECT) -> list[dict]:
    """(ORM) Today's latest check-ins, newest first: what a screen shows as soon as it connects."""
    rows = CheckIn.objects.today().select_related("person", "kiosk", "user")[:limit]
    return [describe(c, c.person.name if c.person_id else "") for c in rows]


async def announce(checkin: CheckIn, name: str) -> bool:
    """Send a committed check-in to every connected staff screen; False (logged) if the channel layer
    is unavailable. The check-in itself is stored either way: the feed is a convenience."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await asyncio.wait_for(
            layer.group_send(FEED_GROUP, {"type": EVENT_TYPE, "checkin": describe(checkin, name)}),
            SEND_TIMEOUT_SECONDS,
        )
    except Exception as err:  # Redis down or slow: the kiosk must keep working
        log.warning("check-in %s was not announced to the staff feed: %r", checkin.pk, err)
        return False
    return True


def announce_removed(checkin_id: int) -> bool:
    """(sync; run once the removal has committed) Tell every connected staff screen to drop this
    check-in's row; False (logged) if the channel layer is unavailable."""
    layer = get_channel_layer()
    if layer is None:
        return False

    async def send():
        await asyncio.wait_for(
            layer.group_send(FEED_GROUP, {"type": REMOVED_EVENT_TYPE, "checkin_id": checkin_id}), SEND_TIMEOUT_SECONDS
        )

    try:
        async_to_sync(send)()
    except Exception as err:  # Redis down or slow: the check-in is removed all the same
        log.warning("the removal of check-in %s was not announced to the staff feed: %r", checkin_id, err)
        return False
    return True
