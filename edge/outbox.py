"""Check-ins waiting for the server, in an SQLite file in the state directory.

Each check-in gets a uuid when it is recorded; the server stores one row per uuid, so a retried
upload (the answer lost, the process killed after the POST) never makes a second check-in. A row is
deleted only after the server answered 201 (stored) or 200 (already stored), or ``unknown_person``:
the person was erased on the server while the check-in waited here, so it can never be stored and
is not kept (nor their rows of the repeat window), or ``stale_notice``: it was made under a notice
that was not in force then, or ``checked_in_at_too_old``: older than the server keeps check-ins,
so it can never be stored either. Deleted rows are overwritten on disk
(``secure_delete``): a check-in names its person.

The repeat window's rows (``recent``) are pruned on every sync and when the kiosk starts
(``prune``): rows older than the window, and rows of people no longer in the synced label map or
gallery (erased on the server). An answer refusing the device's key (``Refused``) stops the upload;
the caller then erases everything (``erase``). The file and SQLite's -journal/-wal are 0600.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .sync import Offline, Server, check_refused, private_file

# SQLite makes its -journal / -wal / -shm files with the database file's mode; made 0600 here too
# should an older version (or another umask) have left them readable.
SIDE_FILES = ("", "-journal", "-wal", "-shm")


class Outbox:
    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            os.close(private_file(self.path))
        for suffix in SIDE_FILES:
            if os.path.exists(f"{self.path}{suffix}"):
                os.chmod(f"{self.path}{suffix}", 0o600)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA secure_delete = ON")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS pending (client_id TEXT PRIMARY KEY, body TEXT NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '')"
        )
        # who checked in when, on this device: the server's repeat window applied offline too
        self.db.execute("CREATE TABLE IF NOT EXISTS recent (person_id INTEGER NOT NULL, at TEXT NOT NULL)")
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def add(self, checkin: dict) -> None:
        with self.db:
            self.db.execute("INSERT INTO pending (client_id, body) VALUES (?, ?)", (checkin["client_id"], json.dumps(checkin)))
            self.db.execute("INSERT INTO recent (person_id, at) VALUES (?, ?)", (checkin["person_id"], checkin["checked_in_at"]))

    def checked_in_recently(self, person_id: int, window: timedelta) -> bool:
        since = (datetime.now(UTC) - window).isoformat()
        with self.db:  # who checked in when is kept only as long as the repeat window needs it
            self.db.execute("DELETE FROM recent WHERE at < ?", (since,))
        row = self.db.execute("SELECT 1 FROM recent WHERE person_id = ? AND at >= ? LIMIT 1", (person_id, since)).fetchone()
        return row is not None

    def prune(self, window: timedelta, people: set[int]) -> int:
        """Drop repeat-window rows older than ``window`` and those of anyone not in ``people`` (the
        person ids the device still knows). Returns how many rows went."""
        since = (datetime.now(UTC) - window).isoformat()
        with self.db:
            gone = self.db.execute("DELETE FROM recent WHERE at < ?", (since,)).rowcount
            rows = self.db.execute("SELECT rowid, person_id FROM recent").fetchall()
            stale = [(rowid,) for rowid, person in rows if int(person) not in people]
            self.db.executemany("DELETE FROM recent WHERE rowid = ?", stale)
        return gone + len(stale)

    def erase(self) -> None:
        """Every queued check-in and the repeat window's rows, overwritten in the file (the server
        refused the key: they can never be uploaded)."""
        with self.db:
            self.db.execute("DELETE FROM pending")
            self.db.execute("DELETE FROM recent")
        self.db.execute("VACUUM")

    def pending(self) -> list[dict]:
        return [json.loads(body) for (body,) in self.db.execute("SELECT body FROM pending ORDER BY rowid")]

    def upload(self, server: Server, retries: int = 3, backoff: float = 1.0) -> list[dict]:
        """POST every pending check-in; returns one report per check-in. Offline: stops, keeps the rest.

        Raises ``Refused`` (keeping every row; the caller erases them) when the server refuses the key."""
        reports = []
        for checkin in self.pending():
            for attempt in range(retries):
                try:
                    code, body = server.request("/api/v1/checkins/", "POST", checkin)
                except Offline as err:
                    self._failed(checkin, str(err))
                    reports.append({"type": "upload", "client_id": checkin["client_id"], "status": "offline"})
                    return reports
                check_refused(code, body, "/api/v1/checkins/")
                if code in (200, 201):
                    with self.db:
                        self.db.execute("DELETE FROM pending WHERE client_id = ?", (checkin["client_id"],))
                    row = json.loads(body)
                    reports.append(
                        {"type": "upload", "client_id": checkin["client_id"], "status": code, "checkin_id": row.get("id")}
                    )
                    break
                if _error_code(body) == "unknown_person":  # erased on the server meanwhile
                    self.forget(checkin)
                    reports.append(
                        {"type": "upload", "client_id": checkin["client_id"], "status": code, "dropped": "unknown_person"}
                    )
                    break
                if _error_code(body) in ("stale_notice", "checked_in_at_too_old"):  # never storable now
                    with self.db:
                        self.db.execute("DELETE FROM pending WHERE client_id = ?", (checkin["client_id"],))
                    reports.append(
                        {"type": "upload", "client_id": checkin["client_id"], "status": code, "dropped": _error_code(body)}
                    )
                    break
                if 400 <= code < 500 and code != 429:  # this check-in refused (not the key): keep it, say why, go on
                    self._failed(checkin, f"HTTP {code}: {body[:300].decode(errors='replace')}")
                    reports.append({"type": "upload", "client_id": checkin["client_id"], "status": code, "error": body.decode()})
                    break
                self._failed(checkin, f"HTTP {code}")
                time.sleep(backoff * (2**attempt))
            else:
                reports.append({"type": "upload", "client_id": checkin["client_id"], "status": "retry_later"})
        return reports

    def forget(self, checkin: dict) -> None:
        """Drop a check-in the server will never store, and the device's record of its person."""
        with self.db:
            self.db.execute("DELETE FROM pending WHERE client_id = ?", (checkin["client_id"],))
            self.db.execute("DELETE FROM recent WHERE person_id = ?", (checkin["person_id"],))

    def _failed(self, checkin: dict, error: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE pending SET attempts = attempts + 1, last_error = ? WHERE client_id = ?", (error, checkin["client_id"])
            )


def _error_code(body: bytes) -> str | None:
    """The API's error code (``{"error": {"code": ...}}``), if the answer is one."""
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
