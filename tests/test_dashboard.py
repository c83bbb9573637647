"""The staff dashboard (/admin/dashboard/): check-ins per day and kiosk (a server-drawn chart), today's
arrivals and absentees in the site's time zone, the unknown-visitor figure; staff only."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

import pytest
from django.utils import timezone

from checkin import dashboard
from checkin.models import CheckIn, Kiosk
from people.models import Person
from visitors.models import Visitor

from .conftest import person_named

pytestmark = pytest.mark.django_db

URL = "/admin/dashboard/"
# Far from UTC, so a time shown in UTC by mistake cannot pass for the local one.
ZONE = "Pacific/Auckland"


def check_in(person, when: datetime, kiosk=None) -> CheckIn:
    return CheckIn.objects.create(person=person, checked_in_at=when, kiosk=kiosk, similarity=0.8, threshold=0.55, frames=4)


def local_noon(days_ago: int) -> datetime:
    day = timezone.localdate() - timedelta(days=days_ago)
    return timezone.make_aware(datetime.combine(day, time(12, 0)))


@pytest.fixture
def week(settings, kiosk):
    """In Auckland: Obama at the front door today (twice) and two days ago; Biden at the back door
    today and yesterday; an erased person's check-in today. Everybody else active is absent today."""
    settings.TIME_ZONE = ZONE
    back = Kiosk(name="Back door")
    back.set_new_token()
    back.save()
    obama, biden = person_named("Barack Obama"), person_named("Joe Biden")
    now = timezone.now().replace(microsecond=0)
    midnight = timezone.make_aware(datetime.combine(timezone.localdate(), time.min))
    first = max(now - timedelta(seconds=50), midnight)
    check_in(obama, first, kiosk)
    check_in(obama, max(now - timedelta(seconds=10), midnight), kiosk)
    check_in(obama, local_noon(2), kiosk)
    check_in(biden, max(now - timedelta(seconds=30), midnight), back)
    check_in(biden, local_noon(1), back)
    check_in(None, max(now - timedelta(seconds=20), midnight), kiosk)
    Visitor.objects.create(first_seen_at=now - timedelta(days=1), last_seen_at=now)
    return {"obama": obama, "biden": biden, "obama_first": first, "front": kiosk, "back": back}


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


def test_check_ins_are_counted_per_local_day_and_kiosk(week):
    today = timezone.localdate()
    days, counts = dashboard.per_day_and_kiosk(today - timedelta(days=2), today)
    assert days == [today - timedelta(days=2), today - timedelta(days=1), today]
    assert counts == {"Back door": [0, 1, 1], "Front door": [1, 0, 3]}


def test_the_dashboard_shows_the_chart_arrivals_absentees_and_counts(staff_client, week):
    response = staff_client.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    figures = {
        key: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.split(f'id="figure-{key}">')[1].split("</div>")[0])).strip()
        for key in ("checkins", "arrivals", "absent", "unknown")
    }
    assert figures["checkins"].startswith("6 check-ins")  # the last 14 days by default
    assert figures["arrivals"] == "2 arrived today"
    active = Person.objects.filter(is_active=True).count()
    assert figures["absent"] == f"{active - 2} absent today"
    assert figures["unknown"] == "1 unknown visitors"
    assert "Back door: 2 · Front door: 4" in page

    arrivals = page.split('id="arrivals"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", arrivals)
    first_local = timezone.localtime(week["obama_first"], timezone.get_current_timezone()).strftime("%H:%M:%S")
    assert ("Barack Obama", first_local, "Front door") in rows
    assert [name for name, _, _ in rows] == ["Barack Obama", "Joe Biden"]  # by first arrival
    assert first_local != week["obama_first"].astimezone(UTC).strftime("%H:%M:%S")  # Auckland's, not UTC's
    absentees = page.split('id="absentees"')[1].split("</table>")[0]
    assert "Angelina Jolie" in absentees and "Barack Obama" not in absentees and "Joe Biden" not in absentees


def test_the_unknown_visitor_figure_is_not_available_when_the_site_keeps_none(staff_client, week, settings):
    settings.VISITORS_ENABLED = False
    page = staff_client.get(URL).content.decode()
    assert re.sub(r"<[^>]+>|\s+", " ", page.split('id="figure-unknown">')[1].split("</div>")[0]).split() == [
        "—",
        "unknown",
        "visitors",
    ]


def test_the_chart_is_drawn_on_the_server_with_nothing_fetched_from_elsewhere(staff_client, week):
    page = staff_client.get(URL).content.decode()
    chart = page.split('class="dash-chart"')[1].split("</div>")[0]
    assert "<svg" in chart and "<path" in chart
    assert "Front door" in chart and "Back door" in chart  # the legend
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?(?:https?:)?//""", page, re.IGNORECASE), "an external URL"
    assert "<script" not in chart


def test_a_chosen_range_is_shown_and_a_bad_one_falls_back_to_the_last_14_days(staff_client, week):
    today = timezone.localdate()
    yesterday = (today - timedelta(days=1)).isoformat()
    page = staff_client.get(URL, {"from": yesterday, "to": yesterday}).content.decode()
    assert "Back door: 1" in page and "Front door" not in page.split('class="dash-chart"')[1].split("</p>")[0]
    for bad in (
        {"from": "2026-13-45"},
        {"from": today.isoformat(), "to": yesterday},
        {"from": "2000-01-01", "to": today.isoformat()},
    ):
        response = staff_client.get(URL, bad)
        assert response.status_code == 200
        assert 'class="errornote"' in response.content.decode()
        assert "<strong>6</strong> check-ins" in response.content.decode()


def test_signed_out_visitors_are_sent_to_sign_in_and_non_staff_are_refused(client, plain_user, week):
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/?next=/admin/dashboard/")
    client.force_login(plain_user)
    assert client.get(URL).status_code == 403
    assert client.post(URL).status_code in (403, 405)


def test_the_admin_index_links_to_the_dashboard(staff_client):
    assert 'href="/admin/dashboard/"' in staff_client.get("/admin/").content.decode()


def test_a_kiosk_name_with_dollar_signs_is_drawn_as_text(staff_client):
    """Matplotlib reads "$...$" as mathtext: "$x^$" would raise and take the dashboard down."""
    odd = Kiosk(name="Lobby $x^$")
    odd.set_new_token()
    odd.save()
    check_in(person_named("Barack Obama"), timezone.now(), odd)
    response = staff_client.get(URL)
    assert response.status_code == 200
    assert "Lobby $x^$" in response.content.decode()  # the legend's text, as typed
