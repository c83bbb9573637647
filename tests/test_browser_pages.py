"""Pages a newcomer meets first, in headless Chromium against a real daphne server.

The API docs must render with the network cut off (Swagger UI is served by the site itself, not a
CDN), and the verification page must show what it is doing: previews as soon as photos are chosen,
progress while the server compares, a verdict styled by its meaning, and no stale verdict after a
new photo is chosen.
"""

from __future__ import annotations

import shutil
from urllib.parse import urlparse

import pytest

from .browser import LOCAL_HOSTS, STAFF_PASSWORD, WAIT_MS
from .conftest import PEOPLE, PROBES

pytestmark = [pytest.mark.browser, pytest.mark.django_db]


def test_api_docs_render_the_operations_with_every_outside_request_blocked(site, chromium):
    requested, blocked = [], []

    def only_localhost(route):
        url = route.request.url
        requested.append(url)
        if urlparse(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page = chromium.new_page()
    try:
        page.route("**/*", only_localhost)
        # Anonymous: the docs and the schema are public (drf-spectacular's default); the operations
        # themselves still need a token.
        page.goto(site.url + "/api/v1/docs/")
        page.wait_for_selector(".opblock:has-text('/api/v1/recognize/')", timeout=60_000)
        assert page.locator(".opblock").count() >= 10
        assert "facesite API" in page.inner_text(".information-container")
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()
    assert blocked == [], f"the docs page asked for outside resources: {blocked}"
    assert any("swagger-ui" in url for url in requested), requested  # the bundle came from the site itself


def sign_in_and_consent(page, url: str) -> None:
    page.goto(url + "/verify/")
    page.fill("#id_username", "browser-staff")
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("form.card button")
    page.wait_for_selector("#consent")
    page.check("#consent-agree")
    page.check("#consent-age")
    page.click("#consent-start")
    page.wait_for_selector("#compare", state="visible")


def canvas_width(page, which: int) -> int:
    return page.evaluate(f"document.getElementById('canvas{which}').width")


def test_verify_page_previews_shows_progress_styles_the_verdict_and_clears_it_on_a_new_photo(site, chromium, tmp_path):
    obama_a, obama_b, biden = tmp_path / "obama-a.jpg", tmp_path / "obama-b.jpg", tmp_path / "biden.jpg"
    shutil.copy(PEOPLE / "barack_obama" / "obama2.jpg", obama_a)
    shutil.copy(PROBES / "obama1.jpg", obama_b)
    shutil.copy(next((PEOPLE / "joe_biden").glob("*.jpg")), biden)
    page = chromium.new_page()
    try:
        sign_in_and_consent(page, site.url)

        # Previews appear as soon as each photo is chosen, before Compare.
        page.set_input_files("input[name=image1]", str(obama_a))
        page.wait_for_function("document.getElementById('canvas1').width > 0")
        assert canvas_width(page, 2) == 0
        page.set_input_files("input[name=image2]", str(biden))
        page.wait_for_function("document.getElementById('canvas2').width > 0")
        assert page.is_hidden("#progress") and page.is_hidden("#verdict")

        # Progress while the server compares, then a verdict styled as "different".
        page.click("#compare-button")
        page.wait_for_selector("#progress", state="visible", timeout=10_000)
        assert page.is_disabled("#compare-button")
        page.wait_for_selector("#verdict:visible", timeout=WAIT_MS)
        assert page.is_hidden("#progress")
        assert page.inner_text("#verdict").startswith("Different people")
        different_colour = page.evaluate("getComputedStyle(document.getElementById('verdict')).color")
        assert page.get_attribute("#verdict", "class").split() == ["verdict", "different"]
        page.screenshot(path=str(tmp_path / "verify-different.png"), full_page=True)

        # A new photo: the old verdict goes at once, and its preview replaces the old one.
        page.set_input_files("input[name=image2]", str(obama_b))
        assert page.is_hidden("#verdict") and page.inner_text("#verdict") == ""
        page.click("#compare-button")
        page.wait_for_selector("#verdict.same:visible", timeout=WAIT_MS)
        assert page.inner_text("#verdict").startswith("Same person")
        same_colour = page.evaluate("getComputedStyle(document.getElementById('verdict')).color")
        assert same_colour != different_colour
    except Exception:
        print(site.log_tail())
        raise
    finally:
        page.close()
