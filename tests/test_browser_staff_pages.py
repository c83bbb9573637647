"""Staff pages in headless Chromium against a real daphne server, with every outside request blocked:
the dashboard's chart and tables, and choosing a face in a group photo."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from .browser import LOCAL_HOSTS, ROOT, STAFF_PASSWORD
from .conftest import PROBES

pytestmark = [pytest.mark.browser, pytest.mark.django_db]

SETUP = """
from datetime import timedelta
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from checkin.models import CheckIn, Kiosk
from people import services
from people.models import Person
from recognition import enrollment

kiosk = Kiosk.objects.get(name="Front door")
now = timezone.now()
for name, ago in (("Barack Obama", 3), ("Joe Biden", 2)):
    CheckIn.objects.create(person=Person.objects.get(name=name), kiosk=kiosk, checked_in_at=now - timedelta(seconds=ago),
                           similarity=0.8, threshold=0.55, frames=3)
CheckIn.objects.create(person=Person.objects.get(name="Joe Biden"), kiosk=kiosk, checked_in_at=now - timedelta(days=3),
                       similarity=0.8, threshold=0.55, frames=3)
face = services.enroll(Person.objects.get(name="Kit Harington"), SimpleUploadedFile("group.jpg", open({photo!r}, "rb").read()),
                       process=False)
enrollment.process_face_image(face)
print("FACE", face.pk, face.reason_code)
"""


def sign_in(page, url: str) -> None:
    page.goto(url + "/admin/login/?next=/admin/")
    page.fill("#id_username", "browser-staff")
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#content")


def only_local(page, blocked: list) -> None:
    def route(route):
        if urlparse(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", route)


@pytest.fixture(scope="module")
def group_photo(site):
    import subprocess

    out = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "manage.py", "shell", "-c", SETUP.format(photo=str(PROBES / "kit_with_rose.jpg"))],
        cwd=ROOT,
        env=site.env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("FACE "))
    _, pk, code = line.split()
    assert code == "several_faces", out
    return int(pk)


def test_the_dashboard_draws_its_chart_and_lists_today_in_a_browser(site, chromium, group_photo, tmp_path):
    page, blocked = chromium.new_page(), []
    try:
        only_local(page, blocked)
        sign_in(page, site.url)
        page.click("a[href='/admin/dashboard/']")  # linked from the admin's home page
        page.wait_for_selector(".dash-chart svg")
        box = page.locator(".dash-chart svg").bounding_box()
        assert box["width"] > 400 and box["height"] > 100
        assert "3" in page.inner_text("#figure-checkins") and "2" in page.inner_text("#figure-arrivals")
        assert page.inner_text("#figure-unknown").split()[0].isdigit()  # a count: the site keeps visitors
        arrivals = page.inner_text("#arrivals")
        assert "Barack Obama" in arrivals and "Joe Biden" in arrivals and "Front door" in arrivals
        assert "Kit Harington" in page.inner_text("#absentees")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()
    assert blocked == [], f"the dashboard asked for outside resources: {blocked}"


def test_staff_choose_a_face_on_the_photo_in_a_browser(site, chromium, group_photo, tmp_path):
    page, blocked = chromium.new_page(), []
    try:
        only_local(page, blocked)
        sign_in(page, site.url)
        page.goto(f"{site.url}/admin/people/faceimage/{group_photo}/change/")
        page.click("text=Choose the person's face")
        page.wait_for_selector("svg rect")
        # The photo is shown (through the staff-only media view) with a numbered box per face.
        loaded = page.eval_on_selector("img[alt='the photo']", "img => img.complete && img.naturalWidth")
        assert loaded == 501
        assert page.locator("svg rect").count() == 2 and page.locator("svg text").all_text_contents() == ["#0", "#1"]
        page.screenshot(path=str(tmp_path / "choose.png"), full_page=True)
        page.click("button:has-text('This is face #1')")
        page.wait_for_selector(".messagelist")
        assert "Face #1 chosen" in page.inner_text(".messagelist")
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()
    assert blocked == []
    ((box, choice),) = site.query(f"SELECT chosen_box, face_choice FROM people_faceimage WHERE id = {group_photo}")
    assert choice == "staff" and box.replace(" ", "") == "[258,79,89,120]"
