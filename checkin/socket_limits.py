"""How many /ws/identify/ sockets may be open at once: per kiosk, per API key or user, per process.

A per-kiosk or per-key cap of N is N numbered slots in Django's cache. A connection claims the first
free slot with ``cache.add`` (atomic: SET NX on Redis, a lock on LocMem) and holds it with a value
naming the connection; it refreshes the slot's expiry on a heartbeat and deletes it on disconnect.
With REDIS_URL the cache is Redis, so the caps hold across every web worker; a worker that crashes
stops refreshing, and its slots expire after ``SLOT_TTL_SECONDS``. On the embedded defaults (LocMem)
the count is per process, which there is the whole site.

The per-process cap (``CHECKIN_MAX_SOCKETS``) protects one process's event loop and memory, so it
is counted in memory.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from django.core.cache import cache

log = logging.getLogger(__name__)

SLOT_TTL_SECONDS = 60  # a slot not refreshed for this long is free again (a crashed worker's)
HEARTBEAT_SECONDS = SLOT_TTL_SECONDS / 3
# Tests give each test its own prefix (tests/conftest.py), so slots never leak between tests.
KEY_PREFIX = "ws-slot"

_open_in_process: set[str] = set()


@dataclass
class Slots:
    """The slots one connection holds; ``release()`` gives them all back."""

    connection: str = field(default_factory=lambda: uuid.uuid4().hex)
    keys: list[str] = field(default_factory=list)
    in_process: bool = False

    async def claim_process(self, limit: int) -> bool:
        if limit > 0 and len(_open_in_process) >= limit:
            return False
        _open_in_process.add(self.connection)
        self.in_process = True
        return True

    async def claim(self, group: str, limit: int) -> bool:
        """A slot among ``limit`` for ``group`` (e.g. "kiosk:3"); False if all are taken. 0 = no cap."""
        if limit <= 0:
            return True
        try:
            for number in range(limit):
                key = f"{KEY_PREFIX}:{group}:{number}"
                if await cache.aadd(key, self.connection, timeout=SLOT_TTL_SECONDS):
                    self.keys.append(key)
                    return True
        except Exception as err:
            # The cache (Redis) is unreachable: kiosks keep working, bounded by the per-process cap.
            log.warning("socket cap for %s not enforced: the cache is unavailable (%r)", group, err)
            return True
        return False

    async def refresh(self) -> None:
        """Push back the expiry of the slots still ours (called every HEARTBEAT_SECONDS)."""
        try:
            for key in self.keys:
                if await cache.aget(key) == self.connection:
                    await cache.atouch(key, SLOT_TTL_SECONDS)
        except Exception as err:
            log.warning("socket slots not refreshed: the cache is unavailable (%r)", err)

    async def release(self) -> None:
        _open_in_process.discard(self.connection)
        self.in_process = False
        keys, self.keys = self.keys, []
        try:
            for key in keys:
                # Only if still ours: a slot that expired may since belong to another connection.
                if await cache.aget(key) == self.connection:
                    await cache.adelete(key)
        except Exception as err:
            log.warning("socket slots not released (they expire in %s s): %r", SLOT_TTL_SECONDS, err)


def open_in_process() -> int:
    return len(_open_in_process)


def forget_all_in_process() -> None:
    """For tests: connections a test left open without disconnecting no longer count."""
    _open_in_process.clear()
