"""GET /api/v1/reports/attendance/: per person and local day, first and last check-in, count and
kiosks; the active people not seen; as JSON or a CSV a spreadsheet opens with local dates and times."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from rest_framework.test import APIClient

from checkin import reports
from checkin.models import CheckIn, Kiosk
from people.models import Person
from security.models import ApiKey, Role

from .conftest import person_named, token_client

pytestmark = pytest.mark.django_db

URL = "/api/v1/reports/attendance/"
BERLIN = ZoneInfo("Europe/Berlin")


def berlin(day: int, hour: int, minute: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=BERLIN)


def check_in(person, when: datetime, kiosk=None) -> CheckIn:
    return CheckIn.objects.create(person=person, checked_in_at=when, kiosk=kiosk, similarity=0.8, threshold=0.55, frames=4)


def key_client(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    return client


@pytest.fixture
def team(settings, kiosk):
    """Three people with EMP- ids in Berlin: Obama comes twice on the 30th (two doors), and once
    at 00:30 on 1 December (23:30 UTC on the 30th); Biden comes on the 1st at 23:30; the third,
    whose name would be a spreadsheet formula, never comes. An erased person's check-in (person
    null) on the 30th."""
    settings.TIME_ZONE = "Europe/Berlin"
    back = Kiosk(name="Back door")
    back.set_new_token()
    back.save()
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    Person.objects.filter(pk=obama.pk).update(external_id="EMP-1")
    Person.objects.filter(pk=biden.pk).update(external_id="EMP-2")
    formula = Person.objects.create(name='=HYPERLINK("http://x")', external_id="EMP-3")
    check_in(obama, berlin(30, 12, 10), back)
    check_in(obama, berlin(30, 7, 55), kiosk)
    check_in(obama, berlin(30, 9, 0), kiosk)
    check_in(obama, berlin(1, 0, 30, month=12), kiosk)
    check_in(biden, berlin(1, 23, 30, month=12), back)
    check_in(None, berlin(30, 10, 0), kiosk)
    return {"obama": obama, "biden": biden, "formula": formula}


def report(api, **params) -> dict:
    response = api.get(URL, {"from": "2026-11-30", "to": "2026-12-01", **params})
    assert response.status_code == 200, response.content
    return response.json()


def test_check_ins_are_grouped_per_person_and_local_day(staff_api, team):
    body = report(staff_api, external_id_prefix="EMP-")
    assert body["time_zone"] == "Europe/Berlin"
    first, second = body["days"]
    assert first["date"] == "2026-11-30" and second["date"] == "2026-12-01"
    assert first["present"] == [
        {
            "person_id": team["obama"].pk,
            "name": "Barack Obama",
            "external_id": "EMP-1",
            "date": "2026-11-30",
            "first_check_in": "2026-11-30T07:55:00+01:00",
            "last_check_in": "2026-11-30T12:10:00+01:00",
            "check_ins": 3,
            "kiosks": ["Back door", "Front door"],
        }
    ]
    # 00:30 in Berlin is still 30 November in UTC: it belongs to Berlin's 1 December.
    present = {row["name"]: row for row in second["present"]}
    assert set(present) == {"Barack Obama", "Joe Biden"}
    assert present["Barack Obama"]["first_check_in"] == "2026-12-01T00:30:00+01:00"
    assert present["Barack Obama"]["check_ins"] == 1 and present["Barack Obama"]["kiosks"] == ["Front door"]
    assert present["Joe Biden"]["last_check_in"] == "2026-12-01T23:30:00+01:00"


def test_a_check_in_at_23_30_local_is_that_local_day_west_of_utc(staff_api, settings):
    settings.TIME_ZONE = "America/New_York"
    obama = person_named("Barack Obama")
    check_in(obama, datetime(2026, 11, 30, 23, 30, tzinfo=ZoneInfo("America/New_York")))  # 04:30 UTC on 1 December
    days = report(staff_api)["days"]
    assert [row["name"] for row in days[0]["present"]] == ["Barack Obama"]
    assert days[0]["present"][0]["first_check_in"] == "2026-11-30T23:30:00-05:00"
    assert days[1]["present"] == []


def test_active_people_not_seen_are_absent_per_day(staff_api, team):
    first, second = report(staff_api, external_id_prefix="EMP-")["days"]
    assert [row["name"] for row in first["absent"]] == ['=HYPERLINK("http://x")', "Joe Biden"]
    assert [row["name"] for row in second["absent"]] == ['=HYPERLINK("http://x")']
    # Without a prefix every active person is expected; an inactive one is not.
    Person.objects.filter(name="Paul Rudd").update(is_active=False)
    everyone = report(staff_api)["days"][0]
    absent = {row["name"] for row in everyone["absent"]}
    assert {"Joe Biden", "Angelina Jolie", "Kit Harington"} <= absent
    assert "Barack Obama" not in absent and "Paul Rudd" not in absent
    assert len(absent) == Person.objects.filter(is_active=True).count() - 1


def test_an_erased_persons_check_ins_are_only_counted(staff_api, team):
    first, second = report(staff_api)["days"]
    assert first["anonymous_check_ins"] == 1 and second["anonymous_check_ins"] == 0
    assert all(row["person_id"] is not None for row in first["present"])


def test_the_report_is_two_queries_whatever_the_number_of_people(team, django_assert_num_queries):
    from datetime import date

    with django_assert_num_queries(2):
        days = reports.attendance(date(2026, 11, 30), date(2026, 12, 1))
    assert sum(entry.check_ins for day in days for entry in day.present) == 5


def test_the_csv_opens_with_local_dates_and_times_and_no_formulas(staff_api, team):
    response = staff_api.get(URL, {"from": "2026-11-30", "to": "2026-12-01", "format": "csv", "external_id_prefix": "EMP-"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="attendance-2026-11-30-2026-12-01.csv"'
    text = response.content.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text[1:])))
    assert rows[0] == [
        "date",
        "person_id",
        "name",
        "external_id",
        "first_check_in",
        "last_check_in",
        "check_ins",
        "kiosks",
        "status",
    ]
    obama, formula = team["obama"].pk, team["formula"].pk
    assert rows[1] == [
        "2026-11-30",
        str(obama),
        "Barack Obama",
        "EMP-1",
        "07:55:00",
        "12:10:00",
        "3",
        "Back door, Front door",
        "present",
    ]
    assert ["2026-11-30", str(formula), '\'=HYPERLINK("http://x")', "EMP-3", "", "", "0", "", "absent"] in rows
    assert ["2026-12-01", str(obama), "Barack Obama", "EMP-1", "00:30:00", "00:30:00", "1", "Front door", "present"] in rows
    assert len(rows) == 1 + 3 + 3  # a row per person and day


def test_accented_names_survive_the_csv(staff_api, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    zoe = Person.objects.create(name="Zoë Müller-Lüdenscheidt")
    check_in(zoe, berlin(30, 8, 0))
    response = staff_api.get(URL, {"from": "2026-11-30", "to": "2026-11-30", "format": "csv"})
    assert "Zoë Müller-Lüdenscheidt" in response.content.decode("utf-8-sig")


def test_without_dates_the_report_is_today(staff_api):
    from django.utils import timezone

    check_in(person_named("Barack Obama"), timezone.now())
    body = staff_api.get(URL).json()
    today = timezone.localdate().isoformat()
    assert body["from"] == body["to"] == today
    assert [row["name"] for row in body["days"][0]["present"]] == ["Barack Obama"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"from": "2026-11-31", "to": "2026-12-01"}, "from"),
        ({"from": "2026-11-30", "to": "yesterday"}, "to"),
        ({"from": "2026-11-30"}, "to"),
        ({"to": "2026-11-30"}, "from"),
        ({"from": "2026-12-02", "to": "2026-12-01"}, "to"),
        ({"from": "2025-01-01", "to": "2026-01-02"}, "to"),  # 367 days
        ({"from": "2026-11-30", "to": "2026-11-30", "format": "xml"}, "format"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(staff_api, params, field):
    response = staff_api.get(URL, params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error


def test_the_longest_range_is_a_setting(staff_api, settings):
    settings.REPORT_MAX_DAYS = 7
    assert staff_api.get(URL, {"from": "2026-11-01", "to": "2026-11-07"}).status_code == 200
    assert staff_api.get(URL, {"from": "2026-11-01", "to": "2026-11-08"}).status_code == 400


def test_only_staff_and_staff_keys_may_read_the_report(staff_user, user_api, plain_user, kiosk, django_user_model):
    from django.contrib.auth.models import Permission

    _, client_key = ApiKey.issue(plain_user, "reporting tool", Role.CLIENT)
    _, kiosk_key = ApiKey.issue(staff_user, "front door edge", Role.KIOSK, kiosk=kiosk)
    _, staff_key = ApiKey.issue(staff_user, "payroll export", Role.STAFF)
    assert APIClient().get(URL).status_code == 401
    assert user_api.get(URL).status_code == 403
    assert key_client(client_key).get(URL).status_code == 403
    assert key_client(kiosk_key).get(URL).status_code == 403
    assert key_client(kiosk_key).get(URL, {"format": "csv"}).status_code == 403
    # The check-ins list's read permission does not open the report: it names the whole roster.
    plain_user.user_permissions.add(Permission.objects.get(codename="view_checkin"))
    assert token_client(django_user_model.objects.get(pk=plain_user.pk)).get(URL).status_code == 403
    assert token_client(staff_user).get(URL).status_code == 200
    assert key_client(staff_key).get(URL, {"format": "csv"}).status_code == 200
    session = APIClient()
    session.force_login(staff_user)
    assert session.get(URL).status_code == 200


def test_a_report_past_the_most_person_days_is_refused_before_it_is_built(staff_api, settings):
    """Days x active people covered: each is a row built in the web worker's memory."""
    people = Person.objects.filter(is_active=True).count()
    settings.REPORT_MAX_ROWS = 10 * people
    ok = staff_api.get("/api/v1/reports/attendance/?from=2026-11-01&to=2026-11-10")
    assert ok.status_code == 200, ok.content
    refused = staff_api.get("/api/v1/reports/attendance/?from=2026-11-01&to=2026-11-11")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "report_too_large" and f"{11 * people:,} person-days" in error["message"]
    first = Person.objects.filter(is_active=True).first()
    Person.objects.update(external_id=None)
    Person.objects.filter(pk=first.pk).update(external_id="EMP-1")
    narrowed = staff_api.get("/api/v1/reports/attendance/?from=2026-11-01&to=2026-11-11&external_id_prefix=EMP-")
    assert narrowed.status_code == 200  # one person x 11 days
