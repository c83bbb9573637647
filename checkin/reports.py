"""Attendance reports: who checked in on which local day (first, last, how often, where), and which
active people did not.

Days are the site's (settings.TIME_ZONE): a check-in at 23:30 in Berlin belongs to that Berlin day,
though it is the next day's 22:30 UTC. The database groups check-ins per person, local day and
kiosk in one query; Python only merges the kiosks of a person's day.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Count, Max, Min
from django.db.models.functions import TruncDate
from django.utils import timezone

from .models import CheckIn


@dataclass
class Attendance:
    """One person's check-ins on one local day (times aware, in the site's time zone)."""

    person_id: int
    name: str
    external_id: str | None
    date: date
    first_check_in: datetime
    last_check_in: datetime
    check_ins: int
    kiosks: list[str]


@dataclass
class Absence:
    person_id: int
    name: str
    external_id: str | None
    date: date


@dataclass
class Day:
    date: date
    present: list[Attendance] = field(default_factory=list)
    absent: list[Absence] = field(default_factory=list)
    # Check-ins of erased people (kept anonymised): counted, never named.
    anonymous_check_ins: int = 0


class DayOutOfRange(ValueError):
    """A day at the calendar's edge whose bounds cannot be stored (in UTC, the database's zone)."""


def local_day_bounds(first_day: date, last_day: date) -> tuple[datetime, datetime]:
    """The aware instants where local day ``first_day`` starts and the day after ``last_day`` starts.
    Raises DayOutOfRange for days whose bounds fall outside years 1-9999 in UTC (9999-12-31, or
    0001-01-01 east of UTC): a query with them would overflow."""
    zone = timezone.get_current_timezone()
    try:
        start = timezone.make_aware(datetime.combine(first_day, time.min), zone)
        end = timezone.make_aware(datetime.combine(last_day + timedelta(days=1), time.min), zone)
        start.astimezone(UTC), end.astimezone(UTC)
    except OverflowError:
        raise DayOutOfRange(f"{first_day}..{last_day} is outside the calendar this site stores") from None
    return start, end


def expected_people(external_id_prefix: str = ""):
    """The people a report expects each day: the active ones (whose external_id starts with the
    prefix, when given)."""
    from people.models import Person

    expected = Person.objects.filter(is_active=True)
    return expected.filter(external_id__startswith=external_id_prefix) if external_id_prefix else expected


def attendance(first_day: date, last_day: date, external_id_prefix: str = "") -> list[Day]:
    """Attendance per local day from ``first_day`` to ``last_day`` (both included), each day's
    people sorted by name. Absent: active people (whose external_id starts with
    ``external_id_prefix``, when given) with no check-in that day. With a prefix, the check-ins
    are narrowed alike, and anonymous ones (no person, so no external_id) are not counted."""

    zone = timezone.get_current_timezone()
    start, end = local_day_bounds(first_day, last_day)
    rows = (
        CheckIn.objects.filter(checked_in_at__gte=start, checked_in_at__lt=end)
        .annotate(day=TruncDate("checked_in_at", tzinfo=zone))
        .values("day", "person_id", "person__name", "person__external_id", "kiosk__name")
        .annotate(first=Min("checked_in_at"), last=Max("checked_in_at"), count=Count("id"))
        .order_by()
    )
    if external_id_prefix:
        rows = rows.filter(person__external_id__startswith=external_id_prefix)

    days = {first_day + timedelta(days=n): Day(first_day + timedelta(days=n)) for n in range((last_day - first_day).days + 1)}
    seen: dict[tuple[date, int], Attendance] = {}
    for row in rows:
        day = days[row["day"]]
        if row["person_id"] is None:
            day.anonymous_check_ins += row["count"]
            continue
        key = (row["day"], row["person_id"])
        entry = seen.get(key)
        if entry is None:
            entry = seen[key] = Attendance(
                row["person_id"], row["person__name"], row["person__external_id"], row["day"], row["first"], row["last"], 0, []
            )
            day.present.append(entry)
        entry.first_check_in = min(entry.first_check_in, row["first"])
        entry.last_check_in = max(entry.last_check_in, row["last"])
        entry.check_ins += row["count"]
        if row["kiosk__name"] is not None:
            entry.kiosks.append(row["kiosk__name"])

    expected = list(expected_people(external_id_prefix).values_list("pk", "name", "external_id"))
    for day in days.values():
        for entry in day.present:
            entry.first_check_in = timezone.localtime(entry.first_check_in, zone)
            entry.last_check_in = timezone.localtime(entry.last_check_in, zone)
            entry.kiosks = sorted(set(entry.kiosks))
        here = {entry.person_id for entry in day.present}
        day.absent = [Absence(pk, name, external_id, day.date) for pk, name, external_id in expected if pk not in here]
        day.present.sort(key=lambda entry: (entry.name, entry.person_id))
        day.absent.sort(key=lambda entry: (entry.name, entry.person_id))
    return list(days.values())


CSV_HEADER = ["date", "person_id", "name", "external_id", "first_check_in", "last_check_in", "check_ins", "kiosks", "status"]


def attendance_csv(days: list[Day]) -> str:
    """The report as CSV text, one row per person and day (status present or absent); local dates
    as YYYY-MM-DD and times as HH:MM:SS, which spreadsheets read as dates and times. Anonymous
    check-ins are left out: a row per person cannot hold them."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for day in days:
        for entry in day.present:
            times = (entry.first_check_in.strftime("%H:%M:%S"), entry.last_check_in.strftime("%H:%M:%S"))
            writer.writerow(_csv_row(day, entry, *times, entry.check_ins, ", ".join(entry.kiosks), "present"))
        for entry in day.absent:
            writer.writerow(_csv_row(day, entry, "", "", 0, "", "absent"))
    return out.getvalue()


def _csv_row(day: Day, entry, first: str, last: str, check_ins: int, kiosks: str, status: str) -> list:
    """One CSV row (CSV_HEADER's columns) for a person on a day."""
    name, external_id = _cell(entry.name), _cell(entry.external_id or "")
    return [day.date.isoformat(), entry.person_id, name, external_id, first, last, check_ins, _cell(kiosks), status]


def _cell(text: str) -> str:
    # A cell starting with one of these is a formula to a spreadsheet (CSV injection): a name like
    # '=HYPERLINK(...)' must stay text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
