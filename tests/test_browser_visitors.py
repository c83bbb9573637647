"""Unknown visitors end to end, as a receptionist sees it: headless Chromium with a fake camera of a
stranger (Joe Biden, left out of this site's gallery) visits the kiosk's check-in page twice; the
two visits are one visitor with two sightings; staff enroll them from the admin page in the
browser; on a third visit the kiosk greets them by name.

A real ASGI server (daphne) serves a throwaway SQLite site (tests/test_browser_checkin.Site).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .browser import (
    KIOSK_TOKEN,
    STAFF_PASSWORD,
    WAIT_MS,
    Site,
    gallery_fixture,
    launch_chromium,
    letterboxed,
    require_chromium,
    start_site,
    write_y4m,
)
from .conftest import PEOPLE

pytestmark = [pytest.mark.browser, pytest.mark.django_db]

STRANGER = "Joe Biden"
NEW_NAME = "Joseph Robinette Biden"


def gallery_without_the_stranger(path: Path) -> None:
    gallery_fixture(path)
    rows = json.loads(path.read_text())
    stranger = {row["pk"] for row in rows if row["model"] == "people.person" and row["fields"]["name"] == STRANGER}
    assert len(stranger) == 1
    kept = [
        row
        for row in rows
        if not (row["model"] == "people.person" and row["pk"] in stranger)
        and not (row["model"] == "people.faceimage" and row["fields"]["person"] in stranger)
    ]
    path.write_text(json.dumps(kept))


@pytest.fixture(scope="module")
def site(django_db_setup, django_db_blocker, tmp_path_factory):
    """Its own site (not the session's): a gallery without the stranger."""
    require_chromium()
    with django_db_blocker.unblock():
        site = start_site(tmp_path_factory.mktemp("visitors-site"), gallery_without_the_stranger)
    yield site
    site.stop()


def camera(tmp_path: Path, photo: Path) -> Path:
    video = tmp_path / f"{photo.stem}.y4m"
    write_y4m(video, [(letterboxed(photo), 60)])
    return video


def launch(playwright, tmp_path: Path, video: Path):
    return launch_chromium(playwright, tmp_path / f"profile-{video.stem}-{time.monotonic_ns()}", camera=video, width=900)


def start_kiosk_check_in(page, site: Site) -> None:
    page.goto(site.url + "/checkin/")
    page.fill("#kiosk-token", KIOSK_TOKEN)
    page.click("#kiosk-form button")
    page.wait_for_selector("#consent")
    assert "matches nobody enrolled here" in page.inner_text("#consent")  # the notice says what is kept
    page.check("#consent-agree")
    page.check("#consent-age")
    page.click("#consent-start")


def wait_for_rows(site: Site, sql: str, expected, timeout: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if site.query(sql) == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{sql} gave {site.query(sql)}, not {expected}, within {timeout:.0f} s:\n{site.log_tail()}")


def visit_as_a_stranger(playwright, site: Site, tmp_path: Path, photo: Path, sightings: int) -> None:
    browser = launch(playwright, tmp_path, camera(tmp_path, photo))
    page = browser.new_page()
    try:
        start_kiosk_check_in(page, site)
        page.wait_for_selector("#faces li:has-text('Unknown')", timeout=WAIT_MS)
        wait_for_rows(site, "SELECT count(*) FROM visitors_sighting", [(sightings,)])
        assert page.query_selector("#greeting:has-text('Welcome')") is None
    finally:
        browser.close()


def test_a_stranger_seen_twice_is_one_visitor_staff_enroll_them_and_the_third_visit_greets_them(site, tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Two separate visits (page loads, browsers), two different photos of the same stranger.
        visit_as_a_stranger(playwright, site, tmp_path, PEOPLE / "joe_biden" / "biden.jpg", 1)
        visit_as_a_stranger(playwright, site, tmp_path, PEOPLE / "joe_biden" / "biden2.jpg", 2)
        assert site.query("SELECT count(*) FROM visitors_visitor") == [(1,)]
        [(visitor_id, kiosks)] = site.query("SELECT visitor_id, group_concat(DISTINCT kiosk_id) FROM visitors_sighting")
        assert kiosks == "900001"
        assert not (site.media / "visitors").exists()  # VISITOR_KEEP_CROP is off: no picture kept

        # Staff enroll the visitor from the admin's "Unknown visitors" page.
        browser = launch(playwright, tmp_path, camera(tmp_path, PEOPLE / "joe_biden" / "biden.jpg"))
        admin = browser.new_page()
        try:
            admin.goto(site.url + "/admin/login/?next=/admin/visitors/visitor/")
            admin.fill("#id_username", "browser-staff")
            admin.fill("#id_password", STAFF_PASSWORD)
            admin.click("input[type=submit]")
            admin.wait_for_selector(f"text=Visitor #{visitor_id}")
            admin.click(f"text=Visitor #{visitor_id}")
            admin.wait_for_selector("#enroll-form")
            assert admin.inner_text("#sighting-count") == "2"
            assert "kiosk: Front door" in admin.inner_text("#sightings")
            admin.fill("#id_enroll-name", NEW_NAME)
            admin.click("button[name=_enroll]")
            admin.wait_for_url("**/admin/people/person/*/change/")
            assert "2 face(s) added to the gallery" in admin.inner_text("ul.messagelist")
        except Exception:
            print(site.log_tail())
            raise
        finally:
            admin.close()
            browser.close()
        assert site.query("SELECT count(*) FROM visitors_visitor") == [(0,)]
        [(person_id, basis)] = site.query(f"SELECT id, legal_basis FROM people_person WHERE name = '{NEW_NAME}'")
        assert basis == "explicit_consent"
        assert site.query(f"SELECT count(*) FROM people_faceimage WHERE person_id = {person_id} AND status = 'accepted'") == [
            (2,)
        ]

        # A third visit: the kiosk greets them by name.
        browser = launch(playwright, tmp_path, camera(tmp_path, PEOPLE / "joe_biden" / "biden.jpg"))
        page = browser.new_page()
        try:
            start_kiosk_check_in(page, site)
            page.wait_for_selector(f"#greeting:has-text('{NEW_NAME}')", timeout=WAIT_MS)
            assert f"Welcome, {NEW_NAME}" in page.inner_text("#greeting")
        except Exception:
            print(site.log_tail())
            raise
        finally:
            browser.close()
        [(checked_in,)] = site.query(f"SELECT count(*) FROM recognition_checkin WHERE person_id = {person_id}")
        assert checked_in == 1
        assert site.query("SELECT count(*) FROM visitors_visitor") == [(0,)]  # a known face is nobody's visitor
