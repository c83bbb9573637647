"""Check-ins waiting for the server, in an SQLite file in the state directory.

Each check-in gets a uuid when it is recorded; the server stores one row per uuid, so a retried
upload (the answer lost, the process killed after the POST) never makes a second check-in. A row is
deleted only after the server answered 201 (stored) or 200 (already stored), or refused that one
record for good: ``unknown_person`` (the person was erased or deactivated on the server while the
check-in waited here: their rows of the repeat window go too), ``stale_notice`` (made under a
notice not in force then), ``checked_in_at_too_old`` (older than the server keeps check-ins),
``client_id_taken`` (409: another device used the uuid), or any other 400 or 413 in the API's error
shape (the record itself is invalid). ``checked_in_at_in_future`` is kept while it can still be
stored: the server takes it once its clock has caught up, so it is dropped only when it was first
refused ``FUTURE_WAIT`` ago, or is dated more than ``FUTURE_WAIT`` ahead of the device's own clock
(the clock was set back since: it will not catch up in time). Each drop is reported (``dropped``:
the reason) and counted per reason (``dropped_counts``, in ``python -m edge status``). A 429, a
5xx, or a 4xx that is not the API's own error answer (a proxy's page) keep the row. Deleted rows
are overwritten on disk (``secure_delete``): a check-in names its person.

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
# How long a check-in refused as dated ahead of the server's clock waits for that clock to catch up.
FUTURE_WAIT = timedelta(hours=24)


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
        if "first_refused_at" not in {row[1] for row in self.db.execute("PRAGMA table_info(pending)")}:
            self.db.execute("ALTER TABLE pending ADD COLUMN first_refused_at TEXT")  # an outbox of an older kiosk
        self.db.execute("CREATE TABLE IF NOT EXISTS dropped (reason TEXT PRIMARY KEY, count INTEGER NOT NULL)")
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
                error = _error_code(body)
                if error == "unknown_person":  # erased or deactivated on the server meanwhile
                    self.forget(checkin)
                    self._count_drop(error)
                    reports.append({"type": "upload", "client_id": checkin["client_id"], "status": code, "dropped": error})
                    break
                if error is not None and self._refused_for_good(checkin, code, error):
                    self._drop(checkin, error)
                    reports.append({"type": "upload", "client_id": checkin["client_id"], "status": code, "dropped": error})
                    break
                if 400 <= code < 500 and code != 429:  # this check-in refused for now (not the key): keep it, say why, go on
                    self._failed(checkin, f"HTTP {code}: {body[:300].decode(errors='replace')}")
                    reports.append({"type": "upload", "client_id": checkin["client_id"], "status": code, "error": body.decode()})
                    break
                self._failed(checkin, f"HTTP {code}")
                time.sleep(backoff * (2**attempt))
            else:
                reports.append({"type": "upload", "client_id": checkin["client_id"], "status": "retry_later"})
        return reports

    def _refused_for_good(self, checkin: dict, code: int, error: str) -> bool:
        """Whether the API's refusal ``error`` of this record can never turn into a stored check-in."""
        if error == "checked_in_at_in_future":
            now = datetime.now(UTC)
            with self.db:
                self.db.execute(
                    "UPDATE pending SET first_refused_at = COALESCE(first_refused_at, ?) WHERE client_id = ?",
                    (now.isoformat(), checkin["client_id"]),
                )
            (first,) = self.db.execute(
                "SELECT first_refused_at FROM pending WHERE client_id = ?", (checkin["client_id"],)
            ).fetchone()
            dated = datetime.fromisoformat(checkin["checked_in_at"])
            dated = dated if dated.tzinfo else dated.replace(tzinfo=UTC)
            return now - datetime.fromisoformat(first) > FUTURE_WAIT or dated - now > FUTURE_WAIT
        return code in (400, 413) or error in ("client_id_taken", "stale_notice")

    def _drop(self, checkin: dict, reason: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM pending WHERE client_id = ?", (checkin["client_id"],))
        self._count_drop(reason)

    def _count_drop(self, reason: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO dropped (reason, count) VALUES (?, 1) ON CONFLICT(reason) DO UPDATE SET count = count + 1", (reason,)
            )

    def dropped_counts(self) -> dict[str, int]:
        """Check-ins dropped because the server refused them for good, per reason, since the outbox began."""
        return dict(self.db.execute("SELECT reason, count FROM dropped ORDER BY reason"))

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
