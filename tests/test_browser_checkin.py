"""End to end in headless Chromium: a fake camera plays a video made from real face photos.

A real ASGI server (daphne, in a subprocess) serves a throwaway SQLite site holding the test
session's enrolled gallery. The browser registers as a kiosk, reads the notice, consents, and the
page streams its camera over /ws/identify/: strangers are drawn as unknown, Barack Obama by name,
and his check-in is greeted and stored. The verification page compares two photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .browser import (
    KIOSK_TOKEN,
    STAFF_PASSWORD,
    WAIT_MS,
    launch_chromium,
    letterboxed,
    media_files,
    require_chromium,
    write_y4m,
)
from .conftest import PEOPLE, PROBES

# django_db: so that pytest-django creates the test database the gallery is copied from.
pytestmark = [pytest.mark.browser, pytest.mark.django_db]


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory) -> Path:
    """Five seconds of strangers (a group photo, nobody enrolled), then Barack Obama, looped by Chromium."""
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    write_y4m(path, [(letterboxed(PROBES / "multiface.jpg"), 50), (letterboxed(PROBES / "obama1.jpg"), 100)])
    return path


@pytest.fixture
def browser(camera_video, tmp_path_factory):
    """Chromium with the fake camera; per test, so it starts after the test database is set up
    (Playwright's event loop must not be running while Django touches the database)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path_factory.mktemp("chromium-profile"), camera=camera_video, width=800)
        yield context
        context.close()


def test_kiosk_checks_in_an_enrolled_person_after_consent_and_strangers_stay_unknown(site, browser):
    site.query("DELETE FROM recognition_checkin")  # the site is shared by the session's browser tests
    files_before = media_files(site)
    page = browser.new_page()
    try:
        page.goto(site.url + "/checkin/")
        page.fill("#kiosk-token", KIOSK_TOKEN)
        page.click("#kiosk-form button")
        page.wait_for_selector("#consent")
        assert "Kiosk: Front door" in page.inner_text("form.device")

        # No consent, no camera: the button stays disabled and the camera untouched until both boxes are ticked.
        assert page.is_disabled("#consent-start")
        page.check("#consent-agree")
        assert page.is_disabled("#consent-start")
        assert page.evaluate("document.getElementById('video').srcObject") is None
        page.check("#consent-age")
        page.click("#consent-start")

        page.wait_for_selector("#faces li:has-text('Unknown')", timeout=WAIT_MS)
        page.wait_for_selector("#greeting:has-text('Barack Obama')", timeout=WAIT_MS)
        assert "Welcome, Barack Obama" in page.inner_text("#greeting")
        labels = json.loads(page.get_attribute("#overlay", "data-labels"))
        assert any(label.startswith("Barack Obama") for label in labels)
        assert page.evaluate("getComputedStyle(document.getElementById('consent')).display") == "none"

        page.click("#stop")  # withdraw: the camera stops
        page.wait_for_selector("#consent", state="visible")
        assert page.evaluate("document.getElementById('video').srcObject.getTracks()[0].readyState") == "ended"
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()

    checkins = site.query(
        "SELECT p.name, c.kiosk_id, c.consent_id, c.similarity, c.threshold FROM recognition_checkin c "
        "JOIN people_person p ON p.id = c.person_id"
    )
    assert len(checkins) == 1, checkins
    name, kiosk_id, consent_id, similarity, threshold = checkins[0]
    assert (name, kiosk_id) == ("Barack Obama", 900001) and similarity >= threshold
    consent = site.query(f"SELECT kiosk_id, age_confirmed, withdrawn_at FROM recognition_consent WHERE id = {int(consent_id)}")
    assert consent[0][0] == 900001 and consent[0][1] == 1 and consent[0][2] is not None  # withdrawn with Stop
    # No frame was stored: nothing was added to the site's media folder.
    assert media_files(site) == files_before, media_files(site) - files_before


def test_verify_page_compares_two_photos_after_consent(site, browser, tmp_path):
    files_before = media_files(site)
    [(consents_before,)] = site.query("SELECT count(*) FROM recognition_consent WHERE purpose = 'verify'")
    first, second = tmp_path / "obama-a.jpg", tmp_path / "obama-b.jpg"
    shutil.copy(PEOPLE / "barack_obama" / "obama2.jpg", first)
    shutil.copy(PROBES / "obama1.jpg", second)
    page = browser.new_page()
    try:
        page.goto(site.url + "/verify/")
        page.fill("#id_username", "browser-staff")
        page.fill("#id_password", STAFF_PASSWORD)
        page.click("form.card button")
        page.wait_for_selector("#consent")
        assert page.is_hidden("#compare")
        page.check("#consent-agree")
        page.check("#consent-age")
        page.click("#consent-start")
        page.wait_for_selector("#compare", state="visible")
        page.set_input_files("input[name=image1]", str(first))
        page.set_input_files("input[name=image2]", str(second))
        page.click("#compare-button")
        page.wait_for_selector("#verdict:visible", timeout=WAIT_MS)
        assert page.inner_text("#verdict").startswith("Same person")
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()
    assert site.query("SELECT count(*) FROM recognition_consent WHERE purpose = 'verify'") == [(consents_before + 1,)]
    assert media_files(site) == files_before


def test_staff_feed_page_shows_a_check_in_as_it_happens(site, browser):
    site.query("DELETE FROM recognition_checkin")  # the repeat window starts afresh, whatever ran before
    feed, camera = browser.new_page(), browser.new_page()
    try:
        feed.goto(site.url + "/accounts/login/?next=/checkin/feed/")
        feed.fill("#id_username", "browser-staff")
        feed.fill("#id_password", STAFF_PASSWORD)
        feed.click("form.card button")
        feed.wait_for_selector("#status:has-text('Live.')", timeout=WAIT_MS)
        assert feed.is_visible("#empty") and feed.inner_text("#feed") == ""

        # The same signed-in staff account streams from the check-in page in another tab.
        camera.goto(site.url + "/checkin/")
        camera.check("#consent-agree")
        camera.check("#consent-age")
        camera.click("#consent-start")
        camera.wait_for_selector("#greeting:has-text('Barack Obama')", timeout=WAIT_MS)

        feed.wait_for_selector("#feed li:has-text('Barack Obama')", timeout=60_000)
        assert "user: browser-staff" in feed.inner_text("#feed li") and feed.is_hidden("#empty")
        camera.click("#stop")

        # A wrong check-in: "Not this person" (confirmed) removes it through the API with the
        # session and its CSRF token; the server's announcement drops the row.
        feed.once("dialog", lambda dialog: dialog.accept())
        feed.click("#feed li:has-text('Barack Obama') button.reject")
        feed.wait_for_selector("#feed li", state="detached", timeout=60_000)
        feed.wait_for_selector("#empty", state="visible")
        assert site.query("SELECT count(*) FROM recognition_checkin") == [(0,)]
        assert site.query("SELECT count(*) FROM checkin_rejectedmatch") == [(1,)]
    except Exception:
        print(site.log_tail())
        raise
    finally:
        camera.close()
        feed.close()
    site.query("DELETE FROM recognition_checkin")
    site.query("DELETE FROM checkin_rejectedmatch_faces")
    site.query("DELETE FROM checkin_rejectedmatch")
